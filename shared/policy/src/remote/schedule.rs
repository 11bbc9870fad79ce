//! When a shared resource (geo database, JWKS) is fetched: a pure schedule, tested natively.
//!
//! All workers share one copy of the resource through the host's shared data, next to a small
//! [`SharedMeta`] record. On each tick a worker reads the record; when `next_attempt_ms` has
//! passed it takes a lease (writes a record with its owner id and `next_attempt_ms` pushed past
//! the fetch timeout) and, if the lease is still its own when read back, fetches. Success
//! publishes a new generation and schedules the refresh; failure schedules a retry and keeps the
//! last good generation serving. A worker that dies mid-fetch loses its lease at its expiry.
//!
//! A request may need a newer resource than the one loaded (a JWT whose `kid` the loaded JWKS
//! lacks): [`RefreshSchedule::bring_forward`] moves `next_attempt_ms` to now, at most once per
//! interval across all workers (`early_at_ms` is shared), so a flood of unknown `kid`s costs at
//! most one fetch per interval.

/// The record stored beside the resource in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedMeta {
    /// Bumped on every successful fetch; 0 = never fetched.
    pub generation: u64,
    pub fetched_at_ms: u64,
    /// No worker starts a fetch before this time (a lease, a refresh or a retry time).
    pub next_attempt_ms: u64,
    /// The worker holding the lease, 0 when none.
    pub owner: u64,
    /// When a fetch was last brought forward ([`RefreshSchedule::bring_forward`]), 0 = never.
    pub early_at_ms: u64,
}

impl SharedMeta {
    pub const ENCODED_LEN: usize = 40;
    /// The length of records written before `early_at_ms` existed (still read).
    const LEGACY_LEN: usize = 32;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let fields = [self.generation, self.fetched_at_ms, self.next_attempt_ms, self.owner, self.early_at_ms];
        for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// `None` for anything that is not a record we wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN && bytes.len() != Self::LEGACY_LEN {
            return None;
        }
        let mut v = bytes.chunks_exact(8).map(|c| c.try_into().map(u64::from_le_bytes).unwrap_or(0));
        Some(Self {
            generation: v.next()?,
            fetched_at_ms: v.next()?,
            next_attempt_ms: v.next()?,
            owner: v.next()?,
            early_at_ms: v.next().unwrap_or(0),
        })
    }
}

/// Refresh, retry and lease durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSchedule {
    pub refresh_ms: u64,
    pub retry_ms: u64,
    /// How long a fetch may hold the lease: the fetch timeout plus a margin.
    pub lease_ms: u64,
}

impl RefreshSchedule {
    /// Whether a fetch should start now.
    pub fn is_due(&self, meta: Option<&SharedMeta>, now_ms: u64) -> bool {
        meta.is_none_or(|m| now_ms >= m.next_attempt_ms)
    }

    /// The record that claims the fetch for `owner`.
    pub fn lease(&self, meta: Option<&SharedMeta>, now_ms: u64, owner: u64) -> SharedMeta {
        SharedMeta { next_attempt_ms: now_ms.saturating_add(self.lease_ms), owner, ..meta.copied().unwrap_or_default() }
    }

    /// The record after a successful fetch: a new generation, refresh scheduled.
    pub fn succeeded(&self, meta: Option<&SharedMeta>, now_ms: u64) -> SharedMeta {
        let generation = meta.map_or(0, |m| m.generation).saturating_add(1);
        SharedMeta {
            generation,
            fetched_at_ms: now_ms,
            next_attempt_ms: now_ms.saturating_add(self.refresh_ms),
            owner: 0,
            early_at_ms: meta.map_or(0, |m| m.early_at_ms),
        }
    }

    /// The record after a failed fetch: the last good generation stays, retry scheduled.
    pub fn failed(&self, meta: Option<&SharedMeta>, now_ms: u64) -> SharedMeta {
        SharedMeta { next_attempt_ms: now_ms.saturating_add(self.retry_ms), owner: 0, ..meta.copied().unwrap_or_default() }
    }

