//! Every reason the gateway closes a client's WebSocket: the close code, the human reason sent in
//! the close frame, and whether an `error` frame with the same text precedes it.
//!
//! One table, so that the session, the hub and the documentation agree. Pure data.

/// Why a session is being closed; sent to the client as the close frame's code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
    /// Whether the client first gets `{"type":"error","message": <error text>}`.
    pub error_frame: Option<&'static str>,
    /// A short stable name for metrics and the admin page (`gateway_disconnects_total{reason}`).
    pub label: &'static str,
}

/// The session's queue overflowed: the client does not read fast enough.
pub const SLOW: Close =
    Close { code: 4008, reason: "slow client: send queue overflow", error_frame: None, label: "slow_queue" };
/// A write made no progress for the write timeout.
pub const STALLED: Close =
    Close { code: 4008, reason: "slow client: write stalled", error_frame: None, label: "write_stalled" };
/// The access token expired and no fresh one came on the socket.
pub const EXPIRED: Close = Close {
    code: 4001,
    reason: "access token expired",
    error_frame: Some("Access token expired"),
    label: "token_expired",
};
/// More client frames than the rate limit allows.
pub const RATE: Close = Close {
    code: 1008,
    reason: "rate limit exceeded",
    error_frame: Some("rate limit exceeded"),
    label: "rate_limited",
};
/// A client frame above `WS_MAX_MESSAGE_BYTES`.
pub const TOO_BIG: Close =
    Close { code: 1009, reason: "message too large", error_frame: Some("message too large"), label: "too_large" };
/// Binary frames are not part of the protocol.
pub const BINARY: Close =
    Close { code: 1003, reason: "binary frames are not supported", error_frame: None, label: "binary_frame" };
/// No pong (or any frame) for two ping intervals.
pub const DEAD: Close = Close { code: 1001, reason: "no response to ping", error_frame: None, label: "ping_timeout" };
/// The server is shutting down.
pub const SHUTDOWN: Close = Close { code: 1001, reason: "server shutting down", error_frame: None, label: "shutdown" };
/// An operator disconnected the user from the admin page.
pub const OPERATOR: Close =
    Close { code: 1008, reason: "disconnected by an operator", error_frame: None, label: "operator" };
