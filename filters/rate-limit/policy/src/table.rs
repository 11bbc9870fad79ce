//! The bounded key table, as pure logic over slot contents.
//!
//! **Shape.** `max_keys` slots (rounded down to a multiple of [`WAYS`], at least one set),
//! grouped in sets of 8: a key's fingerprint picks one set (`fingerprint mod sets`) and the key
//! may live in any of its 8 slots (ways). Memory is fixed by construction: `max_keys` slots of
//! [`Slot::BYTES`] each (65,536 × 96 bytes = 6 MiB by default, in 8,192 sets), whatever the
//! number of distinct keys seen.
//!
//! **Replacement.** A key already in its set uses its slot. A new key takes, in order:
//! 1. an empty slot;
//! 2. else a slot whose bucket is *fully refilled*: every state word (TAT) at or before `now`
//!    and not limited; replacing it loses nothing, since its key would find a full bucket anyway;
//! 3. else the slot whose bucket is the fullest: the smallest `limited_until` (the time from
//!    which a one-unit request is admitted by every limit of that slot; see
//!    [`crate::gcra::limited_from`]), **only if** that time is not after `now`;
//! 4. else nothing: every slot of the set holds a currently limited bucket, the key is not
//!    tracked ([`Choice::Full`]) and the policy's `failure_mode` decides.
//!
//! Step 2 matters when a set holds buckets of different limits: `limited_until` is
//! `tat − (burst − 1) × T`, so a partly drained bucket of a large burst can sort before a full
//! bucket of a small one. Within one limit the fullest bucket is the one with the smallest TAT,
//! and full buckets already sort first.
//!
//! So a flood of new keys can only push out buckets that would admit a request anyway, full
//! ones first; a limited (exhausted) bucket is never replaced until it has refilled enough to
//! admit again. A client who wants its partly drained bucket replaced must first fill the 7
//! other slots of its set with buckets drained further than its own, which costs more than the
//! refill it could gain.
//!
//! **Accuracy when a set overflows.** While at most 8 keys of a set are active (within their
//! limits' periods) every key is tracked exactly. When more are active, a new key replaces a
//! partly drained bucket (step 3) and the replaced key starts over with a full bucket when it
//! comes back: it regains what it had spent. Keys that take turns in such a set, each asking
//! before its bucket is exhausted, are never limited (measured by the wasm-host example
//! `rate_limit_cycle`, 5 per day per key, keys cycling: 10,000 keys in 8,192 sets, exact after 40
//! passes, no set overflowed; 60,000 keys, 44 % of the keys over-admitted, 1.44 × the configured
//! total after 10 passes, with 4 ways it was 1.50 ×). A key that exhausts its bucket before the
//! set's other keys come back is held (step 4). Size `max_keys` for the keys active within one
//! period of the longest limit: at 10,000 keys in 65,536 slots (1.2 keys per set on average) an
//! overflowing set (9 or more keys) is a Poisson tail of about 4 × 10⁻⁶ per set.
//!
//! **Live updates.** Each state word is stored with its limit's *tag*, a 16-bit hash of the
//! limit's definition (name, rate, period, burst; never 0). [`charge`] finds each limit's word by
//! tag, wherever it sits in the slot: a policy update that keeps a limit's definition keeps its
//! state (even when other limits of the rule are added, removed, reordered or changed); a limit
//! whose definition changed starts full. (A changed definition has a 1 in 65,535 chance of a tag
//! collision and then keeps its old word: never more than its new `burst` at once, since the
//! GCRA check bounds any state by the new tolerance.) The key itself (the fingerprint: rule
//! name and key parts) is unchanged by an update that keeps the rule's name and key.
//!
//! The glue stores each set as one shared-data entry ([`encode_set`]: its 8 slots concatenated,
//! empty ones included) and updates it with compare-and-swap: read the set, [`update_set`],
//! write the set if its CAS token is unchanged, retry from the read otherwise.

use std::sync::Arc;

use crate::gcra::{self, AdmitAll, Limit};
use crate::policy::{Buckets, MAX_LIMITS_PER_RULE};

/// Slots per set.
pub const WAYS: usize = 8;

/// The state of one key: when its bucket stops being limited, and per limit of its rule a tag
/// (0: unused) and a GCRA state word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyState {
    pub limited_until: u64,
    pub tags: [u16; MAX_LIMITS_PER_RULE],
    pub states: [u64; MAX_LIMITS_PER_RULE],
}

/// One slot: the key's fingerprint (0 = empty) and its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub fingerprint: u64,
    pub state: KeyState,
}

