//! The stand-in's tests: one binary, a module per stand-in (the schema's SQL through PostgREST,
//! the Realtime protocol with a raw client, the stack as a whole). Supabase's own JavaScript client
//! against the stand-ins runs with the other Node checks, in the gateway's `tests/supabase_js.rs`.
//! The push providers' stand-ins have their own module (`push_providers`).

mod push_providers;
mod realtime_protocol;
mod sql_behaviour;
mod stack;
