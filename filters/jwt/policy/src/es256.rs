//! ES256 (ECDSA over P-256 with SHA-256) verification with precomputed tables for both points.
//!
//! Why: a verification computes `u1·G + u2·Q`. The `p256` crate does it with a fresh wNAF table
//! per call and 256 point doublings, which are ~60 % of its time (callgrind, native); in a Wasm
//! VM the whole verification costs ~1.1 ms. Both points are fixed for a long time (G forever, Q
//! as long as the JWKS key), so we precompute, once per VM, the multiples
//! `k · 2^(7i) · P` (k = 1..=64, i = 0..37) of each and add one table entry per 7-bit signed digit
//! of each scalar: 74 mixed additions and no doublings. The field arithmetic is the `p256`
//! crate's; only the group-level algorithm is ours.
//!
//! Everything here is variable-time, which is sound for verification: the key, the signature and
//! the message are all public. Signature parsing (r and s in [1, n-1]), the digest reduction and
//! the final comparison follow the `ecdsa` crate's `verify_prehashed`; the tests check every
//! result against that crate on valid, tampered and random signatures and on the degenerate
//! cases (equal and opposite points in one addition).
//!
//! Memory: a table is 37 × 64 affine points of 64 bytes = 151 KB. The tables are built by
//! [`Es256Key::prepare`] when the glue loads a key set, else at the first verification: the
//! generator's once per VM, a key's for at most [`MAX_KEY_TABLES`] keys alive at once (more keys
//! verify without a table, through the crate). A key set loaded again (a JWKS refresh) finds the
//! tables of the keys it shares with the set it replaces and reuses them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use p256::elliptic_curve::bigint::U256;
use p256::elliptic_curve::ff::PrimeField;
use p256::elliptic_curve::hazmat::FieldArithmetic;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{NistP256, Scalar};
use sha2::{Digest, Sha256};

type Fe = <NistP256 as FieldArithmetic>::FieldElement;

/// Bits per signed digit.
const W: usize = 7;
/// Digits of a 256-bit scalar: ceil(257 / 7), one more bit for the last carry.
const WINDOWS: usize = 37;
/// Table entries per window: the multiples 1..=64 of the window's base (digits are in -64..=63).
const ENTRIES: usize = 1 << (W - 1);
/// Most key tables alive at once in this VM (151 KB each).
pub const MAX_KEY_TABLES: usize = 16;

/// The key tables alive in this VM, by the key's coordinates (x ‖ y), so that a JWKS refresh
/// that brings the same keys reuses their tables instead of building them again (~10–30 ms of a
/// worker's time per key in a Wasm VM).
static KEY_TABLES: OnceLock<Mutex<HashMap<[u8; 64], Weak<Table>>>> = OnceLock::new();

/// The table of the key at `point` (coordinates `xy`): the live one if any, else a new one if
/// fewer than [`MAX_KEY_TABLES`] are alive.
fn key_table(xy: &[u8; 64], point: &Affine) -> Option<Arc<Table>> {
    let registry = KEY_TABLES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut tables = registry.lock().ok()?;
    tables.retain(|_, t| t.strong_count() > 0);
    if let Some(live) = tables.get(xy).and_then(Weak::upgrade) {
        return Some(live);
    }
    if tables.len() >= MAX_KEY_TABLES {
        return None;
    }
    let table = Arc::new(Table::build(point)?);
    tables.insert(*xy, Arc::downgrade(&table));
    Some(table)
}

#[derive(Clone, Copy)]
struct Affine {
    x: Fe,
    y: Fe,
}

