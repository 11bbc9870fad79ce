//! Gatewarden rate limiting as a Proxy-Wasm module: glue only, local limits (one gateway, all
//! workers) and fleet limits (a rate limit service, see [`fleet`]). The policy lives in
//! `gatewarden_rate_limit_policy`; the host adapter in `gatewarden_glue`. A request whose rule
//! has no fleet limit, or that its local limits deny, is decided on its headers; one with fleet
//! limits waits for the service (the glue's pipeline: `export_filter!(RateLimit, waits)`).
//!
//! **State.** The key table ([`gatewarden_rate_limit_policy::table`]) lives in Proxy-Wasm shared
//! data, one entry per set of [`WAYS`] (8) slots: `gatewarden/rate_limit/s<sets>w8/<set index>`,
//! 768 bytes ([`encode_set`]: the set's slots concatenated, empty ones included; a stored value
//! of another size, e.g. from an older module, reads as an empty set). The table id
//! `s<sets>w<ways>` is the table's shape, so a table of another shape never reads this one's
//! sets (nor an older module's `k<slots>/<i>` slot entries, which are left unused). Memory is
//! bounded by the set count whatever the keys seen: `max_keys / 8` entries of 768 bytes and
//! the seed (Envoy never deletes shared data; Kong's `shm_kv` zone must hold
//! `max_keys / 8 × (768 + key)` bytes).
//!
//! **Update (per request).** Read the key's set with its CAS (one host call), [`update_set`]
//! (choose a way, compute the new words with the policy's closure), write the whole set passing
//! the CAS read (one host call). On a CAS mismatch (another worker wrote the set first, for this
//! key or another of its set) start again from the read, at most [`MAX_TRIES`] times; after
//! that, or on a host error, the key counts as not tracked and the policy's `failure_mode`
//! decides (`table_full` on deny, let through on allow), counted
//! `gatewarden_rate_limit_host_error` and logged.
//!
//! **CAS 0.** Envoy's CAS 0 overwrites, Kong's only creates. A set is therefore never written
//! with CAS 0 except to *create* it empty: an absent set is first created as an empty set
//! (CAS 0; on Kong a lost race is a mismatch, on Envoy a harmless overwrite of another empty
//! set), then re-read and updated with its real CAS like any other. Residual window on Envoy
//! only: a worker that saw the set absent can overwrite, with an empty set, a state another
//! worker created and charged between that worker's read and its write (two host calls
//! apart); it happens at most once per set for the process's life, since a set once created
//! is never absent again.
//!
//! **Seed.** The key hash's seed ([`gatewarden_rate_limit_policy::key`]) is random per process
//! (WASI random via `RandomState`), published once at `gatewarden/rate_limit/seed`: the first
//! worker creates it (CAS 0, then reads back and adopts what is stored); every worker reads it
//! before its first decision and again on every tick, so after a creation race on Envoy (last
//! writer wins) all workers agree within one tick.
//!
//! **Time.** `now_us` is `proxy_get_current_time_nanoseconds` (the host's wall clock; Envoy's
//! real-time source, nginx's cached time on ngx_wasm_module): the same clock for all workers of
//! one host; the GCRA state tolerates it going backwards.
//!
//! **Responses.** A 429 carries the problem+json body naming the violated limits
//! (`application/problem+json`, the IETF `quota-exceeded` type), `retry-after` and the rule's IETF
//! (and legacy) headers. With `headers_on_allowed` an allowed request's response gets the same
//! rate-limit headers, added in `on_response_headers` (the glue files them per request).
//!

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use gatewarden_glue::host::{self, Level};
use gatewarden_glue::metrics::{self, Counter};
use gatewarden_glue::pipeline::{HostCaps, Pending, Resumed, Step};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts};
use gatewarden_rate_limit_policy::fleet::Leases;
use gatewarden_rate_limit_policy::table::{decode_set, encode_set, update_set, Set, WAYS};
use gatewarden_rate_limit_policy::{Buckets, KeyState, RateLimitOutcome, RateLimitPolicy, RateLimitReason, TableFull, TableShape};

mod fleet;

