//! Counters `gatewarden_<filter>_<outcome>`, defined once per VM at start.
//!
//! Why a per-VM static: a config update creates a new root context in the same VM; defining the
//! metrics again would be wasted host calls, and the ids stay valid for the VM's life.

use std::cell::RefCell;
use std::collections::HashMap;

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

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
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
        for outcome in names {
            let name = metric_name(filter, &outcome);
            if ids.contains_key(&name) {
                continue;
            }
            match host::define_counter(&name) {
                Ok(id) => {
                    ids.insert(name, id);
                }
                Err(e) => host::log(host::Level::Warn, &format!("gatewarden: cannot define metric {name}: status {}", e.0)),
            }
        }
    });
}

fn metric_name(filter: &str, outcome: &str) -> String {
    format!("gatewarden_{filter}_{outcome}")
}

/// Adds one to `gatewarden_<filter>_<outcome>`; an undefined name is ignored.
pub fn count(filter: &str, outcome: &str) {
    let name = metric_name(filter, outcome);
    let id = IDS.with(|ids| ids.borrow().get(&name).copied());
    if let Some(id) = id {
        let _ = host::increment(id, 1);
    }
}
