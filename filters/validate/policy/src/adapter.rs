//! The validation filter as any host drives it (the Proxy-Wasm module and the native Envoy
//! module call these): the pipeline steps of a request and the [`Outcome`] of a validation.
//!
//! - A denial answers with the outcome's problem body (the verbose error list) or the reason's
//!   fixed one, as `application/problem+json` (RFC 9457); a 405 carries `Allow`.
//! - The decision log's detail names the first error's instance pointer, schema location and
//!   keyword (never a value from the request: the policy masks messages, and pointers are
//!   excerpts of at most 120 characters).
//! - A request let through unvalidated (an unknown path or method with `pass`, a fetched
//!   document not loaded yet or a body the host cannot hand over under `failure_mode: allow`) is
//!   counted `gatewarden_validate_unvalidated_<why>` ([`UNVALIDATED`]) and logged at info level.

use std::net::IpAddr;
use std::sync::Arc;

use gatewarden_policy::decision::Decision;
use gatewarden_policy::decision_log::DecisionRecord;
use gatewarden_policy::outcome::{Outcome, Report, ReportLevel};
use gatewarden_policy::pipeline::{Pending, Resumed, Step};
use gatewarden_policy::{FailureMode, FilterPolicy, RequestFacts};

use crate::openapi::OpenApi;
use crate::{BodyInput, BodyPlan, Start, ValidateOutcome, ValidatePolicy, ValidateReason, PROBLEM_JSON};

/// Requests let through without validation, by why (`gatewarden_validate_<counter>`).
pub const UNVALIDATED: [(ValidateReason, &str); 4] = [
    (ValidateReason::UnknownPath, "unvalidated_unknown_path"),
    (ValidateReason::MethodNotAllowed, "unvalidated_method_not_allowed"),
    (ValidateReason::DocumentUnavailable, "unvalidated_document_unavailable"),
    (ValidateReason::BodyUnavailable, "unvalidated_body_unavailable"),
];

/// The documents a request is decided with: rule index → its fetched OpenAPI document, if loaded.
pub type Documents<'a> = &'a dyn Fn(usize) -> Option<Arc<OpenApi>>;

/// The first step of a request: decided on its headers, or waiting for its body.
/// `request_id`: reads `x-request-id` from the host when the facts lack it (log lines only).
pub fn start(
    policy: &ValidatePolicy,
    facts: &RequestFacts<'_>,
    documents: Documents<'_>,
    request_id: &dyn Fn() -> String,
    report: &dyn Report,
) -> Step {
    match policy.start_with(facts, documents) {
        Start::Done(out) => Step::Done(facts_outcome(policy, out, facts, request_id, report)),
        Start::NeedBody(plan) => Step::NeedBody { max_bytes: plan.max_bytes, pending: Pending::new(plan) },
    }
}

/// A decision on the headers alone (a host that cannot wait): a request that needs its body is
/// decided as one whose body the host cannot hand over (503, or through by `failure_mode`).
pub fn decide(
    policy: &ValidatePolicy,
    facts: &RequestFacts<'_>,
    documents: Documents<'_>,
    request_id: &dyn Fn() -> String,
    report: &dyn Report,
) -> Outcome {
    let out = match policy.start_with(facts, documents) {
        Start::Done(out) => out,
        Start::NeedBody(plan) => policy.finish(plan, BodyInput::Unavailable),
    };
    facts_outcome(policy, out, facts, request_id, report)
}

/// The decision once the body came (or did not). `request_id` and `client` read what the log
/// line needs from the host, when it needs them (the request's facts are gone by then).
pub fn resume(
    policy: &ValidatePolicy,
    pending: Pending,
    input: Resumed<'_>,
    request_id: &dyn Fn() -> String,
    client: &dyn Fn() -> Option<IpAddr>,
    report: &dyn Report,
) -> Step {
    let Some(plan) = pending.into_inner::<BodyPlan>() else {
        return Step::Unavailable("validate: resumed with another filter's state");
    };
    let body = match input {
        Resumed::Body(bytes) => BodyInput::Whole(bytes),
        Resumed::NoBody => BodyInput::Absent,
        Resumed::BodyTooLarge { seen } => BodyInput::TooLarge { seen },
        Resumed::BodyUnavailable => BodyInput::Unavailable,
        Resumed::Http { .. } | Resumed::Grpc { .. } | Resumed::Failed(_) => {
            return Step::Unavailable("validate: resumed with a callout answer it never asked for")
        }
    };
    Step::Done(to_outcome(policy, policy.finish(plan, body), request_id, client, report))
}

