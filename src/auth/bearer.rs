//! Bearer tokens in `Authorization` headers: reading one (`Bearer <token>`, the scheme in any
//! case) and comparing one with a configured operator secret (`METRICS_TOKEN`, `ADMIN_TOKEN`) in
//! constant time. Pure functions over strings; never logs a token.

/// Extracts `Bearer <token>` from an Authorization header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Whether `header` is `Bearer <expected>`, compared without an early exit.
pub fn bearer_matches(header: Option<&str>, expected: &str) -> bool {
    let Some(given) = bearer(header) else { return false };
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0 && !b.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        assert!(bearer_matches(Some("Bearer s3cret-token"), "s3cret-token"));
        assert!(bearer_matches(Some("bearer s3cret-token"), "s3cret-token"));
        assert!(!bearer_matches(Some("Bearer s3cret-toke"), "s3cret-token"));
        assert!(!bearer_matches(Some("Bearer s3cret-token2"), "s3cret-token"));
        assert!(!bearer_matches(Some("s3cret-token"), "s3cret-token"));
        assert!(!bearer_matches(None, "s3cret-token"));
        assert!(!bearer_matches(Some("Bearer x"), ""));
    }
}
