//! The realtime gateway: one upstream Supabase Realtime subscription, many authenticated
//! WebSocket clients, and the REST endpoints of the school chat's public API.
//!
//! The path of a message: [`upstream`] (our Phoenix client; decodes changes at the edge) →
//! `router` (order, dedup, gap fill, resume cursor; lookups through `directory`) → `hub`
//! (registry, recipients, fan-out into each session's outbox) → `session` (one WebSocket: the
//! protocol over its socket; resume). REST: `api` → `store` (PostgREST with the caller's own
//! token). Beside them: [`auth`] (JWT), [`config`], `protocol` (the client JSON), `model` (shared
//! types), `close` (close codes), `error` (the one mapping to what peers see), `history` (recent
//! messages for resumes), `readiness` (what `/readyz` answers), `metrics`, `admin` (the operator
//! page), `limit`, `fair` (per-user budgets), [`edge`] (bounds on connections before
//! authentication), [`publication`] (the start-up check of the sync horizon and the pruning of the
//! membership events the upstream reads), and [`server`] (listener, upgrade, shutdown). [`pg`] is
//! the second backend: the same change feed and store on plain PostgreSQL.

mod admin;
mod api;
pub mod auth;
mod close;
pub mod config;
mod directory;
pub mod edge;
mod error;
mod fair;
mod history;
mod hub;
mod limit;
mod metrics;
mod model;
pub mod pg;
pub mod protocol;
pub mod publication;
mod readiness;
mod router;
pub mod server;
mod session;
mod store;
pub mod upstream;

pub use auth::bearer;
