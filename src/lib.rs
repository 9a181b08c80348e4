//! The realtime gateway: one upstream Supabase Realtime subscription, many authenticated
//! WebSocket clients, and the REST endpoints of the school chat's public API.
//!
//! Data flows one way: [`upstream`] (Phoenix client) → [`hub`] (membership, routing, fan-out) →
//! [`session`] (one WebSocket each). [`api`] serves REST by calling PostgREST through [`store`] with
//! the caller's own token. [`auth`] verifies Supabase JWTs, [`config`] reads the environment,
//! [`protocol`] pins the client-facing JSON, [`edge`] bounds connections before authentication,
//! [`server`] wires everything and owns shutdown.

pub mod api;
pub mod auth;
pub mod config;
pub mod edge;
pub mod hub;
pub mod limit;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod upstream;