pub(crate) const FILTER: &str = RateLimitPolicy::NAME;
/// Read–choose–write attempts of one request before `failure_mode` decides.
pub const MAX_TRIES: usize = 8;
/// The shared-data key of the process's key-hash seed.
pub const SEED_KEY: &str = "gatewarden/rate_limit/seed";
/// Tick period: re-reads the seed (see the crate docs) and flushes counters.
const TICK: Duration = Duration::from_secs(1);

/// The shared-data key of set `index` of a table of `sets` sets of [`WAYS`] slots.
pub fn set_key(sets: usize, index: usize) -> String {
    format!("gatewarden/rate_limit/s{sets}w{WAYS}/{index}")
}

thread_local! {
    /// This VM's copy of the published seed (0: not read yet).
    static SEED: Cell<u64> = const { Cell::new(0) };
}

fn decode_seed(bytes: &[u8]) -> Option<u64> {
    let b: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(b)).filter(|s| *s != 0)
}

/// A random seed (WASI random through `RandomState`), never 0.
fn new_seed() -> u64 {
    RandomState::new().hash_one(host::now_ms()).max(1)
}

/// Reads the published seed, creating it first if absent; `None` on a host error.
fn read_or_publish_seed() -> Option<u64> {
    for _ in 0..2 {
        match host::get_shared_data(SEED_KEY) {
            Ok(Some((bytes, cas))) => {
                if let Some(seed) = decode_seed(&bytes) {
                    return Some(seed);
                }
                // Not a seed (written by something else): replace it, if unchanged since read.
                let _ = host::set_shared_data(SEED_KEY, &new_seed().to_le_bytes(), cas);
            }
            Ok(None) => {
                // CAS 0: Kong creates only if absent (a lost race is a mismatch), Envoy
                // overwrites; either way the value read back next is the one to use.
                let _ = host::set_shared_data(SEED_KEY, &new_seed().to_le_bytes(), 0);
            }
            Err(e) => {
                host::log(Level::Warn, format_args!("gatewarden {FILTER}: cannot read the key seed (status {})", e.0));
                return None;
            }
        }
    }
    None
}

/// The seed for this request: this VM's copy, read or published on first use.
fn seed() -> Option<u64> {
    let s = SEED.with(Cell::get);
    if s != 0 {
        return Some(s);
    }
    let s = read_or_publish_seed()?;
    SEED.with(|c| c.set(s));
    Some(s)
}

/// Why an update of the shared table failed (not a full table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreFailure {
    Host(u32),
    Contended,
}

/// The key table in Proxy-Wasm shared data (see the crate docs).
pub(crate) struct SharedTable {
    shape: TableShape,
    /// Set when an update failed for another reason than a full table.
    failure: Option<StoreFailure>,
}

impl SharedTable {
    pub(crate) fn new(max_keys: u32) -> Self {
        Self { shape: TableShape::new(max_keys), failure: None }
    }

    /// Counts and logs an update that failed for another reason than a full table.
    pub(crate) fn report(&self) {
        if let Some(failure) = self.failure {
            metrics::tally(FILTER, Counter::HOST_ERROR);
            let why = match failure {
                StoreFailure::Host(0) => "the key seed is unavailable".to_owned(),
                StoreFailure::Host(s) => format!("shared data failed (status {s})"),
                StoreFailure::Contended => format!("the key's set changed under {MAX_TRIES} tries"),
            };
            host::log(Level::Warn, format_args!("gatewarden {FILTER}: key not tracked, failure_mode decides: {why}"));
        }
    }

    /// Reads one set and its CAS, creating it empty first when absent (see the crate docs).
    fn read(&self, key: &str) -> Result<(Set, u32), StoreFailure> {
        for _ in 0..2 {
            match host::get_shared_data(key) {
                Ok(Some((bytes, cas))) => return Ok((decode_set(&bytes), cas)),
                Ok(None) => match host::set_shared_data(key, &encode_set(&Set::default()), 0) {
                    Ok(()) => {}
                    Err(e) if e.0 == host::STATUS_CAS_MISMATCH => {}
                    Err(e) => return Err(StoreFailure::Host(e.0)),
                },
                Err(e) => return Err(StoreFailure::Host(e.0)),
            }
        }
        Err(StoreFailure::Contended)
    }

