//! The one mapping from internal errors to what a peer sees: the HTTP status and the public JSON
//! error body `{"status":"error","message":...}` (REST and the WebSocket upgrade alike), and the
//! text of a WebSocket `error` frame. Internal details (PostgREST codes, URLs) are logged here
//! and never shown to clients.

use http::StatusCode;
use serde_json::json;

use crate::auth::AuthError;
use crate::hub::RegisterError;
use crate::store::StoreError;

/// A refusal, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError {
    pub status: StatusCode,
    pub message: String,
}

impl PeerError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PeerError {
        PeerError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> PeerError {
        PeerError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The public JSON error body.
    pub fn body(&self) -> serde_json::Value {
        json!({"status": "error", "message": self.message})
    }

    /// A complete HTTP response.
    pub fn response(&self) -> warp::reply::Response {
        use warp::Reply;
        warp::reply::with_status(warp::reply::json(&self.body()), self.status).into_response()
    }
}

impl From<AuthError> for PeerError {
    fn from(e: AuthError) -> PeerError {
        match e {
            AuthError::KeysUnavailable => PeerError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            AuthError::TooManyFailures => PeerError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            _ => PeerError::new(StatusCode::UNAUTHORIZED, format!("Unauthorized: {e}")),
        }
    }
}

impl From<RegisterError> for PeerError {
    fn from(e: RegisterError) -> PeerError {
        let status = match e {
            RegisterError::UserFull => StatusCode::TOO_MANY_REQUESTS,
            RegisterError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
        };
        PeerError::new(status, e.to_string())
    }
}

impl From<StoreError> for PeerError {
    fn from(e: StoreError) -> PeerError {
        match e {
            StoreError::Timeout => PeerError::new(StatusCode::GATEWAY_TIMEOUT, "The database did not answer in time"),
            StoreError::Unavailable(_) => PeerError::new(StatusCode::BAD_GATEWAY, "The database is unavailable"),
            StoreError::Decode(detail) => {
                tracing::error!(%detail, "unexpected answer from PostgREST");
                PeerError::new(StatusCode::BAD_GATEWAY, "Unexpected answer from the database")
            }
            StoreError::Rejected { status, code, message } => {
                let status = match status {
                    401 => StatusCode::UNAUTHORIZED,
                    403 => StatusCode::FORBIDDEN,
                    400 | 406 | 409 | 422 => StatusCode::BAD_REQUEST,
                    504 => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                if status == StatusCode::BAD_GATEWAY {
                    tracing::error!(%code, %message, "PostgREST error");
                    PeerError::new(status, "The database rejected the request")
                } else {
                    PeerError::new(status, message)
                }
            }
        }
    }
}

/// The `error` frame text for a failed thread-access check on the socket.
pub fn access_check_frame(e: &StoreError) -> &'static str {
    match e {
        StoreError::Rejected { status: 401, .. } => "Access token rejected by the database",
        _ => "Could not check thread access; try again",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_unavailable_is_503_everywhere_and_bad_tokens_401() {
        assert_eq!(PeerError::from(AuthError::KeysUnavailable).status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(PeerError::from(AuthError::Expired).status, StatusCode::UNAUTHORIZED);
        assert_eq!(PeerError::from(AuthError::TooManyFailures).status, StatusCode::TOO_MANY_REQUESTS);
        let hidden =
            PeerError::from(StoreError::Rejected { status: 500, code: "XX000".into(), message: "secret".into() });
        assert_eq!(hidden.status, StatusCode::BAD_GATEWAY);
        assert!(!hidden.message.contains("secret"));
    }
}
