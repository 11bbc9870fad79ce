//! Compact JWS parsing (RFC 7515 §7.1): `base64url(header) . base64url(payload) . base64url(sig)`.
//!
//! ```ignore
//! let token = jose::parse(text)?;          // strict base64url, JSON objects, `alg` known
//! keys.verify(&token)?;                    // crate::jwk
//! claims::check(&token.claims, ...)?;      // crate::claims
//! ```
//! The caller has already bounded the token's length, so every allocation here is bounded by it.

use serde_json::{Map, Value};

use super::b64;
use super::reason::JwtReason;

/// The signature algorithms we verify. `none` is not one of them and never will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 13] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
        Self::EdDSA,
    ];

    /// The JWA name, e.g. `ES256`. Case-sensitive, as RFC 7515 §4.1.1 says.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// A parsed, not yet verified token.
#[derive(Debug, Clone)]
pub struct ParsedToken<'t> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'t str,
    /// The payload segment as sent (base64url), for `forward_payload_header`.
    pub payload_b64: &'t str,
    pub alg: Alg,
    pub kid: Option<String>,
    pub signature: Vec<u8>,
    pub claims: Map<String, Value>,
}

/// Parses a compact JWS. The header must be a JSON object with a string `alg` we support, an
/// optional string `kid` and `typ`, and no `crit` (we implement no extension, RFC 7515 §4.1.11);
/// the payload must be a JSON object (the claims). Unknown `alg` (including `none`) is
/// [`JwtReason::AlgNotAllowed`], anything else wrong is [`JwtReason::Malformed`].
pub fn parse(token: &str) -> Result<ParsedToken<'_>, JwtReason> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtReason::Malformed);
    };
    let signing_input = token.get(..h.len() + 1 + p.len()).ok_or(JwtReason::Malformed)?;
    let header = json_object(h)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => Alg::parse(a).ok_or(JwtReason::AlgNotAllowed)?,
        _ => return Err(JwtReason::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtReason::Malformed),
    };
    if matches!(header.get("typ"), Some(t) if !t.is_string()) || header.contains_key("crit") {
        return Err(JwtReason::Malformed);
    }
    let claims = json_object(p)?;
    let signature = b64::decode(s.as_bytes()).ok_or(JwtReason::Malformed)?;
    if signature.is_empty() {
        return Err(JwtReason::Malformed);
    }
    Ok(ParsedToken { signing_input, payload_b64: p, alg, kid, signature, claims })
}

fn json_object(segment: &str) -> Result<Map<String, Value>, JwtReason> {
    let bytes = b64::decode(segment.as_bytes()).ok_or(JwtReason::Malformed)?;
    // serde_json bounds nesting at 128 levels, so a deep document is an error, not a stack overflow.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtReason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(json: &str) -> String {
        b64::encode(json.as_bytes())
    }

    fn tok(header: &str, payload: &str, sig: &str) -> String {
        format!("{}.{}.{}", seg(header), seg(payload), sig)
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = tok(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, r#"{"sub":"a"}"#, "AAAA");
        let p = parse(&t).unwrap();
        assert_eq!(p.alg, Alg::ES256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["sub"], "a");
        assert_eq!(p.signature, vec![0, 0, 0]);
        assert_eq!(p.signing_input, t.rsplit_once('.').unwrap().0);
    }

    #[test]
    fn table_of_malformed_tokens() {
        let ok_h = r#"{"alg":"HS256"}"#;
        let cases: Vec<(String, JwtReason)> = vec![
            ("".into(), JwtReason::Malformed),
            ("a.b".into(), JwtReason::Malformed),
            (format!("{}.AAAA", tok(ok_h, "{}", "AAAA")), JwtReason::Malformed),
            (tok(ok_h, "{}", ""), JwtReason::Malformed),
            (tok(ok_h, "{}", "AA=="), JwtReason::Malformed),
            (tok(ok_h, "[]", "AAAA"), JwtReason::Malformed),
            (tok(ok_h, "\"x\"", "AAAA"), JwtReason::Malformed),
            (tok("{}", "{}", "AAAA"), JwtReason::Malformed),
            (tok(r#"{"alg":5}"#, "{}", "AAAA"), JwtReason::Malformed),
            (tok(r#"{"alg":"none"}"#, "{}", "AAAA"), JwtReason::AlgNotAllowed),
            (tok(r#"{"alg":"None"}"#, "{}", "AAAA"), JwtReason::AlgNotAllowed),
            (tok(r#"{"alg":"hs256"}"#, "{}", "AAAA"), JwtReason::AlgNotAllowed),
            (tok(r#"{"alg":"ES256K"}"#, "{}", "AAAA"), JwtReason::AlgNotAllowed),
            (tok(r#"{"alg":"HS256","kid":1}"#, "{}", "AAAA"), JwtReason::Malformed),
            (tok(r#"{"alg":"HS256","typ":{}}"#, "{}", "AAAA"), JwtReason::Malformed),
            (tok(r#"{"alg":"HS256","crit":["exp"]}"#, "{}", "AAAA"), JwtReason::Malformed),
            (format!("{}.{}.AAAA", seg(ok_h), "e30="), JwtReason::Malformed),
            (format!("{} .{}.AAAA", seg(ok_h), seg("{}")), JwtReason::Malformed),
            (tok(ok_h, &format!("{}1{}", "[".repeat(200), "]".repeat(200)), "AAAA"), JwtReason::Malformed),
            (tok(ok_h, "{\"a\":1", "AAAA"), JwtReason::Malformed),
        ];
        for (t, want) in cases {
            assert_eq!(parse(&t).err(), Some(want), "token {t:?}");
        }
    }
}
