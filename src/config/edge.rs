//! The edge component: limits applied to a connection before anyone is authenticated
//! (connection caps, the request head's deadline and size), which browser origins may call, and
//! which proxies may name the client address. Declares those settings and builds the edge's
//! [`EdgeSettings`]; pure validation, no I/O.

use std::time::Duration;

use clap::Args;

use super::rules::{at_least, origins, rule, seconds, Rule};
use crate::edge::forwarded::{parse_cidrs, Cidr, ForwardedHeader, TrustedProxies};
use crate::edge::{EdgeSettings, MIN_HEADER_BYTES};

/// TCP connections allowed beyond the sessions and the pending handshakes when
/// MAX_TCP_CONNECTIONS is not set: room for REST calls.
pub const REST_CONNECTION_ROOM: usize = 1024;

/// The edge's settings as declared (flags and environment variables).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Before authentication")]
pub struct EdgeArgs {
    /// TCP connections that have not yet sent a complete first request; more are closed at once.
    #[arg(long, env = "MAX_PENDING_HANDSHAKES", default_value = "1024", value_parser = at_least(1usize))]
    pub max_pending_handshakes: usize,
    /// All TCP connections (WebSocket sessions, REST, handshakes); more are closed at once. Keep
    /// below the process's open-file limit. Default: MAX_CONNECTIONS + MAX_PENDING_HANDSHAKES +
    /// 1024.
    #[arg(long, env = "MAX_TCP_CONNECTIONS", value_parser = at_least(1usize))]
    pub max_tcp_connections: Option<usize>,
    /// Time a client has to send a complete request head (and an idle keep-alive connection its
    /// next one); slower connections are closed.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_SECS", default_value = "5", value_parser = seconds())]
    pub handshake_timeout_secs: Duration,
    /// Largest request head (request line and headers, including `?token=`); larger gets 431. At
    /// least 8192.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value = "16384", value_parser = at_least(MIN_HEADER_BYTES))]
    pub max_header_bytes: usize,
    /// Browser origins of the web build allowed on the REST API (CORS) and the WebSocket
    /// (`Origin`, 403 otherwise), comma-separated, e.g.
    /// https://app.school.example,http://localhost:8081. Empty: no browser origin (phones send no
    /// Origin and are not affected).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "", value_parser = origins())]
    pub cors_allowed_origins: ::std::vec::Vec<String>,
    /// Proxies (comma-separated CIDRs, e.g. 10.0.0.0/8,fd00::/8) whose TRUSTED_PROXY_HEADER names
    /// the client address: from those peers the right-most address of the header that is not
    /// itself a trusted proxy is the client. Empty: the TCP peer is the client (never trust a
    /// range clients can connect from).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = cidrs())]
    pub trusted_proxies: ::std::vec::Vec<Cidr>,
    /// The header those proxies append the client address to: x-forwarded-for, or forwarded
    /// (RFC 7239 `for=`).
    #[arg(long, env = "TRUSTED_PROXY_HEADER", value_enum, default_value = "x-forwarded-for")]
    pub trusted_proxy_header: ForwardedHeader,
}

fn cidrs() -> Rule<Vec<Cidr>> {
    rule(|text| parse_cidrs(text).map_err(|e| e.to_string()))
}

impl EdgeArgs {
    /// The settings, with the TCP cap derived from the session cap when it is not set.
    pub(super) fn settings(self, max_connections: usize) -> EdgeSettings {
        let derived = max_connections.saturating_add(self.max_pending_handshakes).saturating_add(REST_CONNECTION_ROOM);
        EdgeSettings {
            max_pending_handshakes: self.max_pending_handshakes,
            max_tcp_connections: self.max_tcp_connections.unwrap_or(derived),
            handshake_timeout: self.handshake_timeout_secs,
            max_header_bytes: self.max_header_bytes,
            cors_allowed_origins: self.cors_allowed_origins,
            trusted_proxies: TrustedProxies { nets: self.trusted_proxies, header: self.trusted_proxy_header },
        }
    }
}