/// Jacobian coordinates: (X/Z², Y/Z³); the point at infinity has Z = 0.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Jacobian {
    const INFINITY: Self = Self { x: Fe::ONE, y: Fe::ONE, z: Fe::ZERO };

    fn from_affine(p: &Affine) -> Self {
        Self { x: p.x, y: p.y, z: Fe::ONE }
    }

    fn is_infinity(&self) -> bool {
        self.z.is_zero().into()
    }

    /// 2P for a = −3 (dbl-2001-b).
    fn double(&self) -> Self {
        if self.is_infinity() || bool::from(self.y.is_zero()) {
            return Self::INFINITY;
        }
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x * gamma;
        let t = (self.x - delta) * (self.x + delta);
        let alpha = t.double() + t;
        let beta4 = beta.double().double();
        let x = alpha.square() - beta4.double();
        let z = (self.y + self.z).square() - gamma - delta;
        let y = alpha * (beta4 - x) - gamma.square().double().double().double();
        Self { x, y, z }
    }

    /// P + Q for an affine Q (madd-2007-bl), with the cases the formula does not cover: P at
    /// infinity, P = Q (doubling) and P = −Q (infinity).
    fn add_affine(&self, q: &Affine) -> Self {
        if self.is_infinity() {
            return Self::from_affine(q);
        }
        let z1z1 = self.z.square();
        let u2 = q.x * z1z1;
        let s2 = q.y * self.z * z1z1;
        let h = u2 - self.x;
        let r = (s2 - self.y).double();
        if bool::from(h.is_zero()) {
            return if bool::from(r.is_zero()) { self.double() } else { Self::INFINITY };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h * i;
        let v = self.x * i;
        let x = r.square() - j - v.double();
        let y = r * (v - x) - (self.y * j).double();
        let z = (self.z + h).square() - z1z1 - hh;
        Self { x, y, z }
    }
}

/// Affine forms of finite points, with one field inversion for all of them. None if any point
/// is at infinity (never the case for the tables: their points are k·B with 0 < k < n).
fn normalize(points: &[Jacobian]) -> Option<Vec<Affine>> {
    let mut prefix = Vec::with_capacity(points.len());
    let mut acc = Fe::ONE;
    for p in points {
        acc *= p.z;
        prefix.push(acc);
    }
    let mut inv = Option::<Fe>::from(acc.invert())?;
    // Backwards: the inverse of z_i is inv(z_0·…·z_i) · (z_0·…·z_{i−1}).
    let before = prefix.iter().rev().skip(1).map(Some).chain(std::iter::once(None));
    let mut out = Vec::with_capacity(points.len());
    for (p, before) in points.iter().rev().zip(before) {
        let zinv = before.map_or(inv, |b| inv * b);
        inv *= p.z;
        let zinv2 = zinv.square();
        out.push(Affine { x: p.x * zinv2, y: p.y * zinv2 * zinv });
    }
    out.reverse();
    Some(out)
}

/// The multiples `k · 2^(7i) · P` for k = 1..=64, i = 0..37, at index `64·i + k − 1`.
struct Table(Box<[Affine]>);

impl Table {
    fn build(p: &Affine) -> Option<Self> {
        let mut bases = Vec::with_capacity(WINDOWS);
        let mut b = Jacobian::from_affine(p);
        for _ in 0..WINDOWS {
            bases.push(b);
            for _ in 0..W {
                b = b.double();
            }
        }
        let bases = normalize(&bases)?;
        let mut multiples = Vec::with_capacity(WINDOWS * ENTRIES);
        for base in &bases {
            let mut acc = Jacobian::from_affine(base);
            multiples.push(acc);
            for _ in 1..ENTRIES {
                acc = acc.add_affine(base);
                multiples.push(acc);
            }
        }
        Some(Self(normalize(&multiples)?.into_boxed_slice()))
    }

    /// acc + digit · 2^(7·window) · P.
    fn add_digit(&self, acc: &Jacobian, window: usize, digit: i8) -> Jacobian {
        let k = usize::from(digit.unsigned_abs());
        if k == 0 {
            return *acc;
        }
        let Some(entry) = self.0.get(window * ENTRIES + k - 1) else {
            return *acc; // unreachable: digits are within −64..=63 and windows < 37
        };
        if digit > 0 {
            acc.add_affine(entry)
        } else {
            acc.add_affine(&Affine { x: entry.x, y: -entry.y })
        }
    }
}

