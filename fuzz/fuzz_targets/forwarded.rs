//! Client addresses behind trusted proxies: whatever `X-Forwarded-For` / `Forwarded` and
//! `TRUSTED_PROXIES` hold, the answer is an address, never a panic; with no trusted proxy, always the peer.
#![no_main]
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use realtime_gateway::edge::forwarded::{parse_cidrs, ForwardedHeader, TrustedProxies};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // First line: TRUSTED_PROXIES; the others: header values.
    let (list, values) = text.split_once('\n').unwrap_or((text, ""));
    let _ = parse_cidrs(list);
    let nets = parse_cidrs("10.0.0.0/8, fd00::/8").expect("valid list");
    let peer: IpAddr = [10, 0, 0, 1].into();
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let proxies = TrustedProxies { nets: nets.clone(), header };
        let _ = proxies.client_from(peer, values.split('\n'));
        // Nothing trusted: the header is never read.
        let direct = TrustedProxies { nets: Vec::new(), header };
        assert_eq!(direct.client_from(peer, values.split('\n')), peer);
    }
});
