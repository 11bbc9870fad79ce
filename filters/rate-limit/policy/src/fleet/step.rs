//! One request's fleet check: from the check `decide` leaves, through one or two calls (lease
//! mode), to the outcome (see the module docs of [`crate::fleet`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use gatewarden_policy::decision::Decision;
use gatewarden_policy::document::FailureMode;

use super::{descriptors, Fleet, FleetLimits};
use crate::config::{FleetFailureMode, HeaderStyle};
use crate::gcra::{self, Limit};
use crate::key::{mix, BucketKey};
use crate::policy::{Buckets, RateLimitOutcome, RateLimitReason};
use crate::response::{self, LimitStatus, PROBLEM_JSON};
use crate::rls::{self, Code, DescriptorStatus, RateLimitRequest, RateLimitResponse};
use crate::table::charge;

/// Mixed into a key's fingerprint for the local-table bucket of its fleet limits (`failure_mode:
/// local`), so it never shares a slot with the key's local limits.
const FALLBACK_SALT: u64 = 0x666c_6565_745f_6c6f; // "fleet_lo"

/// One limit's state for the response headers, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedStatus {
    pub name: Arc<str>,
    pub limit: Limit,
    pub remaining: u64,
    pub reset_us: u64,
}

/// What `decide` leaves to the fleet: a request its local limits admitted (and charged) whose
/// rule has fleet limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCheck {
    pub rule: Arc<str>,
    pub limits: FleetLimits,
    pub key: BucketKey,
    /// The descriptor entries of the key parts ([`super::key_entries`]).
    pub key_entries: Vec<(String, String)>,
    pub cost: u64,
    /// The local limits' states after the charge (for the headers).
    pub local: Vec<OwnedStatus>,
    pub headers: HeaderStyle,
    pub headers_on_allowed: bool,
    /// The client address, for the log line of a denial (set by `decide`).
    pub client: Option<IpAddr>,
}

/// A call to make, and what to resume with.
#[derive(Debug)]
pub struct FleetCall {
    pub request: RateLimitRequest,
    pub pending: FleetPending,
}

/// A request waiting for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPending {
    pub check: FleetCheck,
    /// The `hits_addend` asked.
    pub asked: u64,
    /// Whether it asked for a lease (more than the cost).
    pub lease: bool,
}

/// What happened on the fleet side, for counters and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetNote {
    /// Not sent: the request costs nothing.
    NotChecked,
    /// Admitted from this worker's lease, no call.
    Lease,
    /// Denied without a call: the service refused this key a moment ago (lease mode).
    Refused,
    /// The service answered.
    Answered,
    /// No usable answer: `mode` decided.
    Failed { failure: FleetFailure, mode: FleetFailureMode },
}

/// What a fleet check does next.
#[derive(Debug)]
pub enum FleetStep {
    Done { outcome: RateLimitOutcome, note: FleetNote },
    Call(FleetCall),
}

/// Why a call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetFailure {
    /// No answer: the glue's word (`timeout`, `failed`, `dispatch_failed`, `too_large`).
    Call(&'static str),
    /// A gRPC status other than OK.
    GrpcStatus(u32),
    /// An answer that could not be read (the decoder's message).
    Unreadable(String),
    /// An answer whose overall code is `UNKNOWN` (or a number this crate does not know).
    UnknownCode,
}

impl FleetFailure {
    /// The short word for counters and the log: `timeout`, `failed`, `grpc_status`, …
    pub fn kind(&self) -> &'static str {
        match self {
            FleetFailure::Call(w) => w,
            FleetFailure::GrpcStatus(_) => "grpc_status",
            FleetFailure::Unreadable(_) => "unreadable",
            FleetFailure::UnknownCode => "unknown_code",
        }
    }
}

impl fmt::Display for FleetFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetFailure::Call(w) => write!(f, "call {w}"),
            FleetFailure::GrpcStatus(s) => write!(f, "grpc status {s}"),
            FleetFailure::Unreadable(e) => write!(f, "{e}"),
            FleetFailure::UnknownCode => f.write_str("answer with overall code UNKNOWN"),
        }
    }
}

