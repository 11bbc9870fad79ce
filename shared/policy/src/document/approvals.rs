//! Approvals: Ed25519 signatures over a policy document, checked against trust settings that
//! live outside the policy (the VM configuration).
//!
//! **What is signed.** The message is the ASCII prefix `gatewarden-policy-v1` followed by one
//! newline byte and the canonical JSON of the document without its top-level `signatures`
//! member. The canonical JSON of a value (as parsed by serde_json, so YAML and JSON files with
//! the same content give the same bytes) is:
//! - no whitespace outside strings;
//! - object members sorted by key, comparing the keys' UTF-8 bytes; keys are unique (a document
//!   with a duplicate field is refused by the policy parser anyway);
//! - strings in double quotes, escaping only `"` as `\"`, `\` as `\\`, and control characters
//!   below U+0020 as `\b \f \n \r \t` or else `\u00XX` (lowercase hex); everything else as raw UTF-8;
//! - integers in plain decimal (`-3`, `10`); other numbers as serde_json writes an `f64`: the
//!   shortest text that reads back as the same double (`0.5`, `10.0`, `1e300`);
//! - `true`, `false`, `null` as such.
//!
//! **Trust settings** (`{"trusted_signers": [{"key_id": "alice", "public_key": "<base64 of 32
//! bytes>"}], "required_signatures": 2}`): when `required_signatures` is above 0, a policy is
//! accepted only with that many valid signatures from distinct trusted keys. A signature whose
//! `key_id` is not trusted, or that does not verify, does not count (and does not refuse the
//! policy by itself); a key signing twice counts once.

use ed25519_compact::{PublicKey, Signature};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{quote, ConfigError, FieldPath};

/// The domain-separation prefix of the signed message.
pub const SIGNING_PREFIX: &[u8] = b"gatewarden-policy-v1\n";

/// Most trusted signers a trust configuration may name.
const MAX_SIGNERS: usize = 64;

/// One entry of a document's `signatures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureDoc {
    /// Which trusted signer made it (as named in the trust settings).
    pub key_id: String,
    /// Standard base64 (with padding) of the 64-byte Ed25519 signature.
    pub sig: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustDoc {
    #[serde(default)]
    trusted_signers: Vec<SignerDoc>,
    #[serde(default)]
    required_signatures: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerDoc {
    key_id: String,
    public_key: String,
}

/// Compiled trust settings. The default trusts nobody and requires nothing.
#[derive(Debug, Clone, Default)]
pub struct TrustConfig {
    signers: Vec<(String, PublicKey)>,
    required: usize,
}

/// The outcome of checking a document's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Distinct trusted key ids with a valid signature.
    pub valid: Vec<String>,
    /// Why each other signature did not count: `signatures[i] (key_id "x"): reason`.
    pub rejected: Vec<String>,
}

