//! JSON Web Key Sets (RFC 7517) parsed once into ready verifying keys, and signature checks.
//!
//! ```ignore
//! let set = JwksSet::parse(bytes)?;          // at compile (local_jwks) or JWKS load (remote)
//! for s in set.skipped() { log(s) }          // keys we could not use, and why
//! set.verify(&parsed_token)?;                // per request: select by kid and alg, verify
//! ```
//! Supported keys: `RSA` (`n`, `e`; 2048 to 4096 bits), `EC` (`P-256`, `P-384`, `P-521`; `x`,
//! `y`), `OKP` (`Ed25519`; `x`) and `oct` (`k`, at least 32 bytes). A key with bad or unsupported
//! parameters is skipped with a reason; the set is refused only if no key is usable.
//!
//! Key confusion cannot happen by construction: an `HS*` token is only ever checked against
//! `oct` keys, `RS*`/`PS*` against RSA keys, `ESxxx` against EC keys of the matching curve,
//! `EdDSA` against Ed25519 keys; a JWK's own `alg`, when present, must equal the token's.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Verifier;
use rsa::{BoxedUint, PublicKey};
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

use super::b64;
use super::jose::{Alg, ParsedToken};
use super::reason::JwtReason;

/// Most keys kept from one set; more are skipped.
pub const MAX_KEYS: usize = 64;
/// Most signature checks for one token (a token without `kid` is tried against every key of
/// the right type, up to this many), so a set with many keys cannot multiply the cost of a
/// forged token.
pub const MAX_KEYS_TRIED: usize = 8;
/// Smallest `oct` key accepted (RFC 7518 §3.2: at least the hash size; HS256 needs 32 bytes).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

#[derive(Clone)]
enum KeyMaterial {
    Oct(Vec<u8>),
    Rsa(Box<RsaKey>),
    /// Shared: its precomputed table (built at first use) is 151 KB.
    P256(std::sync::Arc<super::es256::Es256Key>),
    P384(p384::ecdsa::VerifyingKey),
    P521(Box<p521::ecdsa::VerifyingKey>),
    Ed25519(ed25519_compact::PublicKey),
}

/// An RSA key: validated by the `rsa` crate (the portable verifier), and with the `native-crypto`
/// feature also in AWS-LC's form (the verifier used then).
#[derive(Clone)]
struct RsaKey {
    #[cfg_attr(feature = "native-crypto", allow(dead_code))]
    key: PublicKey,
    #[cfg(feature = "native-crypto")]
    native: native_rsa::Prepared,
}

impl RsaKey {
    fn new(n: &[u8], e: &[u8]) -> Result<Self, String> {
        let key = PublicKey::new_with_size_limits(BoxedUint::from_be_slice_vartime(n), BoxedUint::from_be_slice_vartime(e), 2048..=4096)
            .map_err(|err| format!("invalid RSA key: {err}"))?;
        Ok(Self {
            key,
            #[cfg(feature = "native-crypto")]
            native: native_rsa::Prepared::new(n, e),
        })
    }

    #[cfg(not(feature = "native-crypto"))]
    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        use rsa::Pkcs1v15Sign;
        use sha2::Digest;
        use Alg::*;
        let k = &self.key;
        match alg {
            RS256 => k.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig).is_ok(),
            RS384 => k.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig).is_ok(),
            RS512 => k.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig).is_ok(),
            // PSS with the salt as long as the hash (RFC 7518 §3.5).
            PS256 => k.verify(rsa::pss::Pss::<Sha256>::new(), &Sha256::digest(msg), sig).is_ok(),
            PS384 => k.verify(rsa::pss::Pss::<Sha384>::new(), &Sha384::digest(msg), sig).is_ok(),
            PS512 => k.verify(rsa::pss::Pss::<Sha512>::new(), &Sha512::digest(msg), sig).is_ok(),
            _ => false,
        }
    }

    #[cfg(feature = "native-crypto")]
    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.native.verify(alg, msg, sig)
    }
}

