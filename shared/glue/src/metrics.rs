//! Counters `gatewarden_<filter>_<outcome>`, defined once per VM at start.
//!
//! Why a per-VM static: a config update creates a new root context in the same VM; defining the
//! metrics again would be wasted host calls, and the ids stay valid for the VM's life.

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

/// The counter ids of this VM's filter, by outcome (a module is one filter).
#[derive(Default)]
struct Ids {
    filter: String,
    by_outcome: FastMap<String, u32>,
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
        }
        for outcome in names {
            if ids.by_outcome.contains_key(&outcome) {
                continue;
            }
            let name = metric_name(filter, &outcome);
            match host::define_counter(&name) {
                Ok(id) => {
                    ids.by_outcome.insert(outcome, id);
                }
                Err(e) => host::log(host::Level::Warn, &format!("gatewarden: cannot define metric {name}: status {}", e.0)),
            }
        }
    });
}

fn metric_name(filter: &str, outcome: &str) -> String {
    format!("gatewarden_{filter}_{outcome}")
}

/// Adds one to `gatewarden_<filter>_<outcome>`; an undefined name is ignored. No allocation:
/// the id is looked up by outcome.
pub fn count(filter: &str, outcome: &str) {
    let id = IDS.with(|ids| {
        let ids = ids.borrow();
        if ids.filter == filter {
            ids.by_outcome.get(outcome).copied()
        } else {
            None
        }
    });
    if let Some(id) = id {
        let _ = host::increment(id, 1);
    }
}
