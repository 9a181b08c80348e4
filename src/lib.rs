//! The realtime gateway: one upstream change feed (Supabase Realtime, or a PostgreSQL replication
//! slot), many authenticated WebSocket clients, and the REST endpoints of the school chat's public
//! API.
//!
//! The path of a message: [`feed`] (the contract and its two backends, `feed::realtime` and
//! `feed::postgres`; changes decoded into typed events at the edge) → `router` (order, dedup, gap
//! fill, resume cursor; lookups through `directory`) → `hub` (registry, recipients, fan-out into
//! each session's outbox) → `session` (one WebSocket: the protocol over its socket; resume). REST:
//! `api` → `store` (the calls, with `store::postgrest` for Supabase and `store::postgres` for plain
//! PostgreSQL). Beside them: [`auth`] (JWT), [`config`], [`pg`] (the PostgreSQL backend's
//! connection settings and pool, shared by its feed and store), `protocol` (the client JSON),
//! `model` (shared types), `close` (close codes), `error` (the one mapping to what peers see),
//! `history` (recent messages for resumes), `readiness` (what `/readyz` answers), `metrics`,
//! `admin` (the operator page), `limit`, `fair` (per-user budgets), `typing` (typing signals,
//! delivered here and relayed between instances), [`edge`] (bounds on
//! connections before authentication), and [`server`] (listener, upgrade, shutdown).

mod admin;
mod api;
pub mod auth;
mod close;
pub mod config;
mod directory;
pub mod edge;
mod error;
mod fair;
pub mod feed;
mod history;
mod hub;
mod limit;
mod metrics;
mod model;
pub mod pg;
pub mod protocol;
mod push;
mod readiness;
mod router;
pub mod server;
mod session;
mod store;
mod ticker;
mod typing;

pub use auth::bearer;