impl Slot {
    /// Encoded size, little-endian: fingerprint and `limited_until` (u64), the tags (u16), the
    /// state words (u64).
    pub const BYTES: usize = 8 * 2 + 2 * MAX_LIMITS_PER_RULE + 8 * MAX_LIMITS_PER_RULE;

    pub fn is_empty(&self) -> bool {
        self.fingerprint == 0
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        let (head, rest) = out.split_at_mut(16);
        let (tags, words) = rest.split_at_mut(2 * MAX_LIMITS_PER_RULE);
        for (chunk, w) in head.chunks_exact_mut(8).zip([self.fingerprint, self.state.limited_until]) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        for (chunk, t) in tags.chunks_exact_mut(2).zip(self.state.tags) {
            chunk.copy_from_slice(&t.to_le_bytes());
        }
        for (chunk, w) in words.chunks_exact_mut(8).zip(self.state.states) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Decodes a stored slot; anything not exactly [`Self::BYTES`] long is an empty slot.
    pub fn decode(bytes: &[u8]) -> Slot {
        if bytes.len() != Self::BYTES {
            return Slot::default();
        }
        let (head, rest) = bytes.split_at(16);
        let (tags, words) = rest.split_at(2 * MAX_LIMITS_PER_RULE);
        let word = |c: &[u8]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        };
        let mut head = head.chunks_exact(8).map(word);
        let mut slot = Slot { fingerprint: head.next().unwrap_or(0), ..Slot::default() };
        slot.state.limited_until = head.next().unwrap_or(0);
        for (t, c) in slot.state.tags.iter_mut().zip(tags.chunks_exact(2)) {
            *t = u16::from_le_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]);
        }
        for (s, c) in slot.state.states.iter_mut().zip(words.chunks_exact(8)) {
            *s = word(c);
        }
        slot
    }
}

/// A limit's tag: a 16-bit hash (FNV-1a) of its definition, never 0.
pub fn limit_tag(name: &str, limit: &Limit) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    let bytes = name.bytes().chain([0xff]).chain([limit.rate, limit.period_seconds, limit.burst].into_iter().flat_map(u64::to_le_bytes));
    for b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    ((h ^ (h >> 16)) % 0xffff) as u16 + 1
}

/// Checks and charges the request's `cost` on `limits` for the key `fingerprint` in `buckets`
/// (deny-if-any, [`gcra::admit_all`]), each limit's state found by its tag (see the module
/// docs). The answer's `states` are in `limits` order.
pub fn charge(
    buckets: &mut dyn Buckets,
    fingerprint: u64,
    now: u64,
    limits: &[(Arc<str>, Limit)],
    cost: u64,
) -> Result<AdmitAll, TableFull> {
    let tags: Vec<u16> = limits.iter().map(|(name, l)| limit_tag(name, l)).collect();
    let plain: Vec<Limit> = limits.iter().map(|(_, l)| *l).collect();
    let mut result = None;
    buckets.update(fingerprint, now, &mut |current| {
        let states: Vec<u64> = tags
            .iter()
            .map(|t| current.tags.iter().position(|c| c == t).and_then(|j| current.states.get(j).copied()).unwrap_or(0))
            .collect();
        let r = gcra::admit_all(&states, now, &plain, cost);
        let write = r.admitted().then(|| {
            let mut next = KeyState::default();
            for ((slot_tag, slot_state), (tag, state)) in next.tags.iter_mut().zip(next.states.iter_mut()).zip(tags.iter().zip(&r.states)) {
                (*slot_tag, *slot_state) = (*tag, *state);
            }
            next.limited_until = r.states.iter().zip(&plain).map(|(s, l)| gcra::limited_from(*s, l)).max().unwrap_or(0);
            next
        });
        result = Some(r);
        write
    })?;
    result.ok_or(TableFull)
}

/// The table's shape: `sets` sets of [`WAYS`] slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    sets: usize,
}

impl TableShape {
    /// A table of `max_keys` slots, rounded down to a multiple of [`WAYS`] (at least one set).
    pub fn new(max_keys: u32) -> Self {
        Self { sets: (max_keys as usize / WAYS).max(1) }
    }

    /// The number of sets.
    pub fn sets(&self) -> usize {
        self.sets
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.sets * WAYS
    }

    /// The set a key lives in (`fingerprint mod sets`).
    pub fn set_of(&self, fingerprint: u64) -> usize {
        (fingerprint % self.sets as u64) as usize
    }
}

