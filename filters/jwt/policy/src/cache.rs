//! The verified-token cache: a repeated token skips signature verification.
//!
//! ```ignore
//! let mut cache = TokenCache::new(1024);     // one per worker and compiled policy
//! policy.decide(&facts, now, &keys, Some(&mut cache));
//! ```
//! - Keyed by (provider, token): a 64-bit keyed hash of the token's length and end (foldhash's quality variant,
//!   seeded from std's `RandomState`: the OS's randomness, WASI `random_get` in a VM) finds the entry, and the entry's stored token text must equal
//!   the request's byte for byte, so a hash collision is a miss, never a wrong hit; the random
//!   seed keeps a client from aiming tokens at one bucket. (SHA-256 of the token did the same job
//!   at ~20,000 instructions per lookup for a 400-byte token, SipHash-1-3 at ~900, foldhash at
//!   a fraction of that.) Only tokens that verified are ever stored, so a client cannot fill it with
//!   junk; a token is stored once, so memory is bounded by `capacity × max_token_bytes`.
//! - Bounded by count; when full, the oldest entry goes (first in, first out). Every operation
//!   is O(1) (amortised).
//! - Never serves a token at or past its `exp` plus skew. The claim checks ran when the token
//!   was stored; a hit at a time not earlier than that skips them: the ones that depend on the
//!   time (`exp` is the entry's end; `nbf`/`iat` with skew, `max_lifetime` of a token without
//!   `iat`) only get easier to pass as time goes on, and the rest depend on the token alone. If
//!   the clock went backwards, a hit re-runs them.
//! - Cleared when the key sets change ([`super::KeyLookup::generation`] differs), so a key
//!   removed from a JWKS stops validating its tokens at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// The hash's shared random seed, drawn once per process from std's `RandomState` (foldhash's
/// own global seed mixes addresses and the time: no randomness in a Wasm VM).
static SHARED_SEED: OnceLock<foldhash::SharedSeed> = OnceLock::new();

thread_local! {
    /// The hash's random keys, once per thread (a Wasm VM is one thread; natively, a worker).
    static SEED: foldhash::quality::SeedableRandomState = {
        let random = RandomState::new();
        let shared = SHARED_SEED.get_or_init(|| foldhash::SharedSeed::from_u64(random.hash_one(1u64)));
        foldhash::quality::SeedableRandomState::with_seed(random.hash_one(2u64), shared)
    };
}

/// The cache key: the provider index and a keyed 64-bit hash of the token. Equal keys do not
/// prove equal tokens: the entry keeps the token text, compared on every hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    provider: usize,
    hash: u64,
}

/// How much of a token's end the key hashes (with its length): the last 48 characters hold at
/// least 256 bits of its signature (the shortest, HS256's, is 43 characters), which differ
/// between any two different tokens that verified, so hashing the
/// rest (a warm token's header and claims, most of its bytes) buys nothing. A client can make
/// its tokens share an end, but equal keys share one entry (no chain to lengthen), whose text
/// must still match, and only tokens that verified are stored: a miss, never a wrong hit.
const HASHED_TAIL: usize = 48;

impl CacheKey {
    pub fn new(provider: usize, token: &str) -> Self {
        let tail = token.get(token.len().saturating_sub(HASHED_TAIL)..).unwrap_or(token);
        Self { provider, hash: SEED.with(|s| s.hash_one((token.len(), tail))) }
    }
}

/// The key is already a keyed hash: use it as is, no second hashing.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_usize(&mut self, n: usize) {
        self.0 ^= (n as u64).rotate_left(32);
    }
}

/// A token that passed verification: its claims.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The token text: a hit needs the same bytes, not only the same hash.
    text: Box<str>,
    token: Arc<VerifiedToken>,
    /// First second at which the entry must not be served (`exp + skew`), if the token expires.
    stale_at: Option<i64>,
    /// When the claim checks passed (they still hold at any later time before `stale_at`).
    checked_at: i64,
}

