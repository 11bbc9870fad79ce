//! Counters `gatewarden_<filter>_<outcome>`, defined once per VM at start.
//!
//! Why a per-VM static: a config update creates a new root context in the same VM; defining the
//! metrics again would be wasted host calls, and the ids stay valid for the VM's life.
//!
//! Per-request outcomes are [`tally`]ed in the VM and [`flush`]ed to the host on every root
//! context's tick (at most [`FLUSH_PERIOD`] apart): a host call costs more than the rest of an
//! allowed request's own work, and the counters lag by at most one period. Rare events
//! (configuration, fetches) are [`count`]ed at once.

use std::cell::RefCell;

use crate::fasthash::FastMap;
use crate::host;

/// A counter the glue increments: `gatewarden_<filter>_<name>`. Named by these constants, never by
/// free strings, so a typo is a compile error and `gatewarden counters` lists what exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(&'static str);

impl Counter {
    // Every filter, every request.
    pub const ALLOWED: Counter = Counter("allowed");
    pub const DENIED: Counter = Counter("denied");
    pub const DRY_RUN_DENIED: Counter = Counter("dry_run_denied");
    pub const NO_POLICY: Counter = Counter("no_policy");
    pub const HOST_ERROR: Counter = Counter("host_error");
    // Configuration.
    pub const CONFIG_ACCEPTED: Counter = Counter("config_accepted");
    pub const CONFIG_REJECTED: Counter = Counter("config_rejected");
    pub const SIGNATURE_REJECTED: Counter = Counter("signature_rejected");
    pub const TRUST_CONFIG_REJECTED: Counter = Counter("trust_config_rejected");
    // Rollout: which policy a canary request was assigned to, what a candidate decided, and
    // whether a shadow candidate agreed (see `crate::rollout`).
    pub const ROLLOUT_ACTIVE: Counter = Counter("rollout_active");
    pub const ROLLOUT_CANDIDATE: Counter = Counter("rollout_candidate");
    pub const CANDIDATE_ALLOWED: Counter = Counter("candidate_allowed");
    pub const CANDIDATE_DENIED: Counter = Counter("candidate_denied");
    pub const CANDIDATE_DRY_RUN_DENIED: Counter = Counter("candidate_dry_run_denied");
    pub const SHADOW_AGREED: Counter = Counter("shadow_agreed");
    pub const SHADOW_DISAGREED: Counter = Counter("shadow_disagreed");
    // Filters that wait for a body or a callout (see `crate::waiting`).
    pub const BODY_TOO_LARGE: Counter = Counter("body_too_large");
    pub const BODY_UNAVAILABLE: Counter = Counter("body_unavailable");
    pub const CALLOUT_DISPATCH_FAILED: Counter = Counter("callout_dispatch_failed");
    pub const CALLOUT_TIMEOUT: Counter = Counter("callout_timeout");
    pub const CALLOUT_FAILED: Counter = Counter("callout_failed");
    pub const CALLOUT_TOO_LARGE: Counter = Counter("callout_too_large");
    pub const CALLOUT_LATE: Counter = Counter("callout_late");
    pub const WAITING_ABANDONED: Counter = Counter("waiting_abandoned");
    pub const WAITING_FAILED: Counter = Counter("waiting_failed");
    pub const ANSWERED_BEFORE_BODY: Counter = Counter("answered_before_body");

    /// A filter's own counter: declare it once as a `const` in the filter and list its name in
    /// `Enforcer::extra_counters` (an undefined counter is never incremented).
    pub const fn filter(name: &'static str) -> Counter {
        Counter(name)
    }

