//! Change payloads from the upstream (Realtime's `postgres_changes` JSON): decoding answers with
//! typed events (or none) and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = realtime_gateway::feed::realtime::decode_payload(&value);
    }
});
