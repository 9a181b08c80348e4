//! pgoutput messages from a replication slot (the PostgreSQL backend's change feed): the decoder
//! answers with a transaction, nothing yet, or a typed error, and never panics.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = pgoutput::Decoder::default();
    let types: HashMap<u32, String> = HashMap::new();
    for message in data.split(|b| *b == 0xff) {
        let _ = decoder.feed(message, &types);
    }
});
