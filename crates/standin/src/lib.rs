//! A local, protocol-faithful stand-in for the parts of Supabase the gateway talks to.
//!
//! Everything is real where it can be: a throwaway PostgreSQL 15 cluster ([`pg`]) with the
//! project's `supabase/` migrations and seed applied on top of a local-only Supabase base. Where
//! Supabase's own servers cannot run here, protocol-faithful stand-ins serve them at one base URL
//! like a Supabase project's API gateway does:
//!
//! - `/realtime/v1/websocket`: Supabase Realtime's Phoenix channel protocol ([`realtime`]),
//!   fed by changes really committed in PostgreSQL;
//! - `/rest/v1`: the PostgREST subset the gateway and supabase-js use ([`rest`]);
//! - `/auth/v1/.well-known/jwks.json`: the project's public signing keys ([`keys`]);
//! - [`push`]: FCM and APNs stand-ins on ports of their own;
//! - `/_standin/...`: fault controls for tests and the benchmark (never part of Supabase).
//!
//! Beside the stack, [`push`] holds the push providers' stand-ins, each its own server.
//!
//! None of this is meant to face the internet: it exists for tests, the demo and the benchmark.

pub mod keys;
pub mod pg;
pub mod push;
pub mod realtime;
pub mod rest;
pub mod seed;
mod stack;

pub use stack::{Stack, StackOptions};