/// RSA verification with AWS-LC, natively. An AWS-LC key is parsed for one algorithm; it is built
/// the first time a token with that algorithm is checked against this key and kept, so its
/// Montgomery constants are computed once per key and algorithm, not once per signature. Clones
/// (a JWKS refreshed with the same key object, a policy copied) share the built keys.
#[cfg(feature = "native-crypto")]
mod native_rsa {
    use super::Alg;
    use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
    use std::sync::{Arc, OnceLock};

    /// The algorithms an RSA key verifies, in the order of `Prepared::parsed`. PSS uses a salt as
    /// long as the hash (RFC 7518 §3.5), as the portable verifier does.
    const ALGS: [(Alg, &RsaParameters); 6] = [
        (Alg::RS256, &lc::RSA_PKCS1_2048_8192_SHA256),
        (Alg::RS384, &lc::RSA_PKCS1_2048_8192_SHA384),
        (Alg::RS512, &lc::RSA_PKCS1_2048_8192_SHA512),
        (Alg::PS256, &lc::RSA_PSS_2048_8192_SHA256),
        (Alg::PS384, &lc::RSA_PSS_2048_8192_SHA384),
        (Alg::PS512, &lc::RSA_PSS_2048_8192_SHA512),
    ];

    #[derive(Clone)]
    pub(super) struct Prepared(Arc<Inner>);

    struct Inner {
        /// Modulus and exponent, big-endian without leading zeros.
        components: RsaPublicKeyComponents<Vec<u8>>,
        /// `None` once AWS-LC refused the components (the key then verifies nothing).
        parsed: [OnceLock<Option<ParsedPublicKey>>; ALGS.len()],
    }

    impl Prepared {
        pub(super) fn new(n: &[u8], e: &[u8]) -> Self {
            let unpadded = |b: &[u8]| b.iter().position(|&x| x != 0).map_or_else(Vec::new, |i| b.get(i..).unwrap_or_default().to_vec());
            let components = RsaPublicKeyComponents { n: unpadded(n), e: unpadded(e) };
            Self(Arc::new(Inner { components, parsed: Default::default() }))
        }

        pub(super) fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
            let Some((i, &(_, params))) = ALGS.iter().enumerate().find(|(_, (a, _))| *a == alg) else { return false };
            let Some(slot) = self.0.parsed.get(i) else { return false };
            let key = slot.get_or_init(|| self.0.components.to_parsed_public_key(params).ok());
            key.as_ref().is_some_and(|k| k.verify_sig(msg, sig).is_ok())
        }
    }
}

impl KeyMaterial {
    fn kind(&self) -> &'static str {
        match self {
            Self::Oct(_) => "oct",
            Self::Rsa(_) => "RSA",
            Self::P256(_) => "EC P-256",
            Self::P384(_) => "EC P-384",
            Self::P521(_) => "EC P-521",
            Self::Ed25519(_) => "OKP Ed25519",
        }
    }
}

/// One usable key.
#[derive(Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<Alg>,
    material: KeyMaterial,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (an oct key is a secret).
        write!(f, "Jwk({}, kid={:?}, alg={:?})", self.material.kind(), self.kid, self.alg.map(Alg::as_str))
    }
}

/// A key of the set that was not usable, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the `keys` array.
    pub index: usize,
    pub kid: Option<String>,
    pub reason: String,
}

/// A set that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError(String);

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JwksError {}

/// A parsed key set: verifying keys prepared once, used for every request.
#[derive(Debug, Clone, Default)]
pub struct JwksSet {
    keys: Vec<Jwk>,
    skipped: Vec<SkippedKey>,
}

