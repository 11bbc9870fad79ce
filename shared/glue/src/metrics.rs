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

/// The outcomes every filter counts, beside `denied_<reason>` per reason.
pub const OUTCOMES: &[&str] = &[
    "allowed",
    "denied",
    "dry_run_denied",
    "config_accepted",
    "config_rejected",
    "no_policy",
    "host_error",
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

/// Defines `gatewarden_<filter>_<outcome>` for every outcome, every `denied_<reason>`, and the
/// filter's `extra` counters. Idempotent.
pub fn define(filter: &str, reasons: &[&str], extra: &[&str]) {
    let names = OUTCOMES
        .iter()
        .map(|o| (*o).to_owned())
        .chain(reasons.iter().map(|r| format!("denied_{r}")))
        .chain(reasons.iter().map(|r| format!("dry_run_denied_{r}")))
        .chain(extra.iter().map(|e| (*e).to_owned()));
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
                Err(e) => host::log(host::Level::Warn, &format!("gatewarden: cannot define metric {name}: status {}", e.0)),
            }
        }
    });
}

fn metric_name(filter: &str, outcome: &str) -> String {
    format!("gatewarden_{filter}_{outcome}")
}

/// Adds one to `gatewarden_<filter>_<outcome>` now (one host call); an undefined name is
/// ignored. For rare events; per-request outcomes use [`tally`].
pub fn count(filter: &str, outcome: &str) {
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

/// Adds one to `gatewarden_<filter>_<outcome>` in the VM; the host sees it at the next
/// [`flush`]. No host call, no allocation.
pub fn tally(filter: &str, outcome: &str) {
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
