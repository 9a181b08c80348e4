//! Client addresses behind trusted proxies (`TRUSTED_PROXIES`, `TRUSTED_PROXY_HEADER`).
//!
//! Owns the parsing of the CIDR list and of the one header the trusted proxies write
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded` with its `for=` parameters), and the choice of the
//! client address: the right-most hop that is not a trusted proxy. Only a request whose TCP peer
//! is itself trusted is looked at, so a client that talks to the gateway directly cannot pick its
//! own address; behind a trusted proxy a client can only prepend hops, which are never reached
//! while an untrusted hop stands to their right. Headers are untrusted input: pure functions over
//! strings, no allocation proportional to anything but the header, never a panic (see the fuzz
//! target `forwarded`). This module must never log header contents.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use clap::ValueEnum;
use http::HeaderMap;

/// Which header the trusted proxies write the client address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (ingress-nginx, most load balancers).
    #[default]
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    #[value(name = "forwarded")]
    Forwarded,
}

impl ForwardedHeader {
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// Why a `TRUSTED_PROXIES` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an address or CIDR such as 10.0.0.0/8 or fd00::/8")]
    NotAnAddress(String),
    #[error("{0:?}: the prefix length is larger than the address")]
    PrefixTooLong(String),
}

/// An address range: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `fd00::/8`, or a single address.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| CidrError::NotAnAddress(s.to_string()))?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| CidrError::NotAnAddress(s.to_string()))?,
        };
        if prefix > max {
            return Err(CidrError::PrefixTooLong(s.to_string()));
        }
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    shift >= bits || (net >> shift) == (ip >> shift)
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A comma-separated `TRUSTED_PROXIES` value; empty means none.
pub fn parse_cidrs(value: &str) -> Result<Vec<Cidr>, CidrError> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Cidr::from_str).collect()
}

/// The trusted proxies and the header they write.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub nets: Vec<Cidr>,
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// The client address of a request from `peer`: `peer` itself unless it is a trusted proxy;
    /// then the right-most hop of the header that is not trusted. A hop that cannot be read
    /// (`unknown`, an obfuscated name, garbage) ends the walk at the trusted hop to its right.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let values = headers.get_all(self.header.name()).iter().map(|v| v.to_str().unwrap_or("\u{0}"));
        self.client_from(peer, values)
    }

    /// [`TrustedProxies::client`] over the values of the header, in the order they came.
    pub fn client_from<'a>(&self, peer: IpAddr, values: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::XForwardedFor => values.flat_map(|v| v.split(',')).map(parse_node).collect(),
            ForwardedHeader::Forwarded => values.flat_map(forwarded_elements).map(|e| forwarded_for(&e)).collect(),
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = hop.map(canonical) else { return client };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// One node of either header: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, optionally quoted. `unknown`, `_obfuscated` and anything else: `None`.
pub fn parse_node(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    let raw = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(raw).trim();
    if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(ip);
    }
    let (v4, port) = raw.rsplit_once(':')?;
    is_port(port).then(|| v4.parse::<Ipv4Addr>().ok().map(IpAddr::V4)).flatten()
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The elements of one `Forwarded` value (split on commas outside quoted strings).
fn forwarded_elements(value: &str) -> Vec<String> {
    split_outside_quotes(value, ',')
}

/// The `for=` node of one `Forwarded` element, if any and readable.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    split_outside_quotes(element, ';').iter().find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| parse_node(&unescape(value.trim())))?
    })
}

fn unescape(quoted: &str) -> String {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut current, mut quoted, mut escaped) = (String::new(), false, false);
    for c in s.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                current.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == sep && !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn proxies(list: &str, header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies { nets: parse_cidrs(list).expect("valid list"), header }
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(name, HeaderValue::from_str(v).expect("header value"));
        }
        map
    }

    #[test]
    fn cidrs_parse_and_match() {
        let nets = parse_cidrs(" 10.0.0.0/8, fd00::/8 ,192.0.2.7,").expect("valid");
        assert_eq!(nets.len(), 3);
        assert!(nets[0].contains(ip("10.255.0.1")) && !nets[0].contains(ip("11.0.0.1")));
        assert!(nets[0].contains(ip("::ffff:10.1.2.3")), "IPv4-mapped peers match IPv4 ranges");
        assert!(nets[1].contains(ip("fd12::1")) && !nets[1].contains(ip("fe80::1")));
        assert!(nets[2].contains(ip("192.0.2.7")) && !nets[2].contains(ip("192.0.2.8")));
        assert!(parse_cidrs("0.0.0.0/0").expect("all")[0].contains(ip("203.0.113.9")));
        assert!(!parse_cidrs("0.0.0.0/0").expect("all")[0].contains(ip("2001:db8::1")));
        assert_eq!(parse_cidrs("").expect("empty"), vec![]);
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "example.com", "10.0.0.0/-1", "10.0.0.0/", "/8"] {
            assert!(parse_cidrs(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let p = proxies("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(p.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        assert_eq!(TrustedProxies::default().client(ip("10.0.0.1"), &h), ip("10.0.0.1"), "none trusted by default");
    }

    #[test]
    fn x_forwarded_for_gives_the_right_most_untrusted_hop() {
        let p = proxies("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let peer = ip("10.0.0.2");
        let one = headers("x-forwarded-for", &["203.0.113.5"]);
        assert_eq!(p.client(peer, &one), ip("203.0.113.5"));
        let spoofed = headers("x-forwarded-for", &["1.2.3.4, 203.0.113.5, 10.0.0.9"]);
        assert_eq!(p.client(peer, &spoofed), ip("203.0.113.5"), "a prepended hop is never reached");
        let lines = headers("x-forwarded-for", &["1.2.3.4", "203.0.113.5:5555"]);
        assert_eq!(p.client(peer, &lines), ip("203.0.113.5"), "several header lines are one list");
        let v6 = headers("x-forwarded-for", &["[2001:db8::7]:443"]);
        assert_eq!(p.client(peer, &v6), ip("2001:db8::7"));
        assert_eq!(p.client(peer, &HeaderMap::new()), peer, "no header: the proxy itself");
        let all_trusted = headers("x-forwarded-for", &["10.1.1.1, 10.2.2.2"]);
        assert_eq!(p.client(peer, &all_trusted), ip("10.1.1.1"));
        let garbage = headers("x-forwarded-for", &["203.0.113.5, unknown, 10.0.0.3"]);
        assert_eq!(p.client(peer, &garbage), ip("10.0.0.3"), "unreadable hop: stop at the last trusted one");
        let forwarded_only = headers("forwarded", &["for=198.51.100.1"]);
        assert_eq!(p.client(peer, &forwarded_only), peer, "the other header is ignored");
    }

    #[test]
    fn forwarded_gives_the_right_most_untrusted_for() {
        let p = proxies("10.0.0.0/8", ForwardedHeader::Forwarded);
        let peer = ip("10.0.0.2");
        let h = headers("forwarded", &[r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.5"#]);
        assert_eq!(p.client(peer, &h), ip("2001:db8:cafe::17"));
        let h = headers("forwarded", &["proto=https;for=192.0.2.60;by=10.0.0.2"]);
        assert_eq!(p.client(peer, &h), ip("192.0.2.60"));
        let h = headers("forwarded", &[r#"for="_hidden", for=10.0.0.4"#]);
        assert_eq!(p.client(peer, &h), ip("10.0.0.4"), "an obfuscated node stops the walk");
        let h = headers("forwarded", &[r#"for="1.2.3.4,5.6.7.8";proto=http"#]);
        assert_eq!(p.client(peer, &h), peer, "a comma inside quotes is not a separator; the node is unreadable");
        let h = headers("forwarded", &["for=unknown"]);
        assert_eq!(p.client(peer, &h), peer);
        let xff = headers("x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(p.client(peer, &xff), peer, "the other header is ignored");
    }

    #[test]
    fn nodes_parse_strictly() {
        assert_eq!(parse_node(" 192.0.2.1 "), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("\"[::1]:80\""), Some(ip("::1")));
        assert_eq!(parse_node("::1"), Some(ip("::1")));
        for bad in ["", "unknown", "_x", "[::1", "[::1]x", "192.0.2.1:", "192.0.2.1:123456", "1.2.3", "\u{0}", "\""] {
            assert_eq!(parse_node(bad), None, "{bad:?}");
        }
    }
}
