//! Request validation, natively: the body is buffered by Envoy for this filter while it waits
//! (the runtime's `Step::NeedBody`), and the compiled schemas exist once per process. A policy
//! whose OpenAPI document is fetched (`openapi.source`) is refused: the native module does not
//! fetch remote resources yet (inline documents work).

use std::net::IpAddr;
use std::time::Duration;

use gatewarden_glue::decision_log::DecisionRecord;
use gatewarden_glue::pipeline::{HostCaps, Pending, Resumed, Step};
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_native::envoy::{self, Level};
use gatewarden_native::runtime::tally;
use gatewarden_policy::decision::Decision;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FailureMode, FilterPolicy, RequestFacts};
use gatewarden_validate_policy::{BodyInput, BodyPlan, Start, ValidateOutcome, ValidatePolicy, ValidateReason, PROBLEM_JSON};

const FILTER: &str = ValidatePolicy::NAME;

/// Requests let through without validation, by why (`gatewarden_validate_unvalidated_<why>`).
const UNVALIDATED: [(ValidateReason, &str); 4] = [
    (ValidateReason::UnknownPath, "unvalidated_unknown_path"),
    (ValidateReason::MethodNotAllowed, "unvalidated_method_not_allowed"),
    (ValidateReason::DocumentUnavailable, "unvalidated_document_unavailable"),
    (ValidateReason::BodyUnavailable, "unvalidated_body_unavailable"),
];

pub struct Validate;

impl Enforcer for Validate {
    type Policy = ValidatePolicy;
    type PolicyState = ();
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        ValidateReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        UNVALIDATED.iter().map(|(_, c)| (*c).to_owned()).collect()
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &ValidatePolicy) -> Option<Duration> {
        None
    }

    fn check_host(policy: &ValidatePolicy, host: &HostCaps) -> Result<(), String> {
        match policy.remote_documents().first() {
            Some(d) => Err(format!(
                "rules[{}].openapi.source: a fetched OpenAPI document is not available in the {} module yet",
                d.rule, host.name
            )),
            None => Ok(()),
        }
    }

    fn header_needs(policy: &ValidatePolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn reads_all_headers(policy: &ValidatePolicy) -> bool {
        policy.reads_all_headers()
    }

    fn policy_state(_policy: &ValidatePolicy) {}

    fn decide(policy: &ValidatePolicy, _state: &(), facts: &RequestFacts<'_>) -> Outcome {
        let out = match policy.start_with(facts, &|_| None) {
            Start::Done(out) => out,
            Start::NeedBody(plan) => policy.finish(plan, BodyInput::Unavailable),
        };
        to_outcome(policy, out, facts.header("x-request-id"), || client_of(policy, facts))
    }

    fn start(policy: &ValidatePolicy, _state: &(), facts: &RequestFacts<'_>) -> Step {
        match policy.start_with(facts, &|_| None) {
            Start::Done(out) => Step::Done(to_outcome(policy, out, facts.header("x-request-id"), || client_of(policy, facts))),
            Start::NeedBody(plan) => Step::NeedBody { max_bytes: plan.max_bytes, pending: Pending::new(plan) },
        }
    }

    fn resume(policy: &ValidatePolicy, _state: &(), pending: Pending, input: Resumed<'_>) -> Step {
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
        Step::Done(to_outcome(policy, policy.finish(plan, body), None, || None))
    }
}

/// The runtime's outcome of a validation (as the Wasm module's): the problem body, its media type
/// and `Allow` on a denial, the first error in the log's detail; an unvalidated request counted
/// and logged.
fn to_outcome(policy: &ValidatePolicy, out: ValidateOutcome, request_id: Option<&str>, client: impl FnOnce() -> Option<IpAddr>) -> Outcome {
    let ValidateOutcome { decision, reason, errors, body, allow, unvalidated, .. } = out;
    let unvalidated = match reason {
        Some(ValidateReason::BodyUnavailable) if policy.header().failure_mode == FailureMode::Allow => {
            Some(ValidateReason::BodyUnavailable)
        }
        _ => unvalidated,
    };
    if let Some(why) = unvalidated {
        count_unvalidated(policy, &decision, why, request_id.unwrap_or(""));
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

fn client_of(policy: &ValidatePolicy, facts: &RequestFacts<'_>) -> Option<IpAddr> {
    policy.header().client_address.resolve(facts).ok()
}

fn count_unvalidated(policy: &ValidatePolicy, decision: &Decision, why: ValidateReason, request_id: &str) {
    if let Some((_, counter)) = UNVALIDATED.iter().find(|(r, _)| *r == why) {
        tally(counter);
    }
    let record = DecisionRecord {
        filter: FILTER,
        decision: "allow_unvalidated",
        reason: why.as_str(),
        rule: &decision.rule,
        policy_version: &policy.header().policy_version,
        request_id,
        client: "",
        detail: "",
        rollout: "",
    };
    envoy::log(Level::Info, format_args!("{record}"));
}
