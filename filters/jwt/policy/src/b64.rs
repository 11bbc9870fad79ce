//! Strict base64url without padding (RFC 7515 §2, RFC 4648 §5), as JWS compact serialization uses.
//!
//! Strict means: only `A-Z a-z 0-9 - _`, no `=` padding, no whitespace, a length that is not 1
//! modulo 4, and zero unused bits in the last character, so that every byte string has exactly
//! one accepted encoding (a token cannot be altered without changing its text).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Decodes strict unpadded base64url; `None` for anything else.
pub fn decode(input: &[u8]) -> Option<Vec<u8>> {
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut chunks = input.chunks_exact(4);
    for chunk in &mut chunks {
        let mut n = 0u32;
        for &c in chunk {
            n = (n << 6) | value(c)?;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = chunks.remainder();
    let mut n = 0u32;
    for &c in rest {
        n = (n << 6) | value(c)?;
    }
    match rest.len() {
        0 => {}
        2 => {
            // 12 bits, 8 used: the low 4 must be zero.
            if n & 0xF != 0 {
                return None;
            }
            out.push((n >> 4) as u8);
        }
        3 => {
            // 18 bits, 16 used: the low 2 must be zero.
            if n & 0x3 != 0 {
                return None;
            }
            out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]);
        }
        _ => return None,
    }
    Some(out)
}

/// Encodes as unpadded base64url.
pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'A'));
    let mut chunks = input.chunks_exact(3);
    for c in &mut chunks {
        if let [a, b, c] = *c {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
            out.extend([sym(n >> 18), sym(n >> 12), sym(n >> 6), sym(n)]);
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend([sym(n >> 18), sym(n >> 12)]);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend([sym(n >> 18), sym(n >> 12), sym(n >> 6)]);
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0u8..=255).collect();
        for len in 0..40 {
            let enc = encode(&data[..len]);
            assert_eq!(decode(enc.as_bytes()).as_deref(), Some(&data[..len]), "length {len}: {enc}");
        }
    }

    #[test]
    fn rejects_non_canonical_padding_and_foreign_characters() {
        assert_eq!(decode(b"QQ"), Some(b"A".to_vec()));
        assert_eq!(decode(b"QR"), None, "unused bits set");
        assert_eq!(decode(b"QUI"), Some(b"AB".to_vec()));
        assert_eq!(decode(b"QUJ"), None, "unused bits set");
        for bad in [&b"QQ=="[..], b"Q", b"QQ Q", b"QQ+/", b"QQ\n", b"QUJD="] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
