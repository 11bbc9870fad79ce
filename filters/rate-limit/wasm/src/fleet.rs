//! Fleet limits in the glue: the policy's fleet steps ([`gatewarden_rate_limit_policy::fleet`]) as
//! pipeline steps. The policy builds the request and reads the answer; this module only sends it
//! (Envoy: `dispatch_grpc_call` with the bare protobuf message; Kong's engine, or `protocol: http`:
//! `POST /json` with protojson) and hands the answer back.
//!
//! **Leases** live in the policy state (one [`Leases`] table per VM and compiled policy, at most
//! [`gatewarden_rate_limit_policy::fleet::MAX_LEASES`] keys): a policy update starts with none,
//! which forfeits the units still held (the fleet admits less, never more).
//!
//! **Counters** (`gatewarden_rate_limit_<name>`): `fleet_calls` (calls made), `fleet_lease_spent`
//! (requests admitted from a lease, no call), `fleet_lease_refused` (denied without a call: the
//! service refused the key a moment ago), `fleet_failure_allow` / `_deny` / `_local`
//! (no usable answer, and what `fleet.failure_mode` did); the glue's `callout_*` counters say why
//! a call failed, `denied_fleet_limited` counts the service's denials. A failure is also logged
//! (warn) with its reason.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

use gatewarden_glue::host::{self, HostKind, Level};
use gatewarden_glue::metrics::{self, Counter};
use gatewarden_glue::pipeline::{Callout, GrpcCallout, HostCaps, HttpCallout, Pending, Resumed, Step};
use gatewarden_policy::FilterPolicy;
use gatewarden_rate_limit_policy::fleet::{
    self, FleetAnswer, FleetCheck, FleetFailure, FleetNote, FleetPending, FleetStep, Leases, Proxy, MAX_ANSWER_BYTES,
};
use gatewarden_rate_limit_policy::rls::{self, json};
use gatewarden_rate_limit_policy::{FleetFailureMode, FleetProtocol, RateLimitPolicy};

use crate::FILTER;

pub const CALLS: Counter = Counter::filter("fleet_calls");
pub const LEASE_SPENT: Counter = Counter::filter("fleet_lease_spent");
pub const LEASE_REFUSED: Counter = Counter::filter("fleet_lease_refused");
pub const FAILURE_ALLOW: Counter = Counter::filter("fleet_failure_allow");
pub const FAILURE_DENY: Counter = Counter::filter("fleet_failure_deny");
pub const FAILURE_LOCAL: Counter = Counter::filter("fleet_failure_local");

/// The counters this module increments, for `Enforcer::extra_counters`.
pub fn counters() -> Vec<String> {
    [CALLS, LEASE_SPENT, LEASE_REFUSED, FAILURE_ALLOW, FAILURE_DENY, FAILURE_LOCAL].iter().map(|c| c.name().to_owned()).collect()
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

/// Refuses, at configure time, a fleet section this host cannot call (see `Fleet::target`) when
/// some limit needs it (a section for the other proxy only, with no fleet limit, is accepted).
pub fn check_host(policy: &RateLimitPolicy, caps: &HostCaps) -> Result<(), String> {
    match policy.fleet() {
        Some(f) if !policy.fleet_limits().is_empty() => f.target(proxy_of(caps)).map(|_| ()),
        _ => Ok(()),
    }
}

/// The host clock in µs since the Unix epoch.
pub fn now_us() -> u64 {
    host::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The first step of a request its local limits admitted (`check` from the policy's decision).
pub fn start(policy: &RateLimitPolicy, leases: &RefCell<Leases>, check: FleetCheck) -> Step {
    let Some(f) = policy.fleet() else { return Step::Unavailable("rate_limit: a fleet check without a fleet section") };
    let step = fleet::start(f, check, &mut leases.borrow_mut(), now_us());
    to_step(policy, step)
}

/// The next step once the service answered (or did not).
pub fn resume(policy: &RateLimitPolicy, leases: &RefCell<Leases>, pending: Pending, input: Resumed<'_>) -> Step {
    let Some(pending) = pending.into_inner::<FleetPending>() else {
        return Step::Unavailable("rate_limit: resumed with another filter's state");
    };
    let Some(f) = policy.fleet() else { return Step::Unavailable("rate_limit: a fleet check without a fleet section") };
    let answer = match input {
        Resumed::Grpc { status, message } => FleetAnswer::from_grpc(status, message),
        Resumed::Http { status, body, .. } => FleetAnswer::from_http(status, body),
        Resumed::Failed(why) => FleetAnswer::Failed(FleetFailure::Call(why.as_str())),
        _ => return Step::Unavailable("rate_limit: resumed with a body it never asked for"),
    };
    let mut table = crate::SharedTable::new(policy.max_keys());
    let step = fleet::resume(f, pending, answer, &mut leases.borrow_mut(), now_us(), &mut table, policy.header().failure_mode);
    table.report();
    to_step(policy, step)
}

fn to_step(policy: &RateLimitPolicy, step: FleetStep) -> Step {
    match step {
        FleetStep::Done { outcome, note } => {
            match &note {
                FleetNote::Lease => metrics::tally(FILTER, LEASE_SPENT),
                FleetNote::Refused => metrics::tally(FILTER, LEASE_REFUSED),
                FleetNote::Failed { failure, mode } => {
                    let (counter, word) = match mode {
                        FleetFailureMode::Allow => (FAILURE_ALLOW, "allow"),
                        FleetFailureMode::Deny => (FAILURE_DENY, "deny"),
                        FleetFailureMode::Local => (FAILURE_LOCAL, "local"),
                    };
                    metrics::tally(FILTER, counter);
                    host::log(
                        Level::Warn,
                        format_args!(
                            "gatewarden {FILTER}: rate limit service gave no usable answer ({failure}); fleet failure_mode {word} decides (rule {}, policy {})",
                            outcome.decision.rule,
                            policy.header().policy_version
                        ),
                    );
                }
                FleetNote::NotChecked | FleetNote::Answered => {}
            }
            Step::Done(crate::to_outcome(outcome, Some(&note)))
        }
        FleetStep::Call(call) => {
            let Some(f) = policy.fleet() else { return Step::Unavailable("rate_limit: a fleet check without a fleet section") };
            // Checked at configure time (`check_host`); an error here is a bug: fail closed.
            let Ok(target) = f.target(proxy()) else { return Step::Unavailable("rate_limit: no fleet target on this host") };
            metrics::tally(FILTER, CALLS);
            let callout = match target.protocol {
                FleetProtocol::Grpc => Callout::Grpc(GrpcCallout {
                    upstream: target.upstream,
                    service: rls::GRPC_SERVICE.to_owned(),
                    method: rls::GRPC_METHOD.to_owned(),
                    metadata: Vec::new(),
                    message: rls::encode_request(&call.request),
                    timeout: target.timeout,
                    max_response_bytes: MAX_ANSWER_BYTES,
                }),
                FleetProtocol::Http => Callout::Http(HttpCallout {
                    upstream: target.upstream,
                    headers: vec![
                        (":method".to_owned(), "POST".to_owned()),
                        (":path".to_owned(), rls::JSON_PATH.to_owned()),
                        (":authority".to_owned(), target.authority),
                        ("content-type".to_owned(), "application/json".to_owned()),
                    ],
                    body: json::request_to_json(&call.request).into_bytes(),
                    timeout: target.timeout,
                    max_response_bytes: MAX_ANSWER_BYTES,
                }),
            };
            Step::Call { call: callout, pending: Pending::new(call.pending) }
        }
    }
}
