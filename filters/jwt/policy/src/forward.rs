//! What an allowed request carries upstream: claims and the payload in headers, and the token
//! removed from wherever it was found (header, query parameter, cookie) unless `forward`.

use std::sync::Arc;

use serde_json::Value;

use super::b64;
use super::claims;
use super::evaluate::{ProviderState, Request};
use super::extract::{cookies_without, path_without_params, Location};
use super::policy::JwtOutcome;

/// Longest header value we set from a claim; longer values are not forwarded.
pub const MAX_CLAIM_HEADER_BYTES: usize = 8192;

impl Request<'_, '_, '_> {
    /// Headers for the upstream: claims, payload, and the token removed unless forwarded.
    pub(crate) fn forward(&self, verified: &[usize], out: &mut JwtOutcome) {
        let mut strip_params: Vec<String> = Vec::new();
        let mut strip_cookies: Vec<String> = Vec::new();
        for &i in verified {
            let (Some(p), Some(Some(ProviderState::Verified { token, text, locations }))) =
                (self.policy.providers.get(i), self.states.get(i))
            else {
                continue;
            };
            if !out.verified.contains(&p.name) {
                out.verified.push(Arc::clone(&p.name));
            }
            if let Some(h) = &p.payload_header {
                let payload = text.split('.').nth(1).unwrap_or("");
                let mut value = payload.to_owned();
                if p.pad_payload {
                    // base64url with `=` padding to a multiple of 4 (Envoy's
                    // pad_forward_payload_header); the token's own segment has none.
                    value.extend(std::iter::repeat_n('=', (4 - payload.len() % 4) % 4));
                }
                set_header(out, h, value);
            }
            for (claim, header) in &p.claim_headers {
                if let Some(v) = claims::lookup(&token.claims, claim).and_then(claim_header_value) {
                    set_header(out, header, v);
                }
            }
            if p.forward {
                continue;
            }
            for &at in locations {
                let Some(name) = p.sources.name(at) else { continue };
                match at {
                    Location::Header(_) => {
                        if !out.remove_headers.iter().any(|h| h == name) {
                            out.remove_headers.push(name.to_owned());
                        }
                    }
                    Location::Param(_) => strip_params.push(name.to_owned()),
                    Location::Cookie(_) => strip_cookies.push(name.to_owned()),
                }
            }
        }
        if !strip_params.is_empty() {
            let path = path_without_params(self.facts.header(":path").unwrap_or(""), &strip_params);
            set_header(out, ":path", path);
        }
        if !strip_cookies.is_empty() {
            // Every `cookie` header goes, then the rest comes back as one: replacing a header
            // does not remove its other values on every host, and the token may be in any.
            if !out.remove_headers.iter().any(|h| h == "cookie") {
                out.remove_headers.push("cookie".to_owned());
            }
            if let Some(c) = cookies_without(self.facts, &strip_cookies) {
                set_header(out, "cookie", c);
            }
        }
    }
}

fn set_header(out: &mut JwtOutcome, name: &str, value: String) {
    match out.set_headers.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => out.set_headers.push((name.to_owned(), value)),
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON text, objects
/// and arrays as base64url of their JSON; `None` for null, control characters (a header
/// injection) or a value longer than [`MAX_CLAIM_HEADER_BYTES`].
fn claim_header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(_) | Value::Object(_) => b64::encode(v.to_string().as_bytes()),
    };
    let clean = !s.chars().any(|c| c.is_control());
    (clean && s.len() <= MAX_CLAIM_HEADER_BYTES).then_some(s)
}
