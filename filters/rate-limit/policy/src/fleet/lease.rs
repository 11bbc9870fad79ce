//! Lease bookkeeping: units a worker got from the rate limit service and may spend on its own, and
//! refusals it may repeat without asking.
//!
//! One entry per request key (the bucket key's fingerprint, which includes the rule): either units
//! left and when they expire, or a refusal and until when it holds. A lease covers every fleet limit
//! of the rule at once (the service charged all of them). Pure code, time injected (µs since the
//! Unix epoch).
//!
//! **Bound**: at most [`MAX_LEASES`] entries per VM (the glue keeps one table per worker and
//! policy). A new key when full first drops the expired entries, then, if still full, the entry
//! expiring soonest. Dropping an entry forfeits its units: the fleet admits less, never more.
//!
//! **Merging**: a grant for a key that still holds unexpired units (two requests of one key
//! called at once in one worker) adds the units and keeps the **earlier** expiry, so no unit
//! outlives `lease_ms` from its grant.
//!
//! **Refusals**: after the service refused even the request's cost, the worker denies that key's
//! requests without a call until the refusal's end (the caller keeps it shorter than the time the
//! fleet bucket needs to refill one unit, so no unit is lost: the bucket keeps it for the next ask).

use std::collections::HashMap;

/// Most keys holding a lease or a refusal in one VM (about 100 KiB).
pub const MAX_LEASES: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Units {
        units: u64,
        expires_us: u64,
    },
    /// `violated`: bit i set when fleet limit i of the rule refused.
    Refused {
        until_us: u64,
        violated: u8,
    },
}

impl Entry {
    fn end(&self) -> u64 {
        match *self {
            Entry::Units { expires_us, .. } => expires_us,
            Entry::Refused { until_us, .. } => until_us,
        }
    }
}

/// A refusal still in force: until when, and which fleet limits (bit i: limit i of the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub until_us: u64,
    pub violated: u8,
}

/// The leases of one VM.
#[derive(Debug, Clone)]
pub struct Leases {
    entries: HashMap<u64, Entry>,
    capacity: usize,
}

impl Default for Leases {
    fn default() -> Self {
        Self::new(MAX_LEASES)
    }
}

impl Leases {
    /// A table of at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity: capacity.max(1) }
    }

    /// Spends `cost` units of `key`'s lease at `now_us` if it holds that many unexpired; an
    /// expired entry is dropped.
    pub fn spend(&mut self, key: u64, cost: u64, now_us: u64) -> bool {
        let Some(e) = self.entries.get_mut(&key) else { return false };
        if now_us >= e.end() {
            self.entries.remove(&key);
            return false;
        }
        match e {
            Entry::Units { units, .. } if *units >= cost => {
                *units -= cost;
                true
            }
            _ => false,
        }
    }

    /// The refusal of `key` in force at `now_us`, if any.
    pub fn refused(&self, key: u64, now_us: u64) -> Option<Refusal> {
        match self.entries.get(&key) {
            Some(Entry::Refused { until_us, violated }) if now_us < *until_us => Some(Refusal { until_us: *until_us, violated: *violated }),
            _ => None,
        }
    }

    /// Records `units` granted to `key` at `now_us`, usable until `expires_us` (a refusal of the
    /// key ends).
    pub fn grant(&mut self, key: u64, units: u64, now_us: u64, expires_us: u64) {
        if units == 0 || expires_us <= now_us {
            return;
        }
        if let Some(Entry::Units { units: held, expires_us: until }) = self.entries.get_mut(&key) {
            if now_us < *until {
                *held = held.saturating_add(units);
                *until = (*until).min(expires_us);
                return;
            }
        }
        self.insert(key, Entry::Units { units, expires_us }, now_us);
    }

    /// Records that the service refused `key` at `now_us`: its requests are denied without a call
    /// until `until_us`, unless the key holds unexpired units (granted to another request of the
    /// key in flight at the same time): those are kept for the next requests, never dropped.
    pub fn refuse(&mut self, key: u64, now_us: u64, until_us: u64, violated: u8) {
        if self.units(key, now_us) > 0 || until_us <= now_us {
            return;
        }
        self.insert(key, Entry::Refused { until_us, violated }, now_us);
    }

    fn insert(&mut self, key: u64, entry: Entry, now_us: u64) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now_us < e.end());
            if self.entries.len() >= self.capacity {
                if let Some(soonest) = self.entries.iter().min_by_key(|(_, e)| e.end()).map(|(k, _)| *k) {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, entry);
    }

    /// Units of `key` usable at `now_us`.
    pub fn units(&self, key: u64, now_us: u64) -> u64 {
        match self.entries.get(&key) {
            Some(Entry::Units { units, expires_us }) if now_us < *expires_us => *units,
            _ => 0,
        }
    }

    /// Keys held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