    fn try_update(
        &self,
        fingerprint: u64,
        now: u64,
        f: &mut dyn FnMut(&KeyState) -> Option<KeyState>,
    ) -> Result<Result<(), TableFull>, StoreFailure> {
        let key = set_key(self.shape.sets(), self.shape.set_of(fingerprint));
        let (mut set, cas) = self.read(&key)?;
        match update_set(&mut set, fingerprint, now, f) {
            Ok(true) => {}
            other => return Ok(other.map(|_| ())),
        }
        // `cas` is the set's real CAS (never 0: `read` created it), so this write is a true
        // compare-and-swap on both hosts.
        match host::set_shared_data(&key, &encode_set(&set), cas) {
            Ok(()) => Ok(Ok(())),
            Err(e) if e.0 == host::STATUS_CAS_MISMATCH => Err(StoreFailure::Contended),
            Err(e) => Err(StoreFailure::Host(e.0)),
        }
    }
}

impl Buckets for SharedTable {
    fn update(&mut self, fingerprint: u64, now: u64, f: &mut dyn FnMut(&KeyState) -> Option<KeyState>) -> Result<(), TableFull> {
        let mut last = StoreFailure::Contended;
        for _ in 0..MAX_TRIES {
            match self.try_update(fingerprint, now, f) {
                Ok(r) => return r,
                Err(StoreFailure::Contended) => last = StoreFailure::Contended,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        self.failure = Some(last);
        Err(TableFull)
    }
}

struct RateLimit;

impl Enforcer for RateLimit {
    type Policy = RateLimitPolicy;
    /// This VM's fleet leases under this policy (see [`fleet`]).
    type PolicyState = RefCell<Leases>;
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        RateLimitReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        fleet::counters()
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &RateLimitPolicy) -> Option<Duration> {
        Some(TICK)
    }

    fn on_tick(&mut self, _policy: &RateLimitPolicy) -> Option<Duration> {
        // Adopt the stored seed if a creation race on Envoy replaced the one this VM read.
        if let Ok(Some((bytes, _))) = host::get_shared_data(SEED_KEY) {
            if let Some(s) = decode_seed(&bytes) {
                SEED.with(|c| c.set(s));
            }
        }
        Some(TICK)
    }

    fn header_needs(policy: &RateLimitPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(_policy: &RateLimitPolicy) -> RefCell<Leases> {
        RefCell::new(Leases::default())
    }

    fn check_host(policy: &RateLimitPolicy, host: &HostCaps) -> Result<(), String> {
        fleet::check_host(policy, host)
    }

    fn decide(policy: &RateLimitPolicy, _state: &RefCell<Leases>, facts: &RequestFacts<'_>) -> Outcome {
        // Only for a caller that cannot wait: a fleet check is left undone (the local limits
        // decided). The glue calls `start` for this filter.
        to_outcome(evaluate(policy, facts), None)
    }

    fn start(policy: &RateLimitPolicy, leases: &RefCell<Leases>, facts: &RequestFacts<'_>) -> Step {
        let mut out = evaluate(policy, facts);
        match out.fleet.take() {
            Some(check) => fleet::start(policy, leases, *check),
            None => Step::Done(to_outcome(out, None)),
        }
    }

    fn resume(policy: &RateLimitPolicy, leases: &RefCell<Leases>, pending: Pending, input: Resumed<'_>) -> Step {
        fleet::resume(policy, leases, pending, input)
    }
}

/// The policy's decision on the local limits at the host's time, with the shared table.
fn evaluate(policy: &RateLimitPolicy, facts: &RequestFacts<'_>) -> RateLimitOutcome {
    let now_us = fleet::now_us();
    let mut table = SharedTable::new(policy.max_keys());
    // Without a seed (host error) the table cannot be used: the same path as a failed update.
    let out = match seed() {
        Some(seed) => policy.decide(facts, now_us, seed, &mut table),
        None => {
            table.failure = Some(StoreFailure::Host(0));
            policy.decide(facts, now_us, 0, &mut FailingTable)
        }
    };
    table.report();
    out
}

pub(crate) use gatewarden_rate_limit_policy::adapter::to_outcome;

/// A table that cannot be used (no seed): every key is untracked, `failure_mode` decides.
struct FailingTable;

impl Buckets for FailingTable {
    fn update(&mut self, _fingerprint: u64, _now: u64, _f: &mut dyn FnMut(&KeyState) -> Option<KeyState>) -> Result<(), TableFull> {
        Err(TableFull)
    }
}

export_filter!(RateLimit, waits);
