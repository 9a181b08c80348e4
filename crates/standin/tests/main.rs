//! The stand-in's tests: one binary, a module per stand-in (the schema's SQL through PostgREST,
//! the Realtime protocol with a raw client, the stack as a whole, supabase-js under Node).

mod realtime_protocol;
mod sql_behaviour;
mod stack;
mod supabase_js;
