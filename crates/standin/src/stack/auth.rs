//! Auth stand-in endpoints at `/auth/v1`: enough of Supabase Auth (GoTrue) for supabase-js's
//! `signInWithPassword`, session refresh, `getUser` and `signOut` against the seeded users.
//!
//! Owns the password and refresh-token grants of `POST /auth/v1/token`, `GET /auth/v1/user` and
//! `POST /auth/v1/logout`, answering Supabase Auth's JSON shapes (a session with `access_token`,
//! `token_type`, `expires_in`, `expires_at`, `refresh_token`, `user`; errors as
//! `{code, error_code, msg}`). Every user of `auth.users` signs in with the password
//! [`PASSWORD`]; tokens are minted by [`Keys`]. It must never write to the database, and never
//! answer without a project API key (the API gateway in front of Auth refuses those).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use crate::keys::{now_secs, Alg, Keys};

/// The password of every seeded user.
pub const PASSWORD: &str = "password";

/// Lifetime of an access token, as Supabase Auth's default.
const ACCESS_TTL_SECS: i64 = 3600;

struct Auth {
    keys: Arc<Keys>,
    db_url: String,
    /// Live refresh tokens: token → (user id, email). Each is used once, then replaced.
    refresh: Mutex<HashMap<String, (Uuid, String)>>,
}

/// An Auth error in Supabase Auth's shape.
struct AuthError {
    status: StatusCode,
    error_code: &'static str,
    msg: String,
}

impl AuthError {
    fn new(status: StatusCode, error_code: &'static str, msg: impl Into<String>) -> AuthError {
        AuthError { status, error_code, msg: msg.into() }
    }

    fn reply(&self) -> warp::reply::Response {
        let body = json!({"code": self.status.as_u16(), "error_code": self.error_code, "msg": self.msg});
        warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
    }
}

/// `/auth/v1/token`, `/auth/v1/user`, `/auth/v1/logout`.
pub(super) fn routes(keys: Arc<Keys>, db_url: String) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let auth = Arc::new(Auth { keys, db_url, refresh: Mutex::new(HashMap::new()) });
    let token = {
        let auth = auth.clone();
        warp::path!("auth" / "v1" / "token")
            .and(warp::post())
            .and(warp::query::<HashMap<String, String>>())
            .and(warp::header::headers_cloned())
            .and(warp::body::content_length_limit(64 * 1024))
            .and(warp::body::bytes())
            .then(move |query: HashMap<String, String>, headers: HeaderMap, body: Bytes| {
                let auth = auth.clone();
                async move { respond(auth.token(&query, &headers, &body).await) }
            })
    };
    let user = {
        let auth = auth.clone();
        warp::path!("auth" / "v1" / "user").and(warp::get()).and(warp::header::headers_cloned()).then(
            move |headers: HeaderMap| {
                let auth = auth.clone();
                async move { respond(auth.user(&headers).await) }
            },
        )
    };
    let logout = warp::path!("auth" / "v1" / "logout").and(warp::post()).and(warp::header::headers_cloned()).map(
        move |headers: HeaderMap| match auth.check_apikey(&headers) {
            Ok(()) => warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response(),
            Err(e) => e.reply(),
        },
    );
    token.or(user).unify().or(logout).unify().boxed()
}