impl TrustConfig {
    /// Parses the trust settings. Empty bytes (no VM configuration) mean no approvals required.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let doc: TrustDoc = crate::codec::parse_json(bytes)?;
        let path = FieldPath::root().field("trusted_signers");
        if doc.trusted_signers.len() > MAX_SIGNERS {
            return Err(path.error(format!("{} signers, at most {MAX_SIGNERS}", doc.trusted_signers.len())));
        }
        let mut signers: Vec<(String, PublicKey)> = Vec::with_capacity(doc.trusted_signers.len());
        for (i, s) in doc.trusted_signers.into_iter().enumerate() {
            let p = path.index(i);
            if s.key_id.is_empty() || s.key_id.len() > 128 {
                return Err(p.field("key_id").error(format!("invalid key_id {}: 1 to 128 characters", quote(&s.key_id))));
            }
            if signers.iter().any(|(k, _)| *k == s.key_id) {
                return Err(p.field("key_id").error(format!("duplicate key_id {}", quote(&s.key_id))));
            }
            let key = decode_b64(s.public_key.trim()).and_then(|b| PublicKey::from_slice(&b).ok()).ok_or_else(|| {
                p.field("public_key").error(format!("not the standard base64 of a 32-byte Ed25519 public key: {}", quote(&s.public_key)))
            })?;
            signers.push((s.key_id, key));
        }
        let required = doc.required_signatures as usize;
        if required > signers.len() {
            return Err(FieldPath::root().field("required_signatures").error(format!(
                "{required} signatures required but only {} trusted signers: no policy could ever be accepted",
                signers.len()
            )));
        }
        Ok(Self { signers, required })
    }

    /// Valid signatures from distinct trusted keys a policy needs (0: approvals off).
    pub fn required(&self) -> usize {
        self.required
    }

    /// The trusted key ids.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.signers.iter().map(|(k, _)| k.as_str())
    }

    /// Counts the valid signatures of a document (JSON bytes) from distinct trusted keys.
    pub fn check(&self, bytes: &[u8]) -> Result<Verified, ConfigError> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError::new("", format!("not JSON: {e}")))?;
        self.check_value(&doc)
    }

    /// [`check`](Self::check) on a parsed document.
    pub fn check_value(&self, doc: &Value) -> Result<Verified, ConfigError> {
        let message = signing_message(doc)?;
        let sigs = signatures_of(doc)?;
        let mut out = Verified { valid: Vec::new(), rejected: Vec::new() };
        for (i, s) in sigs.iter().enumerate() {
            let why = match self.signers.iter().find(|(k, _)| *k == s.key_id) {
                None => Some("unknown key_id"),
                Some(_) if out.valid.contains(&s.key_id) => Some("this key already signed"),
                Some((_, key)) => match decode_b64(&s.sig).and_then(|b| Signature::from_slice(&b).ok()) {
                    None => Some("not the base64 of a 64-byte signature"),
                    Some(sig) => match key.verify(&message, &sig) {
                        Ok(()) => None,
                        Err(_) => Some("bad signature (the document changed after signing, or another key signed)"),
                    },
                },
            };
            match why {
                None => out.valid.push(s.key_id.clone()),
                Some(why) => out.rejected.push(format!("signatures[{i}] (key_id {}): {why}", quote(&s.key_id))),
            }
        }
        Ok(out)
    }

    /// Accepts a document (JSON bytes) with enough signatures; otherwise an error at `signatures`.
    pub fn verify(&self, bytes: &[u8]) -> Result<Verified, ConfigError> {
        if self.required == 0 {
            return Ok(Verified { valid: Vec::new(), rejected: Vec::new() });
        }
        let v = self.check(bytes)?;
        self.enough(v)
    }

    /// [`verify`](Self::verify) on a parsed document.
    pub fn verify_value(&self, doc: &Value) -> Result<Verified, ConfigError> {
        if self.required == 0 {
            return Ok(Verified { valid: Vec::new(), rejected: Vec::new() });
        }
        let v = self.check_value(doc)?;
        self.enough(v)
    }

    fn enough(&self, v: Verified) -> Result<Verified, ConfigError> {
        if v.valid.len() >= self.required {
            return Ok(v);
        }
        let mut msg = format!("{} valid signature(s) from distinct trusted keys, {} required", v.valid.len(), self.required);
        if !v.valid.is_empty() {
            let names: Vec<String> = v.valid.iter().map(|k| quote(k)).collect();
            msg.push_str(&format!(" (valid: {})", names.join(", ")));
        }
        for r in &v.rejected {
            msg.push_str("; ");
            msg.push_str(r);
        }
        Err(ConfigError::new("signatures", msg))
    }
}

/// The `signatures` of a document (empty when absent), with field-path errors.
pub fn signatures_of(doc: &Value) -> Result<Vec<SignatureDoc>, ConfigError> {
    match doc.get("signatures") {
        None => Ok(Vec::new()),
        Some(v) => {
            // The typed parser gives exact messages; the path comes from the position in the
            // re-serialised text, which is then dropped from the message (it is not the user's).
            let text = serde_json::to_vec(v).map_err(|e| ConfigError::new("signatures", e.to_string()))?;
            let sigs: Vec<SignatureDoc> = serde_json::from_slice(&text).map_err(|e| {
                let inner = crate::codec::json_path::path_of_error(&text, &e);
                let path = if inner.is_empty() {
                    "signatures".to_owned()
                } else if inner.starts_with('[') {
                    format!("signatures{inner}")
                } else {
                    format!("signatures.{inner}")
                };
                let msg = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                ConfigError::new(path, msg.strip_suffix(suffix.as_str()).unwrap_or(&msg).to_owned())
            })?;
            Ok(sigs)
        }
    }
}