/// One set's slots, as stored.
pub type Set = [Slot; WAYS];

/// Encoded size of a set: its [`WAYS`] slots concatenated, empty ones included.
pub const SET_BYTES: usize = WAYS * Slot::BYTES;

/// Encodes a set: its slots' [`Slot::encode`] in way order.
pub fn encode_set(set: &Set) -> Vec<u8> {
    let mut out = Vec::with_capacity(SET_BYTES);
    for slot in set {
        out.extend_from_slice(&slot.encode());
    }
    out
}

/// Decodes a stored set; anything not exactly [`SET_BYTES`] long (another module's format, a
/// stray value) is an empty set.
pub fn decode_set(bytes: &[u8]) -> Set {
    let mut set = [Slot::default(); WAYS];
    if bytes.len() == SET_BYTES {
        for (slot, chunk) in set.iter_mut().zip(bytes.chunks_exact(Slot::BYTES)) {
            *slot = Slot::decode(chunk);
        }
    }
    set
}

/// Where a key goes among its set's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The key is in way `i`.
    Hit(usize),
    /// The key is new and takes way `i` (empty, or its bucket is evicted).
    Take(usize),
    /// The key is new and every slot holds a currently limited bucket.
    Full,
}

/// Whether a slot's bucket is fully refilled at `now`: every state word (TAT) is at or before
/// `now`, so replacing it loses nothing (its key would start again with a full bucket anyway).
fn is_full_bucket(slot: &Slot, now: u64) -> bool {
    slot.state.limited_until <= now && slot.state.states.iter().all(|&s| s <= now)
}

/// Chooses the way of `fingerprint` in `set` (see the module docs for the order).
pub fn choose(set: &[Slot], fingerprint: u64, now: u64) -> Choice {
    if let Some(i) = set.iter().position(|s| s.fingerprint == fingerprint && !s.is_empty()) {
        return Choice::Hit(i);
    }
    if let Some(i) = set.iter().position(Slot::is_empty) {
        return Choice::Take(i);
    }
    if let Some(i) = set.iter().position(|s| is_full_bucket(s, now)) {
        return Choice::Take(i);
    }
    set.iter()
        .enumerate()
        .filter(|(_, s)| s.state.limited_until <= now)
        .min_by_key(|(_, s)| s.state.limited_until)
        .map_or(Choice::Full, |(i, _)| Choice::Take(i))
}

/// Runs one update of the key `fingerprint` on its `set` in place: [`choose`] a way, give `f`
/// the key's current state (all zeros for a new key), store what `f` returns. `Ok(true)` when
/// the set changed (the caller writes it back), `Ok(false)` when `f` stored nothing.
pub fn update_set(set: &mut Set, fingerprint: u64, now: u64, f: &mut dyn FnMut(&KeyState) -> Option<KeyState>) -> Result<bool, TableFull> {
    let (way, current) = match choose(set, fingerprint, now) {
        Choice::Hit(w) => (w, set.get(w).map(|s| s.state).unwrap_or_default()),
        Choice::Take(w) => (w, KeyState::default()),
        Choice::Full => return Err(TableFull),
    };
    let Some(state) = f(&current) else { return Ok(false) };
    match set.get_mut(way) {
        Some(slot) => {
            *slot = Slot { fingerprint, state };
            Ok(true)
        }
        None => Err(TableFull),
    }
}

/// The key could not be tracked: every candidate slot holds a limited bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// The key table in process memory: the reference for the glue's shared-data table, and what
/// the CLI's `eval` and the tests use. Its size is fixed at construction.
#[derive(Debug, Clone)]
pub struct MemoryTable {
    shape: TableShape,
    slots: Vec<Slot>,
}

impl MemoryTable {
    pub fn new(max_keys: u32) -> Self {
        let shape = TableShape::new(max_keys);
        Self { shape, slots: vec![Slot::default(); shape.slots()] }
    }

    pub fn shape(&self) -> TableShape {
        self.shape
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

impl Buckets for MemoryTable {
    fn update(&mut self, fingerprint: u64, now: u64, f: &mut dyn FnMut(&KeyState) -> Option<KeyState>) -> Result<(), TableFull> {
        let first = self.shape.set_of(fingerprint) * WAYS;
        let Some(stored) = self.slots.get_mut(first..first + WAYS) else { return Err(TableFull) };
        let mut set = [Slot::default(); WAYS];
        set.copy_from_slice(stored);
        if update_set(&mut set, fingerprint, now, f)? {
            stored.copy_from_slice(&set);
        }
        Ok(())
    }
}