fn facts_outcome(
    policy: &ValidatePolicy,
    out: ValidateOutcome,
    facts: &RequestFacts<'_>,
    request_id: &dyn Fn() -> String,
    report: &dyn Report,
) -> Outcome {
    let request_id = || facts.header("x-request-id").map_or_else(request_id, str::to_owned);
    let client = || policy.header().client_address.resolve(facts).ok();
    to_outcome(policy, out, &request_id, &client, report)
}

/// The host's outcome of a validation: the problem body, its media type and `Allow` on a
/// denial, the first error in the log's detail; an unvalidated request counted and logged.
/// `client`: the client address for the log line of a denial (called for denials only).
pub fn to_outcome(
    policy: &ValidatePolicy,
    out: ValidateOutcome,
    request_id: &dyn Fn() -> String,
    client: &dyn Fn() -> Option<IpAddr>,
    report: &dyn Report,
) -> Outcome {
    let ValidateOutcome { decision, reason, errors, body, allow, unvalidated, .. } = out;
    // A body the host cannot hand over is the failure mode's to decide, like a fetched
    // document not loaded yet (which the policy decides itself).
    let unvalidated = match reason {
        Some(ValidateReason::BodyUnavailable) if policy.header().failure_mode == FailureMode::Allow => {
            Some(ValidateReason::BodyUnavailable)
        }
        _ => unvalidated,
    };
    if let Some(why) = unvalidated {
        count_unvalidated(policy, &decision, why, &request_id(), report);
        return Outcome::new(Decision::allow(&decision.rule), None, String::new());
    }
    let detail = match errors.first() {
        Some(e) => format!("pointer={}; schema={}; keyword={}", e.instance, e.schema, e.keyword),
        None => String::new(),
    };
    let client = if reason.is_some() { client() } else { None };
    let mut outcome = Outcome::new(decision, client, detail);
    if reason.is_some() {
        outcome.response_headers.push(("content-type".to_owned(), PROBLEM_JSON.to_owned()));
        if let Some(methods) = allow {
            outcome.response_headers.push(("allow".to_owned(), methods.to_string()));
        }
    }
    outcome.body = body;
    outcome
}

/// Counts and logs (info) a request let through without validation.
fn count_unvalidated(policy: &ValidatePolicy, decision: &Decision, why: ValidateReason, request_id: &str, report: &dyn Report) {
    if let Some((_, counter)) = UNVALIDATED.iter().find(|(r, _)| *r == why) {
        report.count(counter);
    }
    let record = DecisionRecord {
        filter: ValidatePolicy::NAME,
        decision: "allow_unvalidated",
        reason: why.as_str(),
        rule: &decision.rule,
        policy_version: &policy.header().policy_version,
        request_id,
        client: "",
        detail: "",
        rollout: "",
    };
    report.log(ReportLevel::Info, format_args!("{record}"));
}

/// The client address of a request decided after its body, whose request facts are gone: the
/// headers the policy's `client_address` settings read (`header`, from the host) and the peer
/// address (`peer`, read only if the settings need it).
pub fn client_from(policy: &ValidatePolicy, header: &dyn Fn(&str) -> Option<String>, peer: &dyn Fn() -> Option<String>) -> Option<IpAddr> {
    let resolver = &policy.header().client_address;
    let mut needs = gatewarden_policy::facts::HeaderNeeds::default();
    resolver.add_needs(&mut needs);
    let headers: Vec<(String, String)> = needs.names().iter().filter_map(|n| header(n).map(|v| (n.clone(), v))).collect();
    let cell = std::cell::OnceCell::new();
    resolver.resolve(&RequestFacts::with_peer_source(&headers, &cell, peer)).ok()
}
