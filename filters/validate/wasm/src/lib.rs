//! Gatewarden request validation as a Proxy-Wasm module: glue only. The policy (rules, OpenAPI
//! routing, parameters, schemas, reasons, problem bodies) lives in `gatewarden_validate_policy`;
//! the host adapter in `gatewarden_glue`, whose pipeline lets a request wait for its body
//! (`export_filter!(Validate, waits)`).
//!
//! ```text
//! request headers ─ ValidatePolicy::start_with ─ Done(outcome) ──────▶ act (allow, 4xx, 503)
//!                                               ─ NeedBody(plan) ─▶ Step::NeedBody { max_bytes }
//! body (whole, past max_bytes, none, unreadable) ─ finish(plan, BodyInput) ─▶ act
//! ```
//! - The body is read only when the matched rule needs it; the glue stops at `max_bytes`
//!   (`Resumed::BodyTooLarge`: no byte past the limit is read into the VM).
//! - A denial answers with the outcome's problem body (the verbose error list) or the reason's
//!   fixed one, as `application/problem+json` (RFC 9457); a 405 carries `Allow`.
//! - The decision log's detail names the first error's instance pointer, schema location and
//!   keyword (never a value from the request: the policy masks messages, and pointers are
//!   excerpts of at most 120 characters).
//! - A request let through unvalidated (an unknown path or method with `pass`, a fetched
//!   document not loaded yet or a body the host cannot hand over under `failure_mode: allow`) is
//!   counted `gatewarden_validate_unvalidated_<why>` and logged at info level.
//! - Fetched OpenAPI documents (`openapi.source`): see [`documents`].

mod documents;

use std::net::IpAddr;
use std::time::Duration;

use gatewarden_glue::decision_log::DecisionRecord;
use gatewarden_glue::host::{self, Level};
use gatewarden_glue::metrics::{self, Counter};
use gatewarden_glue::pipeline::{Pending, Resumed, Step};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_policy::decision::Decision;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FailureMode, FilterPolicy, RequestFacts};
use gatewarden_validate_policy::openapi::OPENAPI_DOCUMENT;
use gatewarden_validate_policy::{BodyInput, BodyPlan, Start, ValidateOutcome, ValidatePolicy, ValidateReason, PROBLEM_JSON};

use documents::{Documents, Slot};

const FILTER: &str = ValidatePolicy::NAME;

/// Requests let through without validation, by why (`gatewarden_validate_unvalidated_<why>`).
const UNVALIDATED: [(ValidateReason, Counter); 4] = [
    (ValidateReason::UnknownPath, Counter::filter("unvalidated_unknown_path")),
    (ValidateReason::MethodNotAllowed, Counter::filter("unvalidated_method_not_allowed")),
    (ValidateReason::DocumentUnavailable, Counter::filter("unvalidated_document_unavailable")),
    (ValidateReason::BodyUnavailable, Counter::filter("unvalidated_body_unavailable")),
];

struct Validate {
    documents: Documents,
}

impl Enforcer for Validate {
    type Policy = ValidatePolicy;
    /// The policy's fetched OpenAPI documents, filled by its root context.
    type PolicyState = Slot;
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        ValidateReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        let mut names: Vec<String> = UNVALIDATED.iter().map(|(_, c)| c.name().to_owned()).collect();
        names.extend(gatewarden_glue::remote::counter_names(OPENAPI_DOCUMENT.name));
        names
    }

    fn new(_root_context_id: u32) -> Self {
        Validate { documents: Documents::default() }
    }

    fn on_policy(&mut self, policy: &ValidatePolicy) -> Option<Duration> {
        self.documents.on_policy(policy)
    }

    fn on_tick(&mut self, _policy: &ValidatePolicy) -> Option<Duration> {
        self.documents.on_tick()
    }

    fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        self.documents.on_http_call_response(token, body_size);
    }

    fn header_needs(policy: &ValidatePolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn reads_all_headers(policy: &ValidatePolicy) -> bool {
        policy.reads_all_headers()
    }

    fn policy_state(policy: &ValidatePolicy) -> Slot {
        documents::slot_for(policy)
    }

    /// Not called: a filter that waits is driven by [`Enforcer::start`]. Total anyway: a
    /// request that needs its body cannot be decided on its headers alone, so it is decided as
    /// one whose body the host cannot hand over (503, or through by `failure_mode`).
    fn decide(policy: &ValidatePolicy, slot: &Slot, facts: &RequestFacts<'_>) -> Outcome {
        let out = match policy.start_with(facts, &|rule| slot.get(rule)) {
            Start::Done(out) => out,
            Start::NeedBody(plan) => policy.finish(plan, BodyInput::Unavailable),
        };
        to_outcome(policy, out, facts.header("x-request-id"), || client_of(policy, facts))
    }

    fn start(policy: &ValidatePolicy, slot: &Slot, facts: &RequestFacts<'_>) -> Step {
        match policy.start_with(facts, &|rule| slot.get(rule)) {
            Start::Done(out) => Step::Done(to_outcome(policy, out, facts.header("x-request-id"), || client_of(policy, facts))),
            Start::NeedBody(plan) => Step::NeedBody { max_bytes: plan.max_bytes, pending: Pending::new(plan) },
        }
    }

    fn resume(policy: &ValidatePolicy, _slot: &Slot, pending: Pending, input: Resumed<'_>) -> Step {
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
        Step::Done(to_outcome(policy, policy.finish(plan, body), None, || client_now(policy)))
    }
}

/// The glue's outcome of a validation: the problem body, its media type and `Allow` on a
/// denial, the first error in the log's detail; an unvalidated request counted and logged.
/// `request_id`: the `x-request-id` header when it was read with the others; `client`: the
/// client address for the log line of a denial (called for denials only).
fn to_outcome(policy: &ValidatePolicy, out: ValidateOutcome, request_id: Option<&str>, client: impl FnOnce() -> Option<IpAddr>) -> Outcome {
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
        count_unvalidated(policy, &decision, why, request_id);
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

/// The client address of a request, as the policy's `client_address` settings say (the log
/// line's client; a request whose address cannot be worked out is logged without one).
fn client_of(policy: &ValidatePolicy, facts: &RequestFacts<'_>) -> Option<IpAddr> {
    policy.header().client_address.resolve(facts).ok()
}

/// [`client_of`] for a request decided after its body, whose request facts are gone: the headers
/// the settings read and the peer address, read from the host now (denials only).
fn client_now(policy: &ValidatePolicy) -> Option<IpAddr> {
    let resolver = &policy.header().client_address;
    let mut needs = HeaderNeeds::default();
    resolver.add_needs(&mut needs);
    let headers: Vec<(String, String)> =
        needs.names().iter().filter_map(|n| host::request_header(n).ok().flatten().map(|v| (n.clone(), v))).collect();
    let peer = host::property_encoded(host::SOURCE_ADDRESS).ok().flatten().and_then(|b| String::from_utf8(b).ok());
    resolver.resolve(&RequestFacts::new(&headers, peer.as_deref())).ok()
}

/// Counts and logs (info) a request let through without validation.
fn count_unvalidated(policy: &ValidatePolicy, decision: &Decision, why: ValidateReason, request_id: Option<&str>) {
    if let Some((_, counter)) = UNVALIDATED.iter().find(|(r, _)| *r == why) {
        metrics::tally(FILTER, *counter);
    }
    let read;
    let request_id = match request_id {
        Some(id) => id,
        None => {
            read = host::request_header("x-request-id").ok().flatten().unwrap_or_default();
            &read
        }
    };
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
    host::log(Level::Info, format_args!("{record}"));
}

export_filter!(Validate, waits);