/// The service's answer, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetAnswer {
    Response(RateLimitResponse),
    Failed(FleetFailure),
}

impl FleetAnswer {
    /// A gRPC answer: status 0 and the message (no frame header), or an error status.
    pub fn from_grpc(status: u32, message: &[u8]) -> FleetAnswer {
        if status != 0 {
            return FleetAnswer::Failed(FleetFailure::GrpcStatus(status));
        }
        match rls::decode_response(message) {
            Ok(r) => FleetAnswer::Response(r),
            Err(e) => FleetAnswer::Failed(FleetFailure::Unreadable(e.to_string())),
        }
    }

    /// An answer of `POST /json` (see [`rls::json::response_from_http`]).
    pub fn from_http(status: u16, body: &[u8]) -> FleetAnswer {
        match rls::json::response_from_http(status, body) {
            Ok(r) => FleetAnswer::Response(r),
            Err(e) => FleetAnswer::Failed(FleetFailure::Unreadable(e.to_string())),
        }
    }
}

/// The first step of a fleet check at `now_us`: spend from the lease, or ask.
pub fn start(fleet: &Fleet, check: FleetCheck, leases: &mut super::Leases, now_us: u64) -> FleetStep {
    if check.cost == 0 {
        return FleetStep::Done { outcome: allowed(&check, None), note: FleetNote::NotChecked };
    }
    if let Some(lease) = fleet.lease {
        if leases.spend(check.key.fingerprint, check.cost, now_us) {
            return FleetStep::Done { outcome: allowed(&check, None), note: FleetNote::Lease };
        }
        if let Some(r) = leases.refused(check.key.fingerprint, now_us) {
            let violated =
                check.limits.iter().enumerate().filter(|(i, _)| r.violated & (1 << i) != 0).map(|(_, (n, _))| Arc::clone(n)).collect();
            let outcome = limited(&check, violated, Some(r.until_us - now_us), &check.local);
            return FleetStep::Done { outcome, note: FleetNote::Refused };
        }
        let units = u64::from(lease.units);
        if check.cost < units {
            return ask(fleet, check, units, true);
        }
    }
    let cost = check.cost;
    ask(fleet, check, cost, false)
}

fn ask(fleet: &Fleet, check: FleetCheck, asked: u64, lease: bool) -> FleetStep {
    let request = RateLimitRequest {
        domain: fleet.domain.clone(),
        descriptors: descriptors(&check.rule, &check.limits, &check.key_entries),
        hits_addend: u32::try_from(asked).unwrap_or(u32::MAX),
    };
    FleetStep::Call(FleetCall { request, pending: FleetPending { check, asked, lease } })
}

/// The next step once the call of `pending` ended with `answer` at `now_us`. `buckets` and
/// `table_failure` (the policy's `failure_mode`) serve `failure_mode: local`.
pub fn resume(
    fleet: &Fleet,
    pending: FleetPending,
    answer: FleetAnswer,
    leases: &mut super::Leases,
    now_us: u64,
    buckets: &mut dyn Buckets,
    table_failure: FailureMode,
) -> FleetStep {
    let FleetPending { check, asked, lease } = pending;
    let response = match answer {
        FleetAnswer::Response(r) => r,
        FleetAnswer::Failed(failure) => return failed(fleet, &check, failure, now_us, buckets, table_failure),
    };
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => {
            if lease {
                if let Some(l) = fleet.lease {
                    leases.grant(check.key.fingerprint, asked.saturating_sub(check.cost), now_us, now_us.saturating_add(l.lease_us));
                }
            }
            let outcome = allowed(&check, (!lease).then_some(&response));
            FleetStep::Done { outcome, note: FleetNote::Answered }
        }
        Ok(Code::OverLimit) => {
            // A lease of `asked` units was refused: ask for just the cost, unless a status already
            // says fewer units than that are left (one call saved under overload).
            if lease && !short_of(&response, check.cost) {
                let cost = check.cost;
                return ask(fleet, check, cost, false);
            }
            if let Some(l) = fleet.lease {
                remember_refusal(&check, &response, l.lease_us, leases, now_us);
            }
            FleetStep::Done { outcome: denied(&check, &response), note: FleetNote::Answered }
        }
        _ => failed(fleet, &check, FleetFailure::UnknownCode, now_us, buckets, table_failure),
    }
}

