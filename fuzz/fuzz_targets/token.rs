//! Access tokens: whatever a client presents, verification answers with a reason and never panics.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use realtime_gateway::auth::jwks::Schedule;
use realtime_gateway::auth::{Verifier, VerifierSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let settings = VerifierSettings {
        jwt_secret: Some("fuzz-secret-fuzz-secret-fuzz-secret".into()),
        jwks_url: "http://127.0.0.1:9/jwks".into(),
        apikey: "anon".into(),
        leeway: Duration::from_secs(0),
        issuer: None,
        allow_anonymous: false,
        jwks: Schedule {
            timeout: Duration::from_millis(1),
            refresh_min: Duration::from_secs(3600),
            max_age: Duration::from_secs(3600),
        },
        failures_per_sec: 0.0,
        failure_burst: 1,
    };
    let verifier = Verifier::new(settings, reqwest::Client::new());
    let _ = runtime.block_on(verifier.verify(token));
});
