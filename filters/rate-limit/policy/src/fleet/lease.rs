//! Lease bookkeeping: units a worker got from the rate limit service and may spend on its own.
//!
//! One entry per request key (the bucket key's fingerprint, which includes the rule): units left
//! and when they expire. A lease covers every fleet limit of the rule at once (the service charged
//! all of them). Pure code, time injected (µs since the Unix epoch).
//!
//! **Bound**: at most [`MAX_LEASES`] entries per VM (the glue keeps one table per worker and
//! policy). A new key when full first drops the expired entries, then, if still full, the entry
//! expiring soonest. Dropping an entry forfeits its units: the fleet admits less, never more.
//!
//! **Merging**: a grant for a key that still holds unexpired units (two requests of one key
//! called at once in one worker) adds the units and keeps the **earlier** expiry, so no unit
//! outlives `lease_ms` from its grant.

use std::collections::HashMap;

/// Most keys holding a lease in one VM (about 100 KiB).
pub const MAX_LEASES: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    units: u64,
    expires_us: u64,
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
    /// expired lease is dropped.
    pub fn spend(&mut self, key: u64, cost: u64, now_us: u64) -> bool {
        let Some(e) = self.entries.get_mut(&key) else { return false };
        if now_us >= e.expires_us {
            self.entries.remove(&key);
            return false;
        }
        if e.units < cost {
            return false;
        }
        e.units -= cost;
        true
    }

    /// Records `units` granted to `key` at `now_us`, usable until `expires_us`.
    pub fn grant(&mut self, key: u64, units: u64, now_us: u64, expires_us: u64) {
        if units == 0 || expires_us <= now_us {
            return;
        }
        if let Some(e) = self.entries.get_mut(&key) {
            if now_us < e.expires_us {
                e.units = e.units.saturating_add(units);
                e.expires_us = e.expires_us.min(expires_us);
            } else {
                *e = Entry { units, expires_us };
            }
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now_us < e.expires_us);
        }
        if self.entries.len() >= self.capacity {
            if let Some(soonest) = self.entries.iter().min_by_key(|(_, e)| e.expires_us).map(|(k, _)| *k) {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, Entry { units, expires_us });
    }

    /// Units of `key` usable at `now_us`.
    pub fn units(&self, key: u64, now_us: u64) -> u64 {
        self.entries.get(&key).filter(|e| now_us < e.expires_us).map_or(0, |e| e.units)
    }

    /// Keys held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
