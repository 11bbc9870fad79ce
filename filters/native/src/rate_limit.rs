//! Rate limiting, natively: local limits with **one key table for all workers of the process**,
//! in memory, each set of `WAYS` (8) slots behind its own mutex (no shared-data serialization, no
//! compare-and-swap retries: two workers charging keys of different sets never wait on each
//! other). The table is found by its shape in a process registry, so a policy update with the
//! same `max_keys` keeps every bucket; memory is bounded by `max_keys` (48 bytes a slot).
//! Fleet limits (a rate limit service) are refused: the native module has no gRPC and does not
//! call the service yet.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_glue::pipeline::HostCaps;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{RequestFacts, Verdict};
use gatewarden_rate_limit_policy::table::{update_set, Set};
use gatewarden_rate_limit_policy::{Buckets, KeyState, RateLimitPolicy, RateLimitReason, TableFull, TableShape};

/// The process's key table of one shape.
pub struct Table {
    shape: TableShape,
    sets: Box<[Mutex<Set>]>,
}

impl Table {
    fn new(max_keys: u32) -> Self {
        let shape = TableShape::new(max_keys);
        Self { shape, sets: (0..shape.sets()).map(|_| Mutex::new(Set::default())).collect() }
    }

    /// The table of this shape, shared with every configuration that uses it (created once).
    fn shared(max_keys: u32) -> Arc<Table> {
        static TABLES: OnceLock<Mutex<HashMap<u32, Weak<Table>>>> = OnceLock::new();
        let tables = TABLES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut tables = tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.retain(|_, t| t.strong_count() > 0);
        if let Some(t) = tables.get(&max_keys).and_then(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(Table::new(max_keys));
        tables.insert(max_keys, Arc::downgrade(&t));
        t
    }
}

/// One request's view of the table.
struct Charge<'a>(&'a Table);

impl Buckets for Charge<'_> {
    fn update(&mut self, fingerprint: u64, now: u64, f: &mut dyn FnMut(&KeyState) -> Option<KeyState>) -> Result<(), TableFull> {
        let Some(set) = self.0.sets.get(self.0.shape.set_of(fingerprint)) else { return Err(TableFull) };
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        update_set(&mut set, fingerprint, now, f).map(|_| ())
    }
}

/// The key hash's seed: random per process, never 0.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| RandomState::new().hash_one(SystemTime::now()).max(1))
}

pub struct RateLimit;

impl gatewarden_native::NativeFilter for RateLimit {}

impl Enforcer for RateLimit {
    type Policy = RateLimitPolicy;
    type PolicyState = Arc<Table>;

    fn reasons() -> Vec<&'static str> {
        RateLimitReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &RateLimitPolicy) -> Option<Duration> {
        None
    }

    fn check_host(policy: &RateLimitPolicy, host: &HostCaps) -> Result<(), String> {
        match policy.fleet() {
            Some(_) if !policy.fleet_limits().is_empty() => {
                Err(format!("fleet: fleet limits (a rate limit service) are not available in the {} module yet", host.name))
            }
            _ => Ok(()),
        }
    }

    fn header_needs(policy: &RateLimitPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(policy: &RateLimitPolicy) -> Arc<Table> {
        Table::shared(policy.max_keys())
    }

    fn decide(policy: &RateLimitPolicy, table: &Arc<Table>, facts: &RequestFacts<'_>) -> Outcome {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0);
        let out = policy.decide(facts, now_us, seed(), &mut Charge(table));
        let detail = match (&out.decision.verdict, &out.key) {
            (Verdict::Deny(_), Some(k)) if !out.violated.is_empty() => {
                let names: Vec<&str> = out.violated.iter().map(|n| &**n).collect();
                format!("key={:016x} limits={}", k.fingerprint, names.join(","))
            }
            (Verdict::Deny(_), Some(k)) => format!("key={:016x}", k.fingerprint),
            _ => String::new(),
        };
        let denied = matches!(out.decision.verdict, Verdict::Deny(_));
        let mut outcome = Outcome::new(out.decision, out.client, detail);
        if denied {
            outcome.body = out.body;
            outcome.response_headers = out.response_headers;
        } else {
            outcome.allowed_response_headers = out.response_headers;
        }
        outcome
    }
}
