//! Rate limiting, natively: local limits with **one key table for all workers of the process**,
//! in memory, each set of `WAYS` (8) slots behind its own mutex (no shared-data serialization, no
//! compare-and-swap retries: two workers charging keys of different sets never wait on each
//! other). The table is found by its shape in a process registry, so a policy update with the
//! same `max_keys` keeps every bucket; memory is bounded by `max_keys` (48 bytes a slot).
//!
//! Fleet limits: the policy's fleet steps as the runtime's callouts, as in the Wasm module —
//! `protocol: grpc` (Envoy's default) as an HTTP/2 callout carrying the gRPC frame (the
//! dynamic-module ABI has HTTP callouts only), `protocol: http` as `POST /json`. Leases are per
//! worker (the runtime's per-worker policy state), like the Wasm module's per VM. Counters and log
//! lines are the Wasm module's (`fleet_calls`, `fleet_lease_spent`, `fleet_failure_<mode>` …).

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_glue::pipeline::{HostCaps, Pending, Resumed, Step};
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_native::runtime::NativeReport;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::RequestFacts;
use gatewarden_rate_limit_policy::adapter::{self, to_outcome, FLEET_COUNTERS};
use gatewarden_rate_limit_policy::fleet::{Leases, Proxy};
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

impl gatewarden_native::NativeFilter for RateLimit {
    const BORROWS_HEADERS: bool = true;
}

/// A worker's state under one policy: the process's table and this worker's fleet leases.
pub struct WorkerState {
    table: Arc<Table>,
    leases: RefCell<Leases>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

impl Enforcer for RateLimit {
    type Policy = RateLimitPolicy;
    type PolicyState = WorkerState;
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        RateLimitReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        FLEET_COUNTERS.iter().map(|c| (*c).to_owned()).collect()
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &RateLimitPolicy) -> Option<Duration> {
        None
    }

    fn check_host(policy: &RateLimitPolicy, _host: &HostCaps) -> Result<(), String> {
        adapter::check_host(policy, Proxy::Envoy)
    }

    fn header_needs(policy: &RateLimitPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(policy: &RateLimitPolicy) -> WorkerState {
        WorkerState { table: Table::shared(policy.max_keys()), leases: RefCell::new(Leases::default()) }
    }

    fn decide(policy: &RateLimitPolicy, state: &WorkerState, facts: &RequestFacts<'_>) -> Outcome {
        to_outcome(policy.decide(facts, now_us(), seed(), &mut Charge(&state.table)), None)
    }

    fn start(policy: &RateLimitPolicy, state: &WorkerState, facts: &RequestFacts<'_>) -> Step {
        let mut out = policy.decide(facts, now_us(), seed(), &mut Charge(&state.table));
        let Some(check) = out.fleet.take() else { return Step::Done(to_outcome(out, None)) };
        let Ok(mut leases) = state.leases.try_borrow_mut() else { return Step::Unavailable("rate_limit: the fleet leases are busy") };
        adapter::fleet_start(policy, &mut leases, *check, now_us(), Proxy::Envoy, &NativeReport)
    }

    fn resume(policy: &RateLimitPolicy, state: &WorkerState, pending: Pending, input: Resumed<'_>) -> Step {
        let Ok(mut leases) = state.leases.try_borrow_mut() else { return Step::Unavailable("rate_limit: the fleet leases are busy") };
        adapter::fleet_resume(policy, &mut leases, pending, input, now_us(), &mut Charge(&state.table), Proxy::Envoy, &NativeReport)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use gatewarden_policy::{compile, Verdict};

    fn policy(max_keys: u32) -> RateLimitPolicy {
        let doc = format!(
            r#"{{"policy_version":"t","mode":"enforce","failure_mode":"deny","max_keys":{max_keys},
                "rules":[],"default":{{"limits":[{{"name":"per-client","rate":50,"per":"1h"}}],"key":["client_address"]}}}}"#
        );
        compile::<RateLimitPolicy>(doc.as_bytes()).expect("policy")
    }

    #[test]
    fn configurations_of_one_shape_share_one_table_and_others_do_not() {
        let a = Table::shared(4096);
        let b = Table::shared(4096);
        let c = Table::shared(8192);
        assert!(Arc::ptr_eq(&a, &b), "a policy update with the same max_keys keeps the buckets");
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn workers_charge_one_budget_per_key() {
        // Four threads (workers), each with its own state as the runtime gives them, 40 requests
        // each from one client against 50 per hour: exactly 50 pass in total.
        let policy = Arc::new(policy(1024));
        // The configuration makes every worker's state up front (the runtime's PerWorker).
        let states: Vec<WorkerState> = (0..4).map(|_| RateLimit::policy_state(&policy)).collect();
        let allowed: usize = states
            .into_iter()
            .map(|state| {
                let policy = Arc::clone(&policy);
                std::thread::spawn(move || {
                    let headers = vec![(":path".to_owned(), "/x".to_owned()), (":method".to_owned(), "GET".to_owned())];
                    (0..40)
                        .filter(|_| {
                            let facts = RequestFacts::new(&headers, Some("192.0.2.7:5000"));
                            matches!(RateLimit::decide(&policy, &state, &facts).decision.verdict, Verdict::Allow)
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("worker"))
            .sum();
        assert_eq!(allowed, 50);
    }
}