    /// The name after `gatewarden_<filter>_`.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

/// The counters every filter defines, beside `denied_<reason>` and `dry_run_denied_<reason>`.
pub const OUTCOMES: &[Counter] = &[
    Counter::ALLOWED,
    Counter::DENIED,
    Counter::DRY_RUN_DENIED,
    Counter::CONFIG_ACCEPTED,
    Counter::CONFIG_REJECTED,
    Counter::NO_POLICY,
    Counter::HOST_ERROR,
];

/// Longest time a tallied count waits in the VM before it reaches the host.
pub const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// The counter ids of this VM's filter, by outcome (a module is one filter), and the counts
/// tallied since the last flush (`pending[slot]`, `(id, count)`).
#[derive(Default)]
struct Ids {
    filter: String,
    by_outcome: FastMap<String, (u32, usize)>,
    pending: Vec<(u32, u64)>,
    dirty: bool,
}

thread_local! {
    static IDS: RefCell<Ids> = RefCell::new(Ids::default());
}

/// Defines `gatewarden_<filter>_<outcome>` for every outcome, every `denied_<reason>`, the
/// glue's `counters` (rollout, waiting) and the filter's `extra` counters (its remote
/// resources'). Idempotent.
pub fn define(filter: &str, reasons: &[&str], counters: &[Counter], extra: &[String]) {
    let names = OUTCOMES
        .iter()
        .chain(counters)
        .map(|c| c.name().to_owned())
        .chain(reasons.iter().map(|r| format!("denied_{r}")))
        .chain(reasons.iter().map(|r| format!("dry_run_denied_{r}")))
        .chain(extra.iter().cloned());
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.filter != filter {
            // First definition in this VM (a module serves one filter).
            ids.filter = filter.to_owned();
            ids.by_outcome.clear();
            ids.pending.clear();
        }
        for outcome in names {
            if ids.by_outcome.contains_key(&outcome) {
                continue;
            }
            let name = metric_name(filter, &outcome);
            match host::define_counter(&name) {
                Ok(id) => {
                    let slot = ids.pending.len();
                    ids.pending.push((id, 0));
                    ids.by_outcome.insert(outcome, (id, slot));
                }
                Err(e) => host::log(host::Level::Warn, format_args!("gatewarden: cannot define metric {name}: status {}", e.0)),
            }
        }
    });
}

fn metric_name(filter: &str, outcome: &str) -> String {
    format!("gatewarden_{filter}_{outcome}")
}

/// Adds one to `gatewarden_<filter>_<counter>` now (one host call). For rare events;
/// per-request outcomes use [`tally`].
pub fn count(filter: &str, counter: Counter) {
    count_named(filter, counter.name());
}

/// [`count`] for a counter named at run time from a typed part: a filter's remote resource
/// (`<resource>_<event>`, see `crate::remote`). An undefined name is ignored.
pub(crate) fn count_named(filter: &str, outcome: &str) {
    let id = IDS.with(|ids| {
        let ids = ids.borrow();
        if ids.filter == filter {
            ids.by_outcome.get(outcome).map(|(id, _)| *id)
        } else {
            None
        }
    });
    if let Some(id) = id {
        let _ = host::increment(id, 1);
    }
}

/// Adds one to `gatewarden_<filter>_<counter>` in the VM; the host sees it at the next
/// [`flush`]. No host call, no allocation.
pub fn tally(filter: &str, counter: Counter) {
    tally_named(filter, counter.name());
}

/// Adds one to `gatewarden_<filter>_<outcome>_<reason>` (`denied_ip_denied`): a denial's reason,
/// typed by the filter's reason enum (`Enforcer::reasons`).
pub fn tally_reason(filter: &str, outcome: Counter, reason: &str) {
    tally_named(filter, &format!("{}_{reason}", outcome.name()));
}

fn tally_named(filter: &str, outcome: &str) {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.filter != filter {
            return;
        }
        let Some(&(_, slot)) = ids.by_outcome.get(outcome) else { return };
        if let Some(entry) = ids.pending.get_mut(slot) {
            entry.1 += 1;
            ids.dirty = true;
        }
    });
}

/// Sends every tallied count to the host (one call per counter that moved). A count the host
/// refuses is dropped rather than retried forever.
pub fn flush() {
    let moved: Vec<(u32, u64)> = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if !ids.dirty {
            return Vec::new();
        }
        ids.dirty = false;
        ids.pending.iter_mut().filter(|(_, n)| *n > 0).map(|(id, n)| (*id, std::mem::take(n))).collect()
    });
    for (id, n) in moved {
        let _ = host::increment(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The glue's [`Report`](gatewarden_policy::outcome::Report) for filter `.0`: tallies
/// `gatewarden_<filter>_<name>` and logs through the host.
pub struct WasmReport(pub &'static str);

impl gatewarden_policy::outcome::Report for WasmReport {
    fn count(&self, name: &'static str) {
        tally(self.0, Counter::filter(name));
    }

    fn log(&self, level: gatewarden_policy::outcome::ReportLevel, message: std::fmt::Arguments<'_>) {
        let level = match level {
            gatewarden_policy::outcome::ReportLevel::Info => host::Level::Info,
            gatewarden_policy::outcome::ReportLevel::Warn => host::Level::Warn,
        };
        host::log(level, message);
    }
}