/// Byte equality. Natively the C library's `memcmp` (vector instructions).
#[cfg(not(target_family = "wasm"))]
fn same_text(a: &str, b: &str) -> bool {
    a == b
}

/// Byte equality, in a Wasm VM: see [`same_words`].
#[cfg(target_family = "wasm")]
fn same_text(a: &str, b: &str) -> bool {
    same_words(a, b)
}

/// Byte equality, 8 bytes a step: a token is hundreds of bytes, and in a Wasm VM the generic
/// `memcmp` goes a byte at a time.
#[cfg_attr(not(any(test, target_family = "wasm")), allow(dead_code))]
fn same_words(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = ca.remainder() == cb.remainder();
    let word = |c: &[u8]| <[u8; 8]>::try_from(c).map(u64::from_ne_bytes).unwrap_or(0);
    tails_equal && ca.zip(cb).all(|(x, y)| word(x) == word(y))
}

/// A cache hit: the token, and whether its claim checks are known to hold now.
pub(crate) struct Hit {
    pub token: Arc<VerifiedToken>,
    pub claims_hold: bool,
}

/// Bounded cache of verified tokens.
#[derive(Debug, Clone)]
pub struct TokenCache {
    capacity: usize,
    generation: u64,
    map: HashMap<CacheKey, Entry, BuildHasherDefault<KeyHasher>>,
    /// Insertion order; may hold keys already removed (skipped on eviction).
    order: VecDeque<CacheKey>,
    hits: u64,
    misses: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0: caches nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            generation: 0,
            map: HashMap::with_capacity_and_hasher(capacity.min(4096), BuildHasherDefault::default()),
            order: VecDeque::with_capacity(capacity.min(4096)),
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Lookups that found a servable token, and those that did not.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Clears the cache if the key sets changed since the last call.
    pub fn sync_generation(&mut self, generation: u64) {
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
    }

    pub(crate) fn get(&mut self, key: &CacheKey, text: &str, now: i64) -> Option<Hit> {
        let found = match self.map.get(key) {
            Some(e) if !same_text(&e.text, text) => None,
            Some(e) if e.stale_at.is_none_or(|s| now < s) => Some(Hit { token: Arc::clone(&e.token), claims_hold: now >= e.checked_at }),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        };
        if found.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        found
    }

    pub(crate) fn insert(&mut self, key: CacheKey, text: &str, token: Arc<VerifiedToken>, stale_at: Option<i64>, checked_at: i64) {
        if self.capacity == 0 {
            return;
        }
        while self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        if self.map.insert(key, Entry { text: text.into(), token, stale_at, checked_at }).is_none() {
            self.order.push_back(key);
        }
        // Keys removed on expiry stay in `order`; compact before it grows past twice the capacity.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(n: u64) -> Arc<VerifiedToken> {
        let mut claims = Map::new();
        claims.insert("n".into(), n.into());
        Arc::new(VerifiedToken { claims })
    }

    #[test]
    fn bounded_oldest_goes_first() {
        let mut c = TokenCache::new(3);
        for i in 0..5 {
            c.insert(CacheKey::new(0, &format!("t{i}")), &format!("t{i}"), tok(i), None, 0);
            assert!(c.len() <= 3);
        }
        assert!(c.get(&CacheKey::new(0, "t0"), "t0", 0).is_none());
        assert!(c.get(&CacheKey::new(0, "t1"), "t1", 0).is_none());
        assert_eq!(c.get(&CacheKey::new(0, "t4"), "t4", 0).unwrap().token.claims["n"], 4);
        assert_eq!(c.stats(), (1, 2));
    }

