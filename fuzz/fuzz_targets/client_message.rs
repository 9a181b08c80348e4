//! Client WebSocket frames and the timestamps the gateway parses from the database.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = realtime_gateway::protocol::parse_client_message(text);
        let _ = realtime_gateway::protocol::parse_time(text);
        let _ = realtime_gateway::server::request_token(Some(text), &Default::default());
        let _ = realtime_gateway::bearer(Some(text));
    }
});