    /// The record that makes a fetch due now because a request needs a newer resource (an
    /// unknown JWT `kid`), or `None` when nothing should change: no record yet (the first fetch
    /// is due anyway), a fetch already due or in flight, or a fetch brought forward less than
    /// `min_interval_ms` ago (by any worker).
    pub fn bring_forward(&self, meta: Option<&SharedMeta>, now_ms: u64, min_interval_ms: u64) -> Option<SharedMeta> {
        let m = meta?;
        if now_ms >= m.next_attempt_ms || m.owner != 0 {
            return None;
        }
        if m.early_at_ms != 0 && now_ms < m.early_at_ms.saturating_add(min_interval_ms) {
            return None;
        }
        Some(SharedMeta { next_attempt_ms: now_ms, early_at_ms: now_ms, ..*m })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: RefreshSchedule = RefreshSchedule { refresh_ms: 60_000, retry_ms: 5_000, lease_ms: 11_000 };

    #[test]
    fn first_fetch_is_due_then_lease_blocks_others_until_it_expires() {
        assert!(S.is_due(None, 1_000));
        let lease = S.lease(None, 1_000, 7);
        assert_eq!(lease.owner, 7);
        assert!(!S.is_due(Some(&lease), 11_999), "another worker must not fetch while the lease holds");
        assert!(S.is_due(Some(&lease), 12_000), "a lease of a dead worker expires");
    }

    #[test]
    fn success_bumps_generation_and_schedules_refresh() {
        let lease = S.lease(None, 1_000, 7);
        let ok = S.succeeded(Some(&lease), 2_000);
        assert_eq!((ok.generation, ok.fetched_at_ms, ok.next_attempt_ms, ok.owner), (1, 2_000, 62_000, 0));
        assert!(!S.is_due(Some(&ok), 61_999));
        assert!(S.is_due(Some(&ok), 62_000));
        assert_eq!(S.succeeded(Some(&ok), 70_000).generation, 2);
    }

    #[test]
    fn failure_keeps_generation_and_schedules_retry() {
        let ok = S.succeeded(None, 2_000);
        let lease = S.lease(Some(&ok), 62_000, 9);
        let failed = S.failed(Some(&lease), 63_000);
        assert_eq!((failed.generation, failed.fetched_at_ms, failed.next_attempt_ms, failed.owner), (1, 2_000, 68_000, 0));
    }

    #[test]
    fn meta_round_trips_and_rejects_foreign_bytes() {
        let m = SharedMeta { generation: 3, fetched_at_ms: u64::MAX, next_attempt_ms: 5, owner: 6, early_at_ms: 7 };
        assert_eq!(SharedMeta::decode(&m.encode()), Some(m));
        assert_eq!(SharedMeta::decode(b"short"), None);
        let legacy = &m.encode()[..32];
        assert_eq!(SharedMeta::decode(legacy), Some(SharedMeta { early_at_ms: 0, ..m }));
    }

    const MIN: u64 = 30_000;

    #[test]
    fn bring_forward_makes_a_fetch_due_at_most_once_per_interval() {
        let ok = S.succeeded(None, 2_000); // next refresh at 62_000
        let early = S.bring_forward(Some(&ok), 3_000, MIN).unwrap();
        assert_eq!((early.next_attempt_ms, early.early_at_ms, early.generation), (3_000, 3_000, 1));
        assert!(S.is_due(Some(&early), 3_000));
        // The early fetch runs and succeeds: the interval still holds for the next request.
        let lease = S.lease(Some(&early), 3_000, 7);
        let fetched = S.succeeded(Some(&lease), 3_500);
        assert_eq!(fetched.early_at_ms, 3_000, "success keeps the time of the early fetch");
        assert_eq!(S.bring_forward(Some(&fetched), 4_000, MIN), None);
        assert_eq!(S.bring_forward(Some(&fetched), 32_999, MIN), None);
        assert!(S.bring_forward(Some(&fetched), 33_000, MIN).is_some(), "allowed again after the interval");
        // A failed early fetch does not allow another before the interval either.
        let failed = S.failed(Some(&lease), 3_500);
        assert_eq!(failed.next_attempt_ms, 8_500);
        assert_eq!(S.bring_forward(Some(&failed), 4_000, MIN), None);
    }

    #[test]
    fn bring_forward_leaves_due_in_flight_and_absent_records_alone() {
        assert_eq!(S.bring_forward(None, 1_000, MIN), None, "no record: the first fetch is due anyway");
        let ok = S.succeeded(None, 2_000);
        assert_eq!(S.bring_forward(Some(&ok), 62_000, MIN), None, "already due");
        let lease = S.lease(Some(&ok), 62_000, 9);
        assert_eq!(S.bring_forward(Some(&lease), 62_001, MIN), None, "a fetch is in flight");
        // A worker that died holding the lease: once the lease expires the fetch is due.
        assert!(S.is_due(Some(&lease), 73_000));
    }
}