/// Lease mode: the key's requests are refused without a call for the shortest emission interval
/// `T` of the limits that refused (at most `lease_us`). The binding limit gives a unit back within
/// its own `T` and its bucket cannot fill up meanwhile (it holds fewer units than the cost refused),
/// so no unit is lost: a request after the refusal finds it. The bit mask (a rule has at most 8
/// limits) names the limits in the 429s given meanwhile; all of them when no status said.
fn remember_refusal(check: &FleetCheck, response: &RateLimitResponse, lease_us: u64, leases: &mut super::Leases, now_us: u64) {
    let mut violated = 0u8;
    for (i, (_, s)) in check.limits.iter().zip(&response.statuses).enumerate() {
        if s.code() == Code::OverLimit && i < 8 {
            violated |= 1 << i;
        }
    }
    if violated == 0 {
        violated = u8::MAX;
    }
    let hold = check
        .limits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 8 && violated & (1 << i) != 0)
        .map(|(_, (_, l))| l.emission_us)
        .min()
        .unwrap_or(0)
        .min(lease_us);
    leases.refuse(check.key.fingerprint, now_us, now_us.saturating_add(hold), violated);
}

/// Whether a status of a limit known to the service says fewer than `cost` units are left.
fn short_of(response: &RateLimitResponse, cost: u64) -> bool {
    response.statuses.iter().any(|s| s.code() == Code::OverLimit && s.current_limit.is_some() && u64::from(s.limit_remaining) < cost)
}

fn base(check: &FleetCheck, decision: Decision, reason: Option<RateLimitReason>) -> RateLimitOutcome {
    RateLimitOutcome {
        decision,
        reason,
        body: None,
        response_headers: Vec::new(),
        key: Some(check.key.clone()),
        cost: Some(check.cost),
        violated: Vec::new(),
        fleet: None,
        client: check.client,
    }
}

fn statuses(list: &[OwnedStatus]) -> Vec<LimitStatus<'_>> {
    list.iter().map(|s| LimitStatus { name: &s.name, limit: &s.limit, remaining: s.remaining, reset_us: s.reset_us }).collect()
}

fn duration_us(d: &rls::Duration) -> u64 {
    let s = u64::try_from(d.seconds).unwrap_or(0);
    let n = u64::try_from(d.nanos).unwrap_or(0);
    s.saturating_mul(gcra::US_PER_SECOND).saturating_add(n / 1_000)
}

/// The fleet limits' states from an answer's statuses (index i for limit i; a status without a
/// `current_limit` says nothing).
fn fleet_statuses(check: &FleetCheck, response: &RateLimitResponse) -> Vec<OwnedStatus> {
    check
        .limits
        .iter()
        .zip(&response.statuses)
        .filter(|(_, s)| s.current_limit.is_some())
        .map(|((name, limit), s)| OwnedStatus {
            name: Arc::clone(name),
            limit: *limit,
            remaining: u64::from(s.limit_remaining).min(limit.burst),
            reset_us: s.duration_until_reset.as_ref().map_or(0, duration_us),
        })
        .collect()
}

/// Allowed; with `headers_on_allowed`, the local limits' headers and the fleet limits' from
/// `response` (none from a lease or a failure: the fleet state is not known then).
fn allowed(check: &FleetCheck, response: Option<&RateLimitResponse>) -> RateLimitOutcome {
    let mut out = base(check, Decision::allow(&check.rule), None);
    if check.headers_on_allowed {
        let mut all = check.local.clone();
        if let Some(r) = response {
            all.extend(fleet_statuses(check, r));
        }
        out.response_headers = response::rate_limit_headers(check.headers, &statuses(&all));
    }
    out
}