/// The bytes an approver signs: [`SIGNING_PREFIX`] and the canonical JSON of `doc` without
/// its top-level `signatures`.
pub fn signing_message(doc: &Value) -> Result<Vec<u8>, ConfigError> {
    let Value::Object(map) = doc else {
        return Err(ConfigError::new("", "a policy document is a JSON object"));
    };
    let mut out = SIGNING_PREFIX.to_vec();
    let mut text = String::new();
    write_object(&mut text, map.iter().filter(|(k, _)| k.as_str() != "signatures").collect());
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// The canonical JSON text of a value (see the module documentation).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map.iter().collect()),
    }
}

/// Not generic over the members' iterator: one instance of the sort in the module.
fn write_object(out: &mut String, mut members: Vec<(&String, &Value)>) {
    members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

/// Appends `s` as a JSON string literal (the canonical form's escapes; also used for log lines).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn encode_b64(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk.first().copied().unwrap_or(0), chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64.get(((n >> shift) & 63) as usize).copied().unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict standard base64 with padding; `None` for anything else (non-zero unused bits too).
pub fn decode_b64(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| B64.iter().position(|&x| x == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.len() / 4;
    for (ci, chunk) in bytes.chunks_exact(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && ci + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for &c in chunk.iter().take(4 - pad) {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - pad;
        if got.iter().skip(keep).any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(got.get(..keep)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_compact::{KeyPair, Seed};
    use serde_json::json;

    fn keypair(n: u8) -> KeyPair {
        KeyPair::from_seed(Seed::new([n; 32]))
    }

    fn sign(doc: &Value, key_id: &str, kp: &KeyPair) -> Value {
        let msg = signing_message(doc).unwrap();
        json!({"key_id": key_id, "sig": encode_b64(kp.sk.sign(&msg, None).as_ref())})
    }

    fn trust(signers: &[(&str, &KeyPair)], required: u32) -> TrustConfig {
        let list: Vec<Value> = signers.iter().map(|(k, kp)| json!({"key_id": k, "public_key": encode_b64(kp.pk.as_ref())})).collect();
        TrustConfig::parse(json!({"trusted_signers": list, "required_signatures": required}).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [1, 2.5, "x\"y\n\u0001é"], "a": {"z": null, "B": true, "é": false}, "10": 10.0 }"#).unwrap();
        assert_eq!(canonical_json(&v), "{\"10\":10.0,\"a\":{\"B\":true,\"z\":null,\"é\":false},\"b\":[1,2.5,\"x\\\"y\\n\\u0001é\"]}");
    }

    #[test]
    fn yaml_and_json_of_the_same_content_sign_the_same_bytes() {
        let a: Value = serde_json::from_str(r#"{"policy_version":"v1","rollout":{"percent":0.5}}"#).unwrap();
        let b: Value =
            serde_json::from_str("{\n  \"rollout\": {\"percent\": 0.5},\n  \"policy_version\": \"v1\",\n  \"signatures\": []\n}").unwrap();
        assert_eq!(signing_message(&a).unwrap(), signing_message(&b).unwrap());
        assert!(signing_message(&a).unwrap().starts_with(b"gatewarden-policy-v1\n{\"policy_version\""));
    }

    #[test]
    fn base64_round_trips_and_is_strict() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).collect();
            assert_eq!(decode_b64(&encode_b64(&data)).unwrap(), data);
        }
        assert_eq!(encode_b64(b"ab"), "YWI=");
        assert_eq!(decode_b64("YWJ="), None, "non-zero unused bits");
        assert_eq!(decode_b64("YWI"), None, "padding required");
        assert_eq!(decode_b64("YW=I"), None);
        assert_eq!(decode_b64("YWI=YWI="), None);
        assert_eq!(decode_b64("Y-I="), None);
    }

    #[test]
    fn counts_valid_signatures_from_distinct_trusted_keys() {
        let (alice, bob, carol, mallory) = (keypair(1), keypair(2), keypair(3), keypair(4));
        let t = trust(&[("alice", &alice), ("bob", &bob), ("carol", &carol)], 2);
        let mut doc = json!({"policy_version": "v1", "default": {}});
        let sa = sign(&doc, "alice", &alice);
        let sb = sign(&doc, "bob", &bob);
        let forged = sign(&doc, "carol", &mallory);
        let unknown = sign(&doc, "mallory", &mallory);

        doc["signatures"] = json!([sa, sb]);
        assert_eq!(t.verify_value(&doc).unwrap().valid, vec!["alice", "bob"]);

        doc["signatures"] = json!([sa, sa]);
        let err = t.verify_value(&doc).unwrap_err();
        assert_eq!(err.path(), "signatures");
        assert!(err.message().starts_with("1 valid signature(s) from distinct trusted keys, 2 required"), "{err}");
        assert!(err.message().contains("signatures[1] (key_id \"alice\"): this key already signed"), "{err}");

        doc["signatures"] = json!([sa, forged, unknown]);
        let err = t.verify_value(&doc).unwrap_err().to_string();
        assert!(err.contains("signatures[1] (key_id \"carol\"): bad signature"), "{err}");
        assert!(err.contains("signatures[2] (key_id \"mallory\"): unknown key_id"), "{err}");

        // Unknown and bad signatures do not refuse a policy that has enough good ones.
        doc["signatures"] = json!([unknown, sa, forged, sb]);
        assert_eq!(t.verify_value(&doc).unwrap().valid, vec!["alice", "bob"]);

        // Any change of content invalidates every signature.
        doc["policy_version"] = json!("v2");
        doc["signatures"] = json!([sa, sb]);
        assert!(t.verify_value(&doc).unwrap_err().message().starts_with("0 valid"));
    }

    #[test]
    fn no_approvals_required_accepts_anything() {
        let t = TrustConfig::parse(b"").unwrap();
        assert_eq!(t.required(), 0);
        assert!(t.verify(b"{\"policy_version\":\"v1\"}").is_ok());
    }

    #[test]
    fn malformed_signatures_name_the_field() {
        let t = trust(&[("alice", &keypair(1))], 1);
        let err = t.verify(br#"{"policy_version":"v1","signatures":[{"key_id":"alice"}]}"#).unwrap_err();
        assert_eq!(err.to_string(), "signatures[0]: missing field `sig`");
        let err = t.verify(br#"{"policy_version":"v1","signatures":[{"key_id":"alice","sig":"AAAA"}]}"#).unwrap_err();
        assert!(err.message().contains("not the base64 of a 64-byte signature"), "{err}");
    }

    #[test]
    fn trust_config_errors() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"required_signatures": 1}"#,
                "required_signatures: 1 signatures required but only 0 trusted signers: no policy could ever be accepted",
            ),
            (
                r#"{"trusted_signers": [{"key_id": "a", "public_key": "AAAA"}]}"#,
                "trusted_signers[0].public_key: not the standard base64 of a 32-byte Ed25519 public key: \"AAAA\"",
            ),
            (
                r#"{"trusted_signers": [], "required": 1}"#,
                "required: unknown field `required`, expected `trusted_signers` or `required_signatures` at line 1 column 34",
            ),
            ("{", ""),
        ];
        for (json, want) in cases {
            let err = TrustConfig::parse(json.as_bytes()).unwrap_err().to_string();
            if want.is_empty() {
                continue;
            }
            assert!(err.ends_with(want) || err == *want, "{json}: {err}");
        }
        let pk = encode_b64(keypair(1).pk.as_ref());
        let dup = json!({"trusted_signers": [{"key_id": "a", "public_key": pk}, {"key_id": "a", "public_key": pk}]});
        assert_eq!(
            TrustConfig::parse(dup.to_string().as_bytes()).unwrap_err().to_string(),
            "trusted_signers[1].key_id: duplicate key_id \"a\""
        );
    }
}
