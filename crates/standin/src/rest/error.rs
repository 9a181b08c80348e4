//! PostgREST's error answers: the `{code, message, details, hint}` body with the status its
//! documented SQLSTATE table gives, the API gateway's `{message, hint}` for a missing or unknown
//! `apikey`, and the `WWW-Authenticate` challenge on a refused JWT. Owns only the mapping from a
//! failure to what the client sees; it must never decide whether a request is allowed.

use serde_json::json;
use warp::http::StatusCode;
use warp::Reply;

/// A PostgREST-shaped error, or (for a missing or unknown `apikey`) the API gateway's.
#[derive(Debug, Clone)]
pub struct RestError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    /// Answered by Supabase's API gateway in front of PostgREST: body `{message, hint}` only.
    pub from_api_gateway: bool,
    /// A JWT problem: PostgREST adds `WWW-Authenticate: Bearer error="invalid_token", ...`.
    pub invalid_token: bool,
}

/// PostgREST's HTTP status for a SQLSTATE (its documented table, `references/errors`), where
/// `anon` says whether the request ran as the anonymous role (42501 is then 401, else 403).
pub fn status_for_sqlstate(code: &str, message: &str, anon: bool) -> StatusCode {
    let status = |n: u16| StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code {
        "23503" | "23505" => return StatusCode::CONFLICT,
        "25006" => return StatusCode::METHOD_NOT_ALLOWED,
        "53400" => return StatusCode::INTERNAL_SERVER_ERROR,
        "21000" if message.ends_with("requires a WHERE clause") => return StatusCode::BAD_REQUEST,
        "21000" => return StatusCode::INTERNAL_SERVER_ERROR,
        "42883" | "42P01" => return StatusCode::NOT_FOUND,
        "42P17" => return StatusCode::INTERNAL_SERVER_ERROR,
        "42501" if anon => return StatusCode::UNAUTHORIZED,
        "42501" => return StatusCode::FORBIDDEN,
        "P0001" => return StatusCode::BAD_REQUEST,
        _ => {}
    }
    if let Some(n) = code.strip_prefix("PT") {
        // `raise sqlstate 'PT402'`: the function chooses the status.
        return n
            .parse::<u16>()
            .ok()
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    match code.get(..2).unwrap_or_default() {
        "08" | "53" => status(503),
        "0L" | "0P" | "28" => status(403),
        "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "54" | "55" | "57" | "58" | "F0" | "HV" | "P0" | "XX" => {
            status(500)
        }
        _ => status(400),
    }
}

impl RestError {
    pub(super) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> RestError {
        RestError {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            hint: None,
            from_api_gateway: false,
            invalid_token: false,
        }
    }

    /// A JWT PostgREST refuses: 401 PGRST301 with a `WWW-Authenticate` challenge.
    pub(super) fn jwt(message: impl Into<String>) -> RestError {
        RestError { invalid_token: true, ..RestError::new(StatusCode::UNAUTHORIZED, "PGRST301", message) }
    }

    /// What Supabase's API gateway answers before a request reaches PostgREST.
    pub(super) fn api_gateway(message: &str, hint: &str) -> RestError {
        RestError {
            hint: Some(hint.into()),
            from_api_gateway: true,
            ..RestError::new(StatusCode::UNAUTHORIZED, "", message)
        }
    }

    pub(super) fn reply(&self) -> warp::reply::Response {
        let body = if self.from_api_gateway {
            json!({"message": self.message, "hint": self.hint})
        } else {
            json!({"code": self.code, "message": self.message, "details": self.details, "hint": self.hint})
        };
        let mut response = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.invalid_token {
            let challenge =
                format!("Bearer error=\"invalid_token\", error_description=\"{}\"", self.message.replace('"', "'"));
            if let Ok(value) = warp::http::HeaderValue::from_str(&challenge) {
                response.headers_mut().insert("www-authenticate", value);
            }
        }
        response
    }

    pub(super) fn from_db(e: &tokio_postgres::Error, role: &str) -> RestError {
        let Some(db) = e.as_db_error() else {
            return RestError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "PGRST000",
                format!("Database connection error: {e}"),
            );
        };
        let code = db.code().code();
        RestError {
            details: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
            ..RestError::new(status_for_sqlstate(code, db.message(), role == "anon"), code, db.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_postgrests_statuses() {
        let s = |code: &str, anon: bool| status_for_sqlstate(code, "", anon).as_u16();
        assert_eq!(s("42501", true), 401);
        assert_eq!(s("42501", false), 403);
        assert_eq!(
            (s("22P02", false), s("23502", false), s("23514", false), s("P0001", false), s("42703", false)),
            (400, 400, 400, 400, 400)
        );
        assert_eq!((s("23505", false), s("23503", false)), (409, 409));
        assert_eq!((s("42883", false), s("42P01", false)), (404, 404));
        assert_eq!((s("08006", false), s("53300", false), s("53400", false)), (503, 503, 500));
        assert_eq!((s("57014", false), s("40001", false), s("P0002", false), s("XX000", false)), (500, 500, 500, 500));
        assert_eq!((s("25006", false), s("28000", false)), (405, 403));
        assert_eq!((s("PT402", false), s("PTabc", false)), (402, 500));
        assert_eq!(status_for_sqlstate("21000", "UPDATE requires a WHERE clause", false).as_u16(), 400);
        assert_eq!(s("21000", false), 500);
    }

    #[test]
    fn api_gateway_errors_have_only_message_and_hint() {
        let r =
            RestError::api_gateway("No API key found in request", "No `apikey` request header or url param was found.")
                .reply();
        assert_eq!(r.status().as_u16(), 401);
        let jwt = RestError::jwt("JWT expired").reply();
        assert!(jwt.headers().get("www-authenticate").is_some());
    }
}
