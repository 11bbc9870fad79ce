//! The bounded key table, as pure logic over slot contents.
//!
//! **Shape.** `max_keys` slots (rounded down to a multiple of [`WAYS`]), grouped in sets of 4:
//! a key's fingerprint picks one set (`fingerprint mod sets`) and the key may live in any of
//! its 4 slots. Memory is fixed by construction: `max_keys` slots of [`Slot::BYTES`] each
//! (65,536 × 80 bytes = 5 MiB by default), whatever the number of distinct keys seen.
//!
//! **Replacement.** A key already in its set uses its slot. A new key takes, in order:
//! 1. an empty slot;
//! 2. else the slot whose bucket is the fullest: the smallest `limited_until` (the time from
//!    which a one-unit request is admitted by every limit of that slot; see
//!    [`crate::gcra::limited_from`]), **only if** that time is not after `now`;
//! 3. else nothing: every candidate holds a currently limited bucket, the key is not tracked
//!    ([`Choice::Full`]) and the policy's `failure_mode` decides.
//!
//! So a flood of new keys can only push out buckets that would admit a request anyway, fullest
//! first; a limited (exhausted) bucket is never replaced until it has refilled enough to admit
//! again. A client who wants its partly drained bucket replaced must first fill the 3 other
//! slots of its set with buckets drained further than its own, which costs more than the
//! refill it could gain.
//!
//! The glue stores each slot as one shared-data entry (`Slot::encode`, 80 bytes) and updates
//! it with compare-and-swap: read the set, [`choose`], write the slot if its CAS token is
//! unchanged, retry from the read otherwise.

use crate::policy::MAX_LIMITS_PER_RULE;

/// Slots per set.
pub const WAYS: usize = 4;

/// One slot: the key's fingerprint (0 = empty), when its bucket stops being limited, and one
/// GCRA state word per limit of the key's rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub fingerprint: u64,
    pub limited_until: u64,
    pub states: [u64; MAX_LIMITS_PER_RULE],
}

impl Slot {
    /// Encoded size: three fields of little-endian u64s.
    pub const BYTES: usize = 8 * (2 + MAX_LIMITS_PER_RULE);

    pub fn is_empty(&self) -> bool {
        self.fingerprint == 0
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        let words = [self.fingerprint, self.limited_until].into_iter().chain(self.states);
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Decodes a stored slot; anything not exactly [`Self::BYTES`] long is an empty slot.
    pub fn decode(bytes: &[u8]) -> Slot {
        if bytes.len() != Self::BYTES {
            return Slot::default();
        }
        let mut words = bytes.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        let mut slot = Slot { fingerprint: words.next().unwrap_or(0), limited_until: words.next().unwrap_or(0), ..Slot::default() };
        for (s, w) in slot.states.iter_mut().zip(words) {
            *s = w;
        }
        slot
    }
}

/// The table's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    sets: usize,
}

impl TableShape {
    /// A table of `max_keys` slots, rounded down to a multiple of [`WAYS`] (at least one set).
    pub fn new(max_keys: u32) -> Self {
        Self { sets: (max_keys as usize / WAYS).max(1) }
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.sets * WAYS
    }

    /// The indices of the 4 slots a key may live in.
    pub fn candidates(&self, fingerprint: u64) -> [usize; WAYS] {
        let set = (fingerprint % self.sets as u64) as usize;
        let first = set * WAYS;
        [first, first + 1, first + 2, first + 3]
    }
}

/// Where a key goes among its candidate slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The key is in candidate `i`.
    Hit(usize),
    /// The key is new and takes candidate `i` (empty, or its bucket is evicted).
    Take(usize),
    /// The key is new and every candidate holds a currently limited bucket.
    Full,
}

/// Chooses the slot of `fingerprint` among `candidates` (the slots at [`TableShape::candidates`]).
pub fn choose(candidates: &[Slot], fingerprint: u64, now: u64) -> Choice {
    if let Some(i) = candidates.iter().position(|s| s.fingerprint == fingerprint && !s.is_empty()) {
        return Choice::Hit(i);
    }
    if let Some(i) = candidates.iter().position(Slot::is_empty) {
        return Choice::Take(i);
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(_, s)| s.limited_until <= now)
        .min_by_key(|(_, s)| s.limited_until)
        .map_or(Choice::Full, |(i, _)| Choice::Take(i))
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

impl crate::policy::Buckets for MemoryTable {
    fn update(
        &mut self,
        fingerprint: u64,
        now: u64,
        f: &mut dyn FnMut(&[u64]) -> Option<crate::policy::SlotWrite>,
    ) -> Result<(), TableFull> {
        let idx = self.shape.candidates(fingerprint);
        let set: Vec<Slot> = idx.iter().map(|&i| self.slots.get(i).copied().unwrap_or_default()).collect();
        let (way, current) = match choose(&set, fingerprint, now) {
            Choice::Hit(w) => (w, set.get(w).map(|s| s.states).unwrap_or_default()),
            Choice::Take(w) => (w, [0; MAX_LIMITS_PER_RULE]),
            Choice::Full => return Err(TableFull),
        };
        if let Some((states, limited_until)) = f(&current) {
            if let Some(slot) = idx.get(way).and_then(|&i| self.slots.get_mut(i)) {
                *slot = Slot { fingerprint, limited_until, states };
            }
        }
        Ok(())
    }
}