/// Denied by the service: 429 naming the limits whose status is `OVER_LIMIT` (all fleet limits of
/// the rule if the statuses do not say), `Retry-After` the longest of their `duration_until_reset`.
fn denied(check: &FleetCheck, response: &RateLimitResponse) -> RateLimitOutcome {
    let over: Vec<(&(Arc<str>, Limit), &DescriptorStatus)> =
        check.limits.iter().zip(&response.statuses).filter(|(_, s)| s.code() == Code::OverLimit).collect();
    let violated: Vec<Arc<str>> = if over.is_empty() {
        check.limits.iter().map(|(n, _)| Arc::clone(n)).collect()
    } else {
        over.iter().map(|((n, _), _)| Arc::clone(n)).collect()
    };
    let retry = over.iter().filter_map(|(_, s)| s.duration_until_reset.as_ref().map(duration_us)).max();
    let mut all = check.local.clone();
    all.extend(fleet_statuses(check, response));
    limited(check, violated, retry, &all)
}

fn limited(check: &FleetCheck, violated: Vec<Arc<str>>, retry_us: Option<u64>, all: &[OwnedStatus]) -> RateLimitOutcome {
    let reason = RateLimitReason::FleetLimited;
    let names: Vec<&str> = violated.iter().map(|n| &**n).collect();
    let mut headers = vec![("content-type".to_owned(), PROBLEM_JSON.to_owned())];
    if let Some(us) = retry_us {
        headers.push(response::retry_after(us));
    }
    headers.extend(response::rate_limit_headers(check.headers, &statuses(all)));
    RateLimitOutcome {
        body: Some(response::problem_body(&names)),
        response_headers: headers,
        violated,
        ..base(check, Decision::deny(&check.rule, reason.denial()), Some(reason))
    }
}

fn failed(
    fleet: &Fleet,
    check: &FleetCheck,
    failure: FleetFailure,
    now_us: u64,
    buckets: &mut dyn Buckets,
    table_failure: FailureMode,
) -> FleetStep {
    let mode = fleet.failure_mode;
    let outcome = match mode {
        FleetFailureMode::Allow => allowed(check, None),
        FleetFailureMode::Deny => {
            let reason = RateLimitReason::FleetUnavailable;
            base(check, Decision::deny(&check.rule, reason.denial()), Some(reason))
        }
        FleetFailureMode::Local => local(check, now_us, buckets, table_failure),
    };
    FleetStep::Done { outcome, note: FleetNote::Failed { failure, mode } }
}

/// `failure_mode: local`: the fleet limits checked in the local key table, as local limits of
/// their own key (the request's fingerprint mixed with [`FALLBACK_SALT`]).
fn local(check: &FleetCheck, now_us: u64, buckets: &mut dyn Buckets, table_failure: FailureMode) -> RateLimitOutcome {
    let fingerprint = mix(check.key.fingerprint ^ FALLBACK_SALT).max(1);
    let Ok(r) = charge(buckets, fingerprint, now_us, &check.limits, check.cost) else {
        return match table_failure {
            FailureMode::Deny => {
                let reason = RateLimitReason::TableFull;
                base(check, Decision::deny(&check.rule, reason.denial()), Some(reason))
            }
            FailureMode::Allow => allowed(check, None),
        };
    };
    let fleet_local: Vec<OwnedStatus> = check
        .limits
        .iter()
        .zip(&r.states)
        .map(|((name, limit), s)| OwnedStatus {
            name: Arc::clone(name),
            limit: *limit,
            remaining: gcra::remaining(*s, now_us, limit),
            reset_us: gcra::reset_us(*s, now_us),
        })
        .collect();
    let mut all = check.local.clone();
    all.extend(fleet_local);
    if r.admitted() {
        let mut out = base(check, Decision::allow(&check.rule), None);
        if check.headers_on_allowed {
            out.response_headers = response::rate_limit_headers(check.headers, &statuses(&all));
        }
        return out;
    }
    let violated = r.denied.iter().filter_map(|&i| check.limits.get(i).map(|(n, _)| Arc::clone(n))).collect();
    limited(check, violated, r.retry_after_us, &all)
}
