//! The access token a session holds for its life: the calls made as the user (RLS checks of
//! `subscribe_thread` and `typing`, database replays) present it to PostgREST.
//!
//! Owns how the token is kept in memory: a JWT's three base64url segments decoded (a quarter
//! smaller than the text: every idle session holds one), encoded again when a call needs the text,
//! which gives back exactly the text the client presented. A token that does not decode
//! canonically is kept as text, unchanged. Never parses, verifies or logs the token: the verifier
//! did that before the session opened.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Marks a held token's first byte.
const TEXT: u8 = 0;
const DECODED: u8 = 1;

/// The session's token, in one allocation: `[TEXT, text…]` or `[DECODED, header length (2 bytes),
/// payload length (2 bytes), header, payload, signature]`.
pub struct HeldToken(Box<[u8]>);

impl HeldToken {
    /// Holds `token`: decoded when its segments are canonical base64url, else as its text.
    pub fn new(token: &str) -> HeldToken {
        HeldToken(decoded(token).unwrap_or_else(|| {
            let mut held = Vec::with_capacity(token.len() + 1);
            held.push(TEXT);
            held.extend_from_slice(token.as_bytes());
            held.into_boxed_slice()
        }))
    }

    /// The token's text, exactly as the client presented it.
    pub fn text(&self) -> String {
        let held = &self.0;
        match held.first() {
            Some(&DECODED) if held.len() >= 5 => {
                let header = usize::from(u16::from_le_bytes([held[1], held[2]]));
                let payload = usize::from(u16::from_le_bytes([held[3], held[4]]));
                let body = &held[5..];
                let (header, rest) = body.split_at(header.min(body.len()));
                let (payload, signature) = rest.split_at(payload.min(rest.len()));
                let mut text = String::with_capacity(body.len() * 4 / 3 + 4);
                URL_SAFE_NO_PAD.encode_string(header, &mut text);
                text.push('.');
                URL_SAFE_NO_PAD.encode_string(payload, &mut text);
                text.push('.');
                URL_SAFE_NO_PAD.encode_string(signature, &mut text);
                text
            }
            _ => String::from_utf8_lossy(held.get(1..).unwrap_or_default()).into_owned(),
        }
    }

    /// The bytes held (for the memory accounting's tests).
    #[cfg(test)]
    fn held_len(&self) -> usize {
        self.0.len()
    }
}

/// `token`'s three segments decoded into one buffer, or None when it is not three canonical
/// base64url segments (the encoding of the decoded bytes would not give back the same text).
fn decoded(token: &str) -> Option<Box<[u8]>> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let mut held = Vec::with_capacity(5 + (header.len() + payload.len() + signature.len()) * 3 / 4 + 3);
    held.extend_from_slice(&[DECODED, 0, 0, 0, 0]);
    let segment = |text: &str, held: &mut Vec<u8>| -> Option<u16> {
        let before = held.len();
        URL_SAFE_NO_PAD.decode_vec(text, held).ok()?;
        let len = held.len() - before;
        // Canonical only: the decoded bytes must encode to the same text.
        (base64::encoded_len(len, false) == Some(text.len())).then_some(())?;
        u16::try_from(len).ok()
    };
    let header_len = segment(header, &mut held)?;
    let payload_len = segment(payload, &mut held)?;
    segment(signature, &mut held)?;
    held[1..3].copy_from_slice(&header_len.to_le_bytes());
    held[3..5].copy_from_slice(&payload_len.to_le_bytes());
    Some(held.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn a_jwt_is_held_decoded_and_given_back_exactly() {
        let held = HeldToken::new(JWT);
        assert_eq!(held.text(), JWT);
        assert!(held.held_len() < JWT.len() * 4 / 5, "{} bytes held for {}", held.held_len(), JWT.len());
    }

    #[test]
    fn anything_else_is_held_as_its_text() {
        for token in ["", "abc", "a.b", "a.b.c.d", "a b.c.d", "eyJ=.eyJ.abc", "YQ.YR.YQ", "é.x.y"] {
            assert_eq!(HeldToken::new(token).text(), token, "{token:?}");
        }
    }

    #[test]
    fn every_segment_length_round_trips() {
        for n in 0..40usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let seg = URL_SAFE_NO_PAD.encode(&bytes);
            let token = format!("{seg}.{seg}.{seg}");
            assert_eq!(HeldToken::new(&token).text(), token);
        }
    }
}
