//! The gateway's integration tests: one binary, each module a group of scenarios that start the
//! real stack (throwaway PostgreSQL with the project's migrations, the Realtime and PostgREST
//! stand-ins, the gateway on port 0) and drive it as phones and apps would.

mod common;

mod admin;
mod auth;
mod chaos;
mod cli;
mod delivery;
mod devices;
mod edge;
mod fairness;
mod gaps;
mod guide_client;
mod history;
mod horizon;
mod instances;
mod js_client;
mod keys;
mod membership;
mod memory;
mod modules;
mod openapi;
mod operators;
mod postgres;
mod push;
mod push_crash;
mod push_expo;
mod push_mobile;
mod push_queue;
mod push_webpush;
mod read_state;
mod replication;
mod resilience;
mod rest;
mod resume;
mod resume_catchup;
mod shutdown;
mod supabase_js;
mod typing;
mod upstream;
mod web_example;
mod web_seen;
