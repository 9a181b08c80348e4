//! Frames from the upstream Realtime server (vsn 1.0.0 objects and 2.0.0 arrays).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = realtime_gateway::feed::realtime::phoenix::decode_any(text);
    }
});
