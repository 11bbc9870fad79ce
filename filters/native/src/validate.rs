//! Request validation, natively: the body is buffered by Envoy for this filter while it waits
//! (the runtime's `Step::NeedBody`), and the compiled schemas exist once per process. A fetched
//! OpenAPI document (`openapi.source`) is one copy of its text per process, fetched on the main
//! thread and accepted only when it compiles for the fetching policy's rule; each worker compiles
//! a new copy once, when its generation moves (the last good one serves meanwhile).

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatewarden_glue::decision_log::DecisionRecord;
use gatewarden_glue::pipeline::{Pending, Resumed, Step};
use gatewarden_glue::remote::counter_names;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_native::envoy::{self, Level};
use gatewarden_native::remote::{self, Local, Parsed, Source};
use gatewarden_native::runtime::tally;
use gatewarden_native::NativeFilter;
use gatewarden_policy::decision::Decision;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FailureMode, FilterPolicy, RequestFacts};
use gatewarden_validate_policy::openapi::{OpenApi, OPENAPI_DOCUMENT};
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

/// One worker's fetched documents: per rule, its view of the text and the compiled copy.
pub struct Documents(Vec<RuleDocument>);

/// A rule's index, its view of the fetched text, and the copy compiled from it.
type RuleDocument = (usize, Local<Vec<u8>>, Option<Arc<OpenApi>>);

impl Documents {
    /// Compiles the copies that changed since the last request (the last good one stays when a
    /// new text does not compile for this policy, which the fetch already checked).
    fn refresh(&mut self, policy: &ValidatePolicy) {
        for (rule, local, compiled) in &mut self.0 {
            if let (Some(text), true) = local.current() {
                match policy.compile_document(*rule, text) {
                    Ok(doc) => *compiled = Some(Arc::new(doc)),
                    Err(e) => envoy::log(Level::Warn, format_args!("gatewarden {FILTER}: rules[{rule}] fetched document refused: {e}")),
                }
            }
        }
    }

    fn get(&self, rule: usize) -> Option<Arc<OpenApi>> {
        self.0.iter().find(|(r, _, _)| *r == rule).and_then(|(_, _, d)| d.clone())
    }
}

impl NativeFilter for Validate {
    fn sources(policy: &ValidatePolicy) -> Vec<Source> {
        policy
            .remote_documents()
            .into_iter()
            .map(|d| {
                let rule = d.rule;
                let check = policy.clone();
                let parse = Arc::new(move |bytes: &[u8]| {
                    let doc = check.compile_document(rule, bytes).map_err(|e| e.to_string())?;
                    let _ = doc;
                    Ok((Arc::new(bytes.to_vec()) as Parsed, format!("for rules[{rule}]")))
                });
                Source { source: d.source.clone(), parse, subject: String::new() }
            })
            .collect()
    }
}

impl Enforcer for Validate {
    type Policy = ValidatePolicy;
    type PolicyState = RefCell<Documents>;
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        ValidateReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        let mut names: Vec<String> = UNVALIDATED.iter().map(|(_, c)| (*c).to_owned()).collect();
        names.extend(counter_names(OPENAPI_DOCUMENT.name));
        names
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &ValidatePolicy) -> Option<Duration> {
        None
    }

    fn header_needs(policy: &ValidatePolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn reads_all_headers(policy: &ValidatePolicy) -> bool {
        policy.reads_all_headers()
    }

    fn policy_state(policy: &ValidatePolicy) -> RefCell<Documents> {
        RefCell::new(Documents(policy.remote_documents().iter().map(|d| (d.rule, Local::new(remote::resource(d.source)), None)).collect()))
    }

    fn decide(policy: &ValidatePolicy, docs: &RefCell<Documents>, facts: &RequestFacts<'_>) -> Outcome {
        let docs = fresh(policy, docs);
        let out = match policy.start_with(facts, &|rule| docs.as_ref().and_then(|d| d.get(rule))) {
            Start::Done(out) => out,
            Start::NeedBody(plan) => policy.finish(plan, BodyInput::Unavailable),
        };
        to_outcome(policy, out, facts.header("x-request-id"), || client_of(policy, facts))
    }

    fn start(policy: &ValidatePolicy, docs: &RefCell<Documents>, facts: &RequestFacts<'_>) -> Step {
        let docs = fresh(policy, docs);
        match policy.start_with(facts, &|rule| docs.as_ref().and_then(|d| d.get(rule))) {
            Start::Done(out) => Step::Done(to_outcome(policy, out, facts.header("x-request-id"), || client_of(policy, facts))),
            Start::NeedBody(plan) => Step::NeedBody { max_bytes: plan.max_bytes, pending: Pending::new(plan) },
        }
    }

    fn resume(policy: &ValidatePolicy, _docs: &RefCell<Documents>, pending: Pending, input: Resumed<'_>) -> Step {
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

/// The documents to decide with, refreshed (none if the state is busy: not reachable, a worker
/// decides one request at a time).
fn fresh<'a>(policy: &ValidatePolicy, docs: &'a RefCell<Documents>) -> Option<std::cell::Ref<'a, Documents>> {
    if let Ok(mut d) = docs.try_borrow_mut() {
        d.refresh(policy);
    }
    docs.try_borrow().ok()
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
