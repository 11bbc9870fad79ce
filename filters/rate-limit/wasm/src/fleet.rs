//! Fleet limits in the glue: the policy's fleet steps ([`gatewarden_rate_limit_policy::fleet`]) as
//! pipeline steps. The policy builds the request and reads the answer; this module only sends it
//! (Envoy: `dispatch_grpc_call` with the bare protobuf message; Kong's engine, or `protocol: http`:
//! `POST /json` with protojson) and hands the answer back.
//!
//! **Leases** live in the policy state (one [`Leases`] table per VM and compiled policy, at most
//! [`gatewarden_rate_limit_policy::fleet::MAX_LEASES`] keys): a policy update starts with none,
//! which forfeits the units still held (the fleet admits less, never more).
//!
//! **Counters**: the policy adapter's ([`gatewarden_rate_limit_policy::adapter`]); the glue's
//! `callout_*` counters say why a call failed, `denied_fleet_limited` counts the service's denials.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

use gatewarden_glue::host::{self, HostKind};
use gatewarden_glue::metrics::WasmReport;
use gatewarden_glue::pipeline::{HostCaps, Pending, Resumed, Step};
use gatewarden_rate_limit_policy::adapter::{self, FLEET_COUNTERS};
use gatewarden_rate_limit_policy::fleet::{FleetCheck, Leases, Proxy};
use gatewarden_rate_limit_policy::RateLimitPolicy;

use crate::FILTER;

/// The counters this module increments, for `Enforcer::extra_counters`.
pub fn counters() -> Vec<String> {
    FLEET_COUNTERS.iter().map(|c| (*c).to_owned()).collect()
}

fn proxy_of(caps: &HostCaps) -> Proxy {
    if *caps == HostCaps::NGX_WASM_MODULE {
        Proxy::NgxWasmModule
    } else {
        Proxy::Envoy
    }
}

fn proxy() -> Proxy {
    match host::host_kind() {
        HostKind::Envoy => Proxy::Envoy,
        HostKind::NgxWasmModule => Proxy::NgxWasmModule,
    }
}

/// Refuses, at configure time, a fleet section this host cannot call.
pub fn check_host(policy: &RateLimitPolicy, caps: &HostCaps) -> Result<(), String> {
    adapter::check_host(policy, proxy_of(caps))
}

/// The host clock in µs since the Unix epoch.
pub fn now_us() -> u64 {
    host::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The first step of a request its local limits admitted (`check` from the policy's decision).
pub fn start(policy: &RateLimitPolicy, leases: &RefCell<Leases>, check: FleetCheck) -> Step {
    let Ok(mut leases) = leases.try_borrow_mut() else { return Step::Unavailable("rate_limit: the fleet leases are busy") };
    adapter::fleet_start(policy, &mut leases, check, now_us(), proxy(), &WasmReport(FILTER))
}

/// The next step once the service answered (or did not).
pub fn resume(policy: &RateLimitPolicy, leases: &RefCell<Leases>, pending: Pending, input: Resumed<'_>) -> Step {
    let Ok(mut leases) = leases.try_borrow_mut() else { return Step::Unavailable("rate_limit: the fleet leases are busy") };
    let mut table = crate::SharedTable::new(policy.max_keys());
    let step = adapter::fleet_resume(policy, &mut leases, pending, input, now_us(), &mut table, proxy(), &WasmReport(FILTER));
    table.report();
    step
}