fn respond(result: Result<Value, AuthError>) -> warp::reply::Response {
    match result {
        Ok(body) => warp::reply::json(&body).into_response(),
        Err(e) => e.reply(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

impl Auth {
    fn check_apikey(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        match headers.get("apikey").and_then(|v| v.to_str().ok()) {
            None => Err(AuthError::new(StatusCode::UNAUTHORIZED, "no_authorization", "No API key found in request")),
            Some(k) if k == self.keys.anon_key || k == self.keys.service_key => Ok(()),
            Some(_) => Err(AuthError::new(StatusCode::UNAUTHORIZED, "bad_jwt", "Invalid API key")),
        }
    }

    async fn token(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Value, AuthError> {
        self.check_apikey(headers)?;
        let body: Value = serde_json::from_slice(body)
            .map_err(|_| AuthError::new(StatusCode::BAD_REQUEST, "bad_json", "Could not parse request body as JSON"))?;
        let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        match query.get("grant_type").map(String::as_str) {
            Some("password") => {
                let email = field("email");
                let (id, email, created_at) =
                    self.find_user(&email).await?.filter(|_| field("password") == PASSWORD).ok_or_else(|| {
                        AuthError::new(StatusCode::BAD_REQUEST, "invalid_credentials", "Invalid login credentials")
                    })?;
                Ok(self.session(id, &email, &created_at))
            }
            Some("refresh_token") => {
                let presented = field("refresh_token");
                let found = self.refresh.lock().ok().and_then(|mut live| live.remove(&presented));
                let (id, email) = found.ok_or_else(|| {
                    AuthError::new(
                        StatusCode::BAD_REQUEST,
                        "refresh_token_not_found",
                        "Invalid Refresh Token: Refresh Token Not Found",
                    )
                })?;
                let created_at = self.find_user(&email).await?.map(|(_, _, c)| c).unwrap_or_default();
                Ok(self.session(id, &email, &created_at))
            }
            _ => Err(AuthError::new(StatusCode::BAD_REQUEST, "validation_failed", "unsupported_grant_type")),
        }
    }

    async fn user(&self, headers: &HeaderMap) -> Result<Value, AuthError> {
        self.check_apikey(headers)?;
        let token = bearer(headers).ok_or_else(|| {
            AuthError::new(StatusCode::UNAUTHORIZED, "no_authorization", "This endpoint requires a valid Bearer token")
        })?;
        let claims = self.keys.verify(token).map_err(|e| {
            AuthError::new(
                StatusCode::FORBIDDEN,
                "bad_jwt",
                format!("invalid JWT: unable to parse or verify signature, {e}"),
            )
        })?;
        let email = claims.email.clone().unwrap_or_default();
        let (id, email, created_at) =
            self.find_user(&email).await?.filter(|(id, _, _)| Some(id.to_string()) == claims.sub).ok_or_else(|| {
                AuthError::new(StatusCode::FORBIDDEN, "user_not_found", "User from sub claim in JWT does not exist")
            })?;
        Ok(user_json(id, &email, &created_at))
    }

    /// (id, email, created_at) of the user with this email, case-insensitively.
    async fn find_user(&self, email: &str) -> Result<Option<(Uuid, String, String)>, AuthError> {
        let unavailable = |e: tokio_postgres::Error| {
            AuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "unexpected_failure", format!("Database error: {e}"))
        };
        let db = crate::pg::connect(&self.db_url).await.map_err(unavailable)?;
        let row = db
            .query_opt(
                "select id, email, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from auth.users where lower(email) = lower($1)",
                &[&email],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.and_then(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?))))
    }

    /// A new session: an HS256 access token (as the legacy-secret projects issue) and a fresh
    /// single-use refresh token.
    fn session(&self, id: Uuid, email: &str, created_at: &str) -> Value {
        let refresh_token = Uuid::new_v4().simple().to_string();
        if let Ok(mut live) = self.refresh.lock() {
            live.insert(refresh_token.clone(), (id, email.to_string()));
        }
        json!({
            "access_token": self.keys.user_token(id, email, Alg::Hs256, ACCESS_TTL_SECS),
            "token_type": "bearer",
            "expires_in": ACCESS_TTL_SECS,
            "expires_at": now_secs() + ACCESS_TTL_SECS,
            "refresh_token": refresh_token,
            "user": user_json(id, email, created_at),
        })
    }
}

fn user_json(id: Uuid, email: &str, created_at: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "id": id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "email_confirmed_at": created_at,
        "phone": "",
        "confirmed_at": created_at,
        "last_sign_in_at": now,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "identities": [],
        "created_at": created_at,
        "updated_at": now,
        "is_anonymous": false,
    })
}
