//! The rate-limit filter as any host drives it (the Proxy-Wasm module and the native Envoy
//! module call these): the [`Outcome`] of a decision, and the fleet steps as pipeline [`Step`]s.
//! The policy builds the service request and reads the answer; the host only sends it
//! (gRPC: the bare protobuf message; `protocol: http`: `POST /json` with protojson).
//!
//! **Counters** (`gatewarden_rate_limit_<name>`, [`FLEET_COUNTERS`]): `fleet_calls` (calls made),
//! `fleet_lease_spent` (requests admitted from a lease, no call), `fleet_lease_refused` (denied
//! without a call: the service refused the key a moment ago), `fleet_failure_allow` / `_deny` /
//! `_local` (no usable answer, and what `fleet.failure_mode` did). A failure is also logged (warn)
//! with its reason.

use gatewarden_policy::outcome::{Outcome, Report, ReportLevel};
use gatewarden_policy::pipeline::{Callout, GrpcCallout, HttpCallout, Pending, Resumed, Step};
use gatewarden_policy::{FailureMode, FilterPolicy, Verdict};

use crate::fleet::{self, FleetAnswer, FleetCheck, FleetFailure, FleetNote, FleetPending, FleetStep, Leases, Proxy, MAX_ANSWER_BYTES};
use crate::rls::{self, json};
use crate::{Buckets, FleetFailureMode, FleetProtocol, RateLimitOutcome, RateLimitPolicy, RateLimitReason};

/// The counters of the fleet steps, for a host's extra counters.
pub const FLEET_COUNTERS: [&str; 6] =
    ["fleet_calls", "fleet_lease_spent", "fleet_lease_refused", "fleet_failure_allow", "fleet_failure_deny", "fleet_failure_local"];

/// Refuses, at configure time, a fleet section `proxy` cannot call (see `Fleet::target`) when
/// some limit needs it (a section for the other proxy only, with no fleet limit, is accepted).
pub fn check_host(policy: &RateLimitPolicy, proxy: Proxy) -> Result<(), String> {
    match policy.fleet() {
        Some(f) if !policy.fleet_limits().is_empty() => f.target(proxy).map(|_| ()),
        _ => Ok(()),
    }
}

/// The first step of a request its local limits admitted (`check` from the policy's decision).
pub fn fleet_start(
    policy: &RateLimitPolicy,
    leases: &mut Leases,
    check: FleetCheck,
    now_us: u64,
    proxy: Proxy,
    report: &dyn Report,
) -> Step {
    let Some(f) = policy.fleet() else { return Step::Unavailable("rate_limit: a fleet check without a fleet section") };
    to_step(policy, fleet::start(f, check, leases, now_us), proxy, report)
}

/// The next step once the service answered (or did not); `buckets` is the host's key table (a
/// failed call may fall back to the local limits).
#[allow(clippy::too_many_arguments)]
pub fn fleet_resume(
    policy: &RateLimitPolicy,
    leases: &mut Leases,
    pending: Pending,
    input: Resumed<'_>,
    now_us: u64,
    buckets: &mut dyn Buckets,
    proxy: Proxy,
    report: &dyn Report,
) -> Step {
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
    let table_failure: FailureMode = policy.header().failure_mode;
    to_step(policy, fleet::resume(f, pending, answer, leases, now_us, buckets, table_failure), proxy, report)
}

fn to_step(policy: &RateLimitPolicy, step: FleetStep, proxy: Proxy, report: &dyn Report) -> Step {
    match step {
        FleetStep::Done { outcome, note } => {
            match &note {
                FleetNote::Lease => report.count("fleet_lease_spent"),
                FleetNote::Refused => report.count("fleet_lease_refused"),
                FleetNote::Failed { failure, mode } => {
                    let (counter, word) = match mode {
                        FleetFailureMode::Allow => ("fleet_failure_allow", "allow"),
                        FleetFailureMode::Deny => ("fleet_failure_deny", "deny"),
                        FleetFailureMode::Local => ("fleet_failure_local", "local"),
                    };
                    report.count(counter);
                    report.log(
                        ReportLevel::Warn,
                        format_args!(
                            "gatewarden {}: rate limit service gave no usable answer ({failure}); fleet failure_mode {word} decides (rule {}, policy {})",
                            RateLimitPolicy::NAME,
                            outcome.decision.rule,
                            policy.header().policy_version
                        ),
                    );
                }
                FleetNote::NotChecked | FleetNote::Answered => {}
            }
            Step::Done(to_outcome(outcome, Some(&note)))
        }
        FleetStep::Call(call) => {
            let Some(f) = policy.fleet() else { return Step::Unavailable("rate_limit: a fleet check without a fleet section") };
            // Checked at configure time (`check_host`); an error here is a bug: fail closed.
            let Ok(target) = f.target(proxy) else { return Step::Unavailable("rate_limit: no fleet target on this host") };
            report.count("fleet_calls");
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

/// The host's outcome of a decision; `note` says what the fleet check did, if any.
pub fn to_outcome(out: RateLimitOutcome, note: Option<&FleetNote>) -> Outcome {
    // The detail is for the denial log line only: no formatting on the allow path.
    let scope = match (out.reason, note) {
        (Some(RateLimitReason::FleetLimited), Some(FleetNote::Failed { .. })) => " scope=fleet(local fallback)",
        (Some(RateLimitReason::FleetLimited), _) => " scope=fleet",
        (Some(RateLimitReason::FleetUnavailable), _) => " scope=fleet",
        // A local limit's denial keeps its detail as before (`key=… limits=…`).
        _ => "",
    };
    let failure = match note {
        Some(FleetNote::Failed { failure, .. }) => format!(" fleet_failure={}", failure.kind()),
        _ => String::new(),
    };
    let detail = match (&out.decision.verdict, &out.key) {
        (Verdict::Deny(_), Some(k)) if !out.violated.is_empty() => {
            let names: Vec<&str> = out.violated.iter().map(|n| &**n).collect();
            format!("key={:016x} limits={}{scope}{failure}", k.fingerprint, names.join(","))
        }
        (Verdict::Deny(_), Some(k)) => format!("key={:016x}{scope}{failure}", k.fingerprint),
        _ => String::new(),
    };
    let denied = matches!(out.decision.verdict, Verdict::Deny(_));
    let mut outcome = Outcome::new(out.decision, out.client, detail);
    if denied {
        // The 429's problem+json body names the violated limits; its content type is in the headers.
        outcome.body = out.body;
        outcome.response_headers = out.response_headers;
    } else {
        outcome.allowed_response_headers = out.response_headers;
    }
    outcome
}