    #[test]
    fn never_serves_past_exp_and_keys_differ_per_provider() {
        let mut c = TokenCache::new(10);
        c.insert(CacheKey::new(0, "t"), "t", tok(1), Some(100), 0);
        assert!(c.get(&CacheKey::new(0, "t"), "t", 99).is_some_and(|h| h.claims_hold));
        assert!(c.get(&CacheKey::new(1, "t"), "t", 99).is_none(), "another provider");
        assert!(c.get(&CacheKey::new(0, "t"), "t", 100).is_none());
        assert!(c.is_empty(), "the stale entry is dropped");
    }

    #[test]
    fn a_hash_collision_is_a_miss_never_another_token() {
        let mut c = TokenCache::new(10);
        let key = CacheKey::new(0, "good");
        c.insert(key, "good", tok(1), None, 0);
        // The same key (as a colliding token would have) with other text: a miss.
        assert!(c.get(&key, "forged", 0).is_none());
        assert_eq!(c.get(&key, "good", 0).unwrap().token.claims["n"], 1);
        assert_eq!(CacheKey::new(0, "good"), key, "stable within a VM");
    }

    #[test]
    fn a_token_forged_onto_a_cached_tokens_end_is_a_miss() {
        // Same length, same last 48 characters (so the same key), another header and claims.
        let tail = "S".repeat(HASHED_TAIL);
        let (good, forged) =
            (format!("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.{tail}"), format!("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiIn0.{tail}"));
        let key = CacheKey::new(0, &good);
        assert_eq!(CacheKey::new(0, &forged), key);
        let mut c = TokenCache::new(10);
        c.insert(key, &good, tok(1), None, 0);
        assert!(c.get(&key, &forged, 0).is_none());
        assert!(c.get(&key, &good, 0).is_some());
        // A different length or end is another key (with overwhelming probability).
        assert_ne!(CacheKey::new(0, &format!("{good}x")), key);
        assert_ne!(CacheKey::new(0, &good.replace("SSSS", "SSST")), key);
    }

    #[test]
    fn generation_change_clears() {
        let mut c = TokenCache::new(10);
        c.sync_generation(1);
        c.insert(CacheKey::new(0, "t"), "t", tok(1), None, 0);
        c.sync_generation(1);
        assert_eq!(c.len(), 1);
        c.sync_generation(2);
        assert!(c.is_empty());
    }

    #[test]
    fn order_queue_stays_bounded_under_churn() {
        let mut c = TokenCache::new(4);
        for i in 0..1000 {
            let k = CacheKey::new(0, &format!("t{i}"));
            c.insert(k, "t", tok(i), Some(i as i64 + 1), 0);
            assert!(c.get(&k, "t", i as i64 + 1).is_none());
            assert!(c.order.len() <= 8);
        }
        let mut z = TokenCache::new(0);
        z.insert(CacheKey::new(0, "t"), "t", tok(0), None, 0);
        assert!(z.is_empty());
    }

    #[test]
    fn claims_hold_from_the_time_they_were_checked() {
        let mut c = TokenCache::new(4);
        c.insert(CacheKey::new(0, "t"), "t", tok(1), Some(500), 100);
        assert!(c.get(&CacheKey::new(0, "t"), "t", 100).is_some_and(|h| h.claims_hold));
        assert!(c.get(&CacheKey::new(0, "t"), "t", 499).is_some_and(|h| h.claims_hold));
        // The clock went backwards: still a hit (the signature was verified), but the claim
        // checks must run again.
        assert!(c.get(&CacheKey::new(0, "t"), "t", 99).is_some_and(|h| !h.claims_hold));
        assert!(c.get(&CacheKey::new(0, "t"), "t", 500).is_none());
    }

    #[test]
    fn same_text_is_byte_equality() {
        for same in [same_text, same_words] {
            for len in 0..40usize {
                let a: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
                assert!(same(&a, &a.clone()));
                for at in 0..len {
                    let mut b = a.clone().into_bytes();
                    b[at] = b'Z';
                    assert!(!same(&a, std::str::from_utf8(&b).unwrap()), "len {len}, at {at}");
                }
                assert!(!same(&a, &format!("{a}x")));
            }
        }
    }
}
