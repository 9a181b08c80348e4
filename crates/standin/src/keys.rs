//! Auth stand-in: the project's signing keys and Supabase-shaped tokens.
//!
//! Owns the legacy HS256 secret, one ES256 signing key (published as a JWKS with a `kid`), the
//! long-lived `anon` / `service_role` API keys, and minting of user access tokens shaped like
//! Supabase Auth's. Verification here is what the PostgREST and Realtime stand-ins use to accept
//! or refuse a token. It must never accept `alg: none` or a token whose algorithm does not match
//! the key family it names.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::elliptic_curve::rand_core::OsRng;
use p256::pkcs8::EncodePrivateKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Which key signs a user token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// The legacy shared secret (`SUPABASE_JWT_SECRET`).
    Hs256,
    /// The asymmetric signing key published at `/auth/v1/.well-known/jwks.json`.
    Es256,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT expired")]
    Expired,
    #[error("invalid JWT: {0}")]
    Invalid(String),
}

/// Claims of a Supabase access token (and of the legacy API keys, which carry only some).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The stand-in project's keys.
pub struct Keys {
    /// Legacy HS256 secret, as `SUPABASE_JWT_SECRET` holds it.
    pub jwt_secret: String,
    /// `kid` of the ES256 key in the JWKS.
    pub kid: String,
    /// Long-lived HS256 API key with role `anon`.
    pub anon_key: String,
    /// Long-lived HS256 API key with role `service_role` (BYPASSRLS).
    pub service_key: String,
    /// Issuer written into user tokens: `<SUPABASE_URL>/auth/v1`.
    pub issuer: String,
    es_encoding: EncodingKey,
    es_decoding: DecodingKey,
    jwks: Value,
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Keys {
    /// New keys: the given legacy secret, a fresh ES256 key pair, API keys valid for ten years.
    pub fn generate(jwt_secret: &str, issuer: &str) -> Keys {
        let secret = p256::SecretKey::random(&mut OsRng);
        let der = secret.to_pkcs8_der().expect("a freshly generated P-256 key always encodes as PKCS#8");
        let jwk = secret.public_key().to_jwk();
        let kid = format!("standin-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let x = jwk.to_string();
        let public: Value = serde_json::from_str(&x).unwrap_or(Value::Null);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "key_ops": ["verify"],
            "kid": kid, "x": public["x"], "y": public["y"],
        }]});
        let es_decoding = DecodingKey::from_ec_components(
            public["x"].as_str().unwrap_or_default(),
            public["y"].as_str().unwrap_or_default(),
        )
        .expect("a freshly generated P-256 public key has valid components");
        let mut keys = Keys {
            jwt_secret: jwt_secret.to_string(),
            kid,
            anon_key: String::new(),
            service_key: String::new(),
            issuer: issuer.to_string(),
            es_encoding: EncodingKey::from_ec_der(der.as_bytes()),
            es_decoding,
            jwks,
        };
        let ten_years = 10 * 365 * 24 * 3600;
        keys.anon_key = keys.api_key("anon", ten_years);
        keys.service_key = keys.api_key("service_role", ten_years);
        keys
    }

    /// A legacy-style API key (HS256, `iss: supabase`, the given role).
    pub fn api_key(&self, role: &str, ttl_secs: i64) -> String {
        let now = now_secs();
        let claims = Claims {
            iss: Some("supabase".into()),
            sub: None,
            aud: None,
            exp: now + ttl_secs,
            iat: now,
            role: role.into(),
            email: None,
            session_id: None,
            extra: Default::default(),
        };
        self.sign(&claims, Alg::Hs256)
    }

    /// The JWKS document served at `/auth/v1/.well-known/jwks.json`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Claims of a user access token as Supabase Auth issues it.
    pub fn user_claims(&self, user_id: Uuid, email: &str, ttl_secs: i64) -> Claims {
        let now = now_secs();
        let mut extra = serde_json::Map::new();
        extra.insert("phone".into(), json!(""));
        extra.insert("app_metadata".into(), json!({"provider": "email", "providers": ["email"]}));
        extra.insert("user_metadata".into(), json!({}));
        extra.insert("aal".into(), json!("aal1"));
        extra.insert("amr".into(), json!([{"method": "password", "timestamp": now}]));
        extra.insert("is_anonymous".into(), json!(false));
        Claims {
            iss: Some(self.issuer.clone()),
            sub: Some(user_id.to_string()),
            aud: Some("authenticated".into()),
            exp: now + ttl_secs,
            iat: now,
            role: "authenticated".into(),
            email: Some(email.into()),
            session_id: Some(Uuid::new_v4().to_string()),
            extra,
        }
    }

    /// A user access token, valid for `ttl_secs` (negative: already expired).
    pub fn user_token(&self, user_id: Uuid, email: &str, alg: Alg, ttl_secs: i64) -> String {
        self.sign(&self.user_claims(user_id, email, ttl_secs), alg)
    }

    /// Signs any claims with the chosen key (ES256 tokens carry this project's `kid`).
    pub fn sign(&self, claims: &Claims, alg: Alg) -> String {
        let result = match alg {
            Alg::Hs256 => {
                encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(self.jwt_secret.as_bytes()))
            }
            Alg::Es256 => {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some(self.kid.clone());
                encode(&header, claims, &self.es_encoding)
            }
        };
        result.expect("signing serializable claims with a valid key cannot fail")
    }

    /// Verifies a token as Supabase's services do: HS256 with the legacy secret, or ES256 with this
    /// project's key (matching `kid`); `exp` checked; audience not required (API keys have none).
    pub fn verify(&self, token: &str) -> Result<Claims, KeyError> {
        let header = decode_header(token).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (DecodingKey::from_secret(self.jwt_secret.as_bytes()), Algorithm::HS256),
            Algorithm::ES256 => {
                if header.kid.as_deref() != Some(self.kid.as_str()) {
                    return Err(KeyError::Invalid("unknown signing key (kid)".into()));
                }
                (self.es_decoding.clone(), Algorithm::ES256)
            }
            other => return Err(KeyError::Invalid(format!("algorithm {other:?} not allowed"))),
        };
        let mut validation = Validation::new(alg);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        decode::<Claims>(token, &key, &validation).map(|data| data.claims).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => KeyError::Expired,
            _ => KeyError::Invalid(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_tokens_verify_with_both_algorithms() {
        let keys = Keys::generate("super-secret-jwt-token-with-at-least-32-characters-long", "http://x/auth/v1");
        let id = Uuid::new_v4();
        for alg in [Alg::Hs256, Alg::Es256] {
            let token = keys.user_token(id, "a@b.test", alg, 60);
            let claims = keys.verify(&token).expect("valid");
            assert_eq!(claims.sub.as_deref(), Some(id.to_string().as_str()));
            assert_eq!(claims.aud.as_deref(), Some("authenticated"));
            assert_eq!(claims.role, "authenticated");
        }
        assert!(matches!(keys.verify(&keys.user_token(id, "a@b.test", Alg::Hs256, -10)), Err(KeyError::Expired)));
        assert_eq!(keys.verify(&keys.service_key).expect("valid").role, "service_role");
        let other = Keys::generate("another-secret-another-secret-another-secret", "http://x/auth/v1");
        assert!(keys.verify(&other.user_token(id, "a@b.test", Alg::Hs256, 60)).is_err());
        assert!(keys.verify(&other.user_token(id, "a@b.test", Alg::Es256, 60)).is_err());
        assert_eq!(keys.jwks()["keys"][0]["kid"], json!(keys.kid));
    }
}
