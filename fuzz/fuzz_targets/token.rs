//! Access tokens: whatever a client presents, verification answers with a reason and never panics.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use realtime_gateway::auth::Verifier;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let verifier = Verifier::new(
        Some("fuzz-secret-fuzz-secret-fuzz-secret"),
        "http://127.0.0.1:9/jwks".into(),
        "anon".into(),
        reqwest::Client::new(),
        Duration::from_secs(0),
        Duration::from_secs(3600),
    );
    let _ = runtime.block_on(verifier.verify(token));
});