impl JwksSet {
    /// Builds the precomputed tables of the set's P-256 keys (and the generator's) now rather
    /// than at each key's first ES256 verification (~30 ms in a Wasm VM for the first key). The
    /// glue calls this when a set is loaded, off the request path; it is optional.
    pub fn prepare(&self) {
        for key in &self.keys {
            if let KeyMaterial::P256(k) = &key.material {
                k.prepare();
            }
        }
    }

    /// Parses a JWKS document (`{"keys": [...]}`).
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| JwksError(format!("invalid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// Builds the set from an already parsed JWKS document.
    pub fn from_value(v: &Value) -> Result<Self, JwksError> {
        let Some(list) = v.get("keys").and_then(Value::as_array) else {
            return Err(JwksError("a JWKS is an object with a \"keys\" array".into()));
        };
        let mut set = Self::default();
        for (index, raw) in list.iter().enumerate() {
            let kid = raw.get("kid").and_then(Value::as_str).map(str::to_owned);
            let parsed = if set.keys.len() >= MAX_KEYS { Err(format!("more than {MAX_KEYS} keys")) } else { parse_jwk(raw) };
            match parsed {
                Ok(k) => set.keys.push(k),
                Err(reason) => set.skipped.push(SkippedKey { index, kid, reason }),
            }
        }
        if set.keys.is_empty() {
            let why = match set.skipped.first() {
                Some(s) => format!(" (keys[{}]: {})", s.index, s.reason),
                None => String::new(),
            };
            return Err(JwksError(format!("no usable key in the JWKS{why}")));
        }
        Ok(set)
    }

    /// Usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that were skipped, with the reason.
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// Whether a key has exactly this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Checks the token's signature. Keys are selected by `kid` (a key without `kid` is a
    /// candidate for any token, as in Envoy) and must fit the token's `alg`.
    pub fn verify(&self, token: &ParsedToken<'_>) -> Result<(), JwtReason> {
        let by_kid = |k: &&Jwk| match (&token.kid, &k.kid) {
            (Some(t), Some(k)) => t == k,
            _ => true,
        };
        let mut tried = 0;
        for key in self.keys.iter().filter(by_kid).filter(|k| fits(token.alg, k.alg, &k.material)) {
            if tried == MAX_KEYS_TRIED {
                break;
            }
            tried += 1;
            if verify_with(token.alg, &key.material, token.signing_input.as_bytes(), &token.signature) {
                return Ok(());
            }
        }
        if tried > 0 {
            return Err(JwtReason::BadSignature);
        }
        match &token.kid {
            Some(kid) if !self.has_kid(kid) => Err(JwtReason::UnknownKid),
            _ => Err(JwtReason::AlgNotAllowed),
        }
    }
}

/// Whether a key (`material`, with the JWK's own `jwk_alg`) may verify a token signed with `alg`.
fn fits(alg: Alg, jwk_alg: Option<Alg>, material: &KeyMaterial) -> bool {
    if jwk_alg.is_some_and(|a| a != alg) {
        return false;
    }
    use Alg::*;
    match (material, alg) {
        (KeyMaterial::Oct(k), HS256) => k.len() >= 32,
        (KeyMaterial::Oct(k), HS384) => k.len() >= 48,
        (KeyMaterial::Oct(k), HS512) => k.len() >= 64,
        (KeyMaterial::Rsa(_), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => true,
        (KeyMaterial::P256(_), ES256) | (KeyMaterial::P384(_), ES384) | (KeyMaterial::P521(_), ES512) => true,
        (KeyMaterial::Ed25519(_), EdDSA) => true,
        _ => false,
    }
}

fn hmac_ok<M: Mac + KeyInit>(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            // Constant-time comparison.
            m.verify_slice(sig).is_ok()
        }
        Err(_) => false,
    }
}

fn verify_with(alg: Alg, key: &KeyMaterial, msg: &[u8], sig: &[u8]) -> bool {
    use Alg::*;
    match (key, alg) {
        (KeyMaterial::Oct(k), HS256) => hmac_ok::<Hmac<Sha256>>(k, msg, sig),
        (KeyMaterial::Oct(k), HS384) => hmac_ok::<Hmac<Sha384>>(k, msg, sig),
        (KeyMaterial::Oct(k), HS512) => hmac_ok::<Hmac<Sha512>>(k, msg, sig),
        (KeyMaterial::Rsa(k), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => k.verify(alg, msg, sig),
        // JWS ECDSA signatures are the fixed-size R || S (RFC 7518 §3.4), never DER.
        (KeyMaterial::P256(k), ES256) => k.verify(msg, sig),
        (KeyMaterial::P384(k), ES384) => p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok()),
        (KeyMaterial::P521(k), ES512) => p521::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok()),
        (KeyMaterial::Ed25519(k), EdDSA) => ed25519_compact::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok()),
        _ => false,
    }
}