/// The signed base-2^7 digits of a 256-bit big-endian scalar, least significant first, each in
/// −64..=63: Σ dᵢ·2^(7i) equals the scalar.
fn recode(be: &[u8; 32]) -> [i8; WINDOWS] {
    let bit = |i: usize| -> u16 { 31usize.checked_sub(i / 8).and_then(|byte| be.get(byte)).map_or(0, |b| u16::from((b >> (i % 8)) & 1)) };
    let mut digits = [0i8; WINDOWS];
    let mut carry = 0u16;
    for (w, digit) in digits.iter_mut().enumerate() {
        let mut v = carry;
        for k in 0..W {
            v += bit(w * W + k) << k;
        }
        // v is in 0..=128; the top window holds 4 bits, so the last carry is always 0.
        let (d, c) = if v >= 64 { (i16::try_from(v).unwrap_or(0) - 128, 1) } else { (i16::try_from(v).unwrap_or(0), 0) };
        *digit = i8::try_from(d).unwrap_or(0);
        carry = c;
    }
    digits
}

fn generator_table() -> Option<&'static Table> {
    static G: OnceLock<Option<Table>> = OnceLock::new();
    G.get_or_init(|| {
        let g = p256::AffinePoint::GENERATOR.to_sec1_point(false);
        let coord = |bytes: Option<&p256::FieldBytes>| bytes.and_then(|b| Option::<Fe>::from(Fe::from_repr(*b)));
        Table::build(&Affine { x: coord(g.x())?, y: coord(g.y())? })
    })
    .as_ref()
}

/// A P-256 public key for ES256, with its table built at first use.
pub struct Es256Key {
    key: p256::ecdsa::VerifyingKey,
    point: Affine,
    /// x ‖ y, big-endian.
    xy: [u8; 64],
    table: OnceLock<Option<Arc<Table>>>,
}

impl Es256Key {
    /// The key with uncompressed SEC1 coordinates `x` and `y` (32 bytes each); None if the
    /// point is not on the curve.
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Option<Self> {
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(4);
        sec1.extend_from_slice(x);
        sec1.extend_from_slice(y);
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?;
        let fe = |b: &[u8]| -> Option<Fe> {
            let bytes: [u8; 32] = b.try_into().ok()?;
            Option::from(Fe::from_repr(bytes.into()))
        };
        let mut xy = [0u8; 64];
        let (xa, ya) = xy.split_at_mut(32);
        xa.copy_from_slice(x.get(..32)?);
        ya.copy_from_slice(y.get(..32)?);
        Some(Self { key, point: Affine { x: fe(x)?, y: fe(y)? }, xy, table: OnceLock::new() })
    }

    fn table(&self) -> Option<&Table> {
        self.table.get_or_init(|| key_table(&self.xy, &self.point)).as_deref()
    }

    /// Builds the tables now (the generator's and this key's, within [`MAX_KEY_TABLES`]).
    pub fn prepare(&self) {
        let _ = (generator_table(), self.table());
    }

