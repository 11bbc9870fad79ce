//! Request validation, natively: the body is buffered by Envoy for this filter while it waits
//! (the runtime's `Step::NeedBody`), and the compiled schemas exist once per process. A fetched
//! OpenAPI document (`openapi.source`) is one copy of its text per process, fetched on the main
//! thread and accepted only when it compiles for the fetching policy's rule; each worker compiles
//! a new copy once, when its generation moves (the last good one serves meanwhile).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use gatewarden_glue::pipeline::{Pending, Resumed, Step};
use gatewarden_glue::remote::counter_names;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_native::envoy::{self, Level};
use gatewarden_native::remote::{self, Local, Parsed, Source};
use gatewarden_native::runtime::{self as native, NativeReport};
use gatewarden_native::NativeFilter;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts};
use gatewarden_validate_policy::adapter::{self, UNVALIDATED};
use gatewarden_validate_policy::openapi::{OpenApi, OPENAPI_DOCUMENT};
use gatewarden_validate_policy::{ValidatePolicy, ValidateReason};

const FILTER: &str = ValidatePolicy::NAME;

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
                    Ok((Arc::new(bytes.to_vec()) as Parsed, format!("for rule {rule} ({} bytes)", bytes.len())))
                });
                Source { source: d.source.clone(), parse }
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
        adapter::decide(policy, facts, &|rule| docs.as_ref().and_then(|d| d.get(rule)), &request_id_now, &NativeReport)
    }

    fn start(policy: &ValidatePolicy, docs: &RefCell<Documents>, facts: &RequestFacts<'_>) -> Step {
        let docs = fresh(policy, docs);
        adapter::start(policy, facts, &|rule| docs.as_ref().and_then(|d| d.get(rule)), &request_id_now, &NativeReport)
    }

    fn resume(policy: &ValidatePolicy, _docs: &RefCell<Documents>, pending: Pending, input: Resumed<'_>) -> Step {
        let client = || adapter::client_from(policy, &native::request_header, &native::source_address);
        adapter::resume(policy, pending, input, &request_id_now, &client, &NativeReport)
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

/// The request's `x-request-id`, read from Envoy (log lines of requests let through).
fn request_id_now() -> String {
    native::request_header("x-request-id").unwrap_or_default()
}