fn parse_jwk(raw: &Value) -> Result<Jwk, String> {
    let Value::Object(obj) = raw else {
        return Err("not a JSON object".into());
    };
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("\"kid\" is not a string".into()),
    };
    if let Some(u) = obj.get("use") {
        if u.as_str() != Some("sig") {
            return Err(format!("\"use\" is {u}, not \"sig\""));
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let verify = ops.as_array().is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(Alg::parse(a).ok_or_else(|| format!("unsupported \"alg\" {a:?}"))?),
        Some(_) => return Err("\"alg\" is not a string".into()),
    };
    let kty = str_field(obj, "kty")?;
    let material = match kty {
        "oct" => {
            let k = bytes_field(obj, "k")?;
            if k.len() < MIN_HMAC_KEY_BYTES {
                return Err(format!("oct key of {} bytes is shorter than {MIN_HMAC_KEY_BYTES}", k.len()));
            }
            KeyMaterial::Oct(k)
        }
        "RSA" => {
            let n = bytes_field(obj, "n")?;
            let e = bytes_field(obj, "e")?;
            KeyMaterial::Rsa(Box::new(RsaKey::new(&n, &e)?))
        }
        "EC" => {
            let crv = str_field(obj, "crv")?;
            let len = match crv {
                "P-256" => 32,
                "P-384" => 48,
                "P-521" => 66,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let (x, y) = (bytes_field(obj, "x")?, bytes_field(obj, "y")?);
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates must be {len} bytes each"));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * len);
            sec1.push(4);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let bad = |_| format!("{crv} point is not on the curve");
            match crv {
                "P-256" => KeyMaterial::P256(std::sync::Arc::new(
                    super::es256::Es256Key::from_coordinates(&x, &y).ok_or_else(|| format!("{crv} point is not on the curve"))?,
                )),
                "P-384" => KeyMaterial::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(bad)?),
                _ => KeyMaterial::P521(Box::new(p521::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(bad)?)),
            }
        }
        "OKP" => {
            let crv = str_field(obj, "crv")?;
            if crv != "Ed25519" {
                return Err(format!("unsupported OKP curve {crv:?}"));
            }
            let x = bytes_field(obj, "x")?;
            KeyMaterial::Ed25519(ed25519_compact::PublicKey::from_slice(&x).map_err(|_| "Ed25519 \"x\" must be 32 bytes".to_string())?)
        }
        other => return Err(format!("unsupported \"kty\" {other:?}")),
    };
    if let Some(a) = alg {
        if !fits(a, None, &material) {
            return Err(format!("\"alg\" {} does not fit a {} key", a.as_str(), material.kind()));
        }
    }
    Ok(Jwk { kid, alg, material })
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{name:?} is not a string")),
        None => Err(format!("missing {name:?}")),
    }
}

fn bytes_field(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = str_field(obj, name)?;
    // Some key servers pad their base64url; tolerate it in key sets (not in tokens).
    b64::decode(s.trim_end_matches('=').as_bytes()).ok_or_else(|| format!("{name:?} is not base64url"))
}