    /// Whether `sig` (JWS form: r ‖ s, 32 bytes each) is a valid ES256 signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.verify_digest(&Sha256::digest(msg).into(), sig)
    }

    /// The same for a SHA-256 digest.
    pub fn verify_digest(&self, digest: &[u8; 32], sig: &[u8]) -> bool {
        let Ok(signature) = p256::ecdsa::Signature::from_slice(sig) else {
            return false;
        };
        let (Some(g), Some(q)) = (generator_table(), self.table()) else {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            return self.key.verify_prehash(digest, &signature).is_ok();
        };
        let (r, s) = signature.split_scalars();
        let z = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(digest));
        let Some(s_inv) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false; // unreachable: s is non-zero
        };
        let u1: [u8; 32] = (z * s_inv).to_repr().into();
        let u2: [u8; 32] = (*r * s_inv).to_repr().into();
        let (d1, d2) = (recode(&u1), recode(&u2));
        let mut acc = Jacobian::INFINITY;
        for (w, (a, b)) in d1.iter().zip(&d2).enumerate() {
            acc = g.add_digit(&acc, w, *a);
            acc = q.add_digit(&acc, w, *b);
        }
        if acc.is_infinity() {
            return false;
        }
        let Some(zinv) = Option::<Fe>::from(acc.z.invert()) else {
            return false;
        };
        let x: [u8; 32] = (acc.x * zinv.square()).to_repr().into();
        <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&x)) == *r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};
    use p256::elliptic_curve::sec1::ToSec1Point;
    use p256::ProjectivePoint;

    fn signing_key(seed: u64) -> SigningKey {
        let bytes: [u8; 32] = Sha256::digest(seed.to_be_bytes()).into();
        SigningKey::from_slice(&bytes).unwrap()
    }

    fn key_of(sk: &SigningKey) -> Es256Key {
        let p = sk.verifying_key().to_sec1_point(false);
        Es256Key::from_coordinates(p.x().unwrap(), p.y().unwrap()).unwrap()
    }

    fn crate_verdict(sk: &SigningKey, digest: &[u8; 32], sig: &[u8]) -> bool {
        Signature::from_slice(sig).is_ok_and(|s| sk.verifying_key().verify_prehash(digest, &s).is_ok())
    }

    /// Deterministic pseudo-random bytes (tests need no RNG).
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(&Sha256::digest([seed.to_be_bytes(), i.to_be_bytes()].concat()));
            i += 1;
        }
        out.truncate(n);
        out
    }

    #[test]
    fn recoding_sums_to_the_scalar() {
        for seed in 0..200u64 {
            let mut be: [u8; 32] = bytes(seed, 32).try_into().unwrap();
            if seed == 0 {
                be = [0xff; 32];
            }
            if seed == 1 {
                be = [0; 32];
            }
            let digits = recode(&be);
            assert!(digits.iter().all(|d| (-64..=63).contains(d)));
            // Σ dᵢ·2^(7i) as a big integer, little-endian i32 limbs of 7 bits each: compare by
            // re-encoding through the crate's scalar arithmetic (mod n is fine for < 2^256).
            let mut acc = Scalar::ZERO;
            let mut pow = Scalar::ONE;
            let two7 = Scalar::from(128u64);
            for d in digits {
                let term = Scalar::from(u64::from(d.unsigned_abs())) * pow;
                acc = if d < 0 { acc - term } else { acc + term };
                pow *= two7;
            }
            let expected = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&be));
            assert_eq!(acc, expected, "seed {seed}");
        }
    }

    #[test]
    fn table_entries_are_the_multiples() {
        let sk = signing_key(7);
        let key = key_of(&sk);
        let table = key.table().expect("table");
        let q = ProjectivePoint::from(*sk.verifying_key().as_affine());
        for (window, k) in [(0usize, 1u64), (0, 2), (0, 64), (1, 1), (5, 33), (36, 64), (20, 17)] {
            let mut scalar = Scalar::from(k);
            for _ in 0..7 * window {
                scalar = scalar.double();
            }
            let expected = (q * scalar).to_affine().to_sec1_point(false);
            let entry = &table.0[window * ENTRIES + k as usize - 1];
            assert_eq!(entry.x.to_repr().as_slice(), expected.x().unwrap().as_slice());
            assert_eq!(entry.y.to_repr().as_slice(), expected.y().unwrap().as_slice());
        }
    }

    #[test]
    fn agrees_with_the_ecdsa_crate_on_valid_tampered_and_random_signatures() {
        for seed in 0..60u64 {
            let sk = signing_key(seed);
            let key = key_of(&sk);
            let msg = bytes(seed + 1000, 50 + seed as usize);
            let sig: Signature = sk.sign(&msg);
            let sig = sig.to_bytes();
            assert!(key.verify(&msg, &sig), "valid signature refused, seed {seed}");
            let digest: [u8; 32] = Sha256::digest(&msg).into();
            // Tampered message, r, s; random r ‖ s; another key's signature.
            let mut other_msg = msg.clone();
            other_msg[0] ^= 1;
            let mut bad_r = sig.to_vec();
            bad_r[5] ^= 0x40;
            let mut bad_s = sig.to_vec();
            bad_s[40] ^= 0x01;
            let random = bytes(seed + 5000, 64);
            let other: Signature = signing_key(seed + 1).sign(&msg);
            for (what, d, s) in [
                ("msg", Sha256::digest(&other_msg).into(), sig.to_vec()),
                ("r", digest, bad_r),
                ("s", digest, bad_s),
                ("random", digest, random),
                ("other key", digest, other.to_bytes().to_vec()),
                ("zero", digest, vec![0; 64]),
                ("short", digest, sig[..63].to_vec()),
                ("n", digest, [p256_order(), p256_order()].concat()),
            ] {
                assert_eq!(key.verify_digest(&d, &s), crate_verdict(&sk, &d, &s), "{what}, seed {seed}");
                assert!(!key.verify_digest(&d, &s), "{what} accepted, seed {seed}");
            }
        }
    }

    fn p256_order() -> Vec<u8> {
        hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A signature by private key `d` with nonce `k` on digest `z` (textbook ECDSA), for the
    /// degenerate cases a random signature never reaches.
    fn raw_sign(d: Scalar, k: Scalar, z: &[u8; 32]) -> Option<Vec<u8>> {
        let r_point = (ProjectivePoint::GENERATOR * k).to_affine().to_sec1_point(false);
        let r = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(r_point.x()?));
        let zs = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(z));
        let s = Option::<Scalar>::from(k.invert())? * (zs + r * d);
        Some([r.to_repr().to_vec(), s.to_repr().to_vec()].concat())
    }

    #[test]
    fn equal_and_opposite_points_in_one_addition() {
        // Key Q = G (d = 1) and a digest equal to r: u1 = u2, so every window adds the same
        // point twice (the doubling case of the addition).
        let one = Scalar::ONE;
        let g = ProjectivePoint::GENERATOR.to_affine().to_sec1_point(false);
        let key_g = Es256Key::from_coordinates(g.x().unwrap(), g.y().unwrap()).unwrap();
        assert!(key_g.table().is_some() && generator_table().is_some(), "the table path must be the one tested");
        for k in 1..20u64 {
            let k = Scalar::from(k * 7919);
            let r_point = (ProjectivePoint::GENERATOR * k).to_affine().to_sec1_point(false);
            let z: [u8; 32] = r_point.x().unwrap().as_slice().try_into().unwrap();
            let sig = raw_sign(one, k, &z).unwrap();
            let crate_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(g.as_bytes()).unwrap();
            let expected = crate_key.verify_prehash(&z, &Signature::from_slice(&sig).unwrap()).is_ok();
            assert!(expected);
            assert!(key_g.verify_digest(&z, &sig));
        }
        // Key Q = −G and digest = r: u1·G + u2·Q = O, every window adds a point and its
        // opposite; the verification must fail, as in the crate.
        let neg_g = (-ProjectivePoint::GENERATOR).to_affine().to_sec1_point(false);
        let key_neg = Es256Key::from_coordinates(neg_g.x().unwrap(), neg_g.y().unwrap()).unwrap();
        let crate_neg = p256::ecdsa::VerifyingKey::from_sec1_bytes(neg_g.as_bytes()).unwrap();
        for seed in 0..10u64 {
            let r = bytes(seed + 9000, 32);
            let s = bytes(seed + 9100, 32);
            let sig = [r.clone(), s].concat();
            let z: [u8; 32] = r.as_slice().try_into().unwrap();
            let expected = Signature::from_slice(&sig).is_ok_and(|x| crate_neg.verify_prehash(&z, &x).is_ok());
            assert_eq!(key_neg.verify_digest(&z, &sig), expected);
            assert!(!expected);
        }
    }

    #[test]
    fn without_a_table_the_crate_verifies() {
        let sk = signing_key(99);
        let key = key_of(&sk);
        key.table.set(None).ok();
        let sig: Signature = sk.sign(b"payload");
        assert!(key.verify(b"payload", &sig.to_bytes()));
        assert!(!key.verify(b"payloaD", &sig.to_bytes()));
    }

    #[test]
    fn a_reloaded_key_reuses_its_table() {
        let sk = signing_key(4242);
        let first = key_of(&sk);
        let again = key_of(&sk);
        let (a, b) = (first.table().expect("table") as *const Table, again.table().expect("table") as *const Table);
        assert_eq!(a, b, "same coordinates, same table");
        let other = key_of(&signing_key(4243));
        assert_ne!(a, other.table().expect("table") as *const Table);
        let sig: Signature = sk.sign(b"m");
        assert!(again.verify(b"m", &sig.to_bytes()));
    }
}
