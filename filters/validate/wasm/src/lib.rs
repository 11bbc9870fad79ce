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
//! - Outcomes, problem bodies, the log's detail and the unvalidated counters: the policy's
//!   [`gatewarden_validate_policy::adapter`], shared with the native Envoy module.
//! - Fetched OpenAPI documents (`openapi.source`): see [`documents`].

mod documents;

use std::net::IpAddr;
use std::time::Duration;

use gatewarden_glue::host;
use gatewarden_glue::metrics::WasmReport;
use gatewarden_glue::pipeline::{Pending, Resumed, Step};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts};
use gatewarden_validate_policy::adapter::{self, UNVALIDATED};
use gatewarden_validate_policy::openapi::OPENAPI_DOCUMENT;
use gatewarden_validate_policy::{ValidatePolicy, ValidateReason};

use documents::{Documents, Slot};

const FILTER: &str = ValidatePolicy::NAME;

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
        let mut names: Vec<String> = UNVALIDATED.iter().map(|(_, c)| (*c).to_owned()).collect();
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

    /// Not called: a filter that waits is driven by [`Enforcer::start`]. Total anyway (see
    /// [`adapter::decide`]).
    fn decide(policy: &ValidatePolicy, slot: &Slot, facts: &RequestFacts<'_>) -> Outcome {
        adapter::decide(policy, facts, &|rule| slot.get(rule), &request_id_now, &WasmReport(FILTER))
    }

    fn start(policy: &ValidatePolicy, slot: &Slot, facts: &RequestFacts<'_>) -> Step {
        adapter::start(policy, facts, &|rule| slot.get(rule), &request_id_now, &WasmReport(FILTER))
    }

    fn resume(policy: &ValidatePolicy, _slot: &Slot, pending: Pending, input: Resumed<'_>) -> Step {
        adapter::resume(policy, pending, input, &request_id_now, &|| client_now(policy), &WasmReport(FILTER))
    }
}

/// The request's `x-request-id`, read from the host (log lines of requests let through).
fn request_id_now() -> String {
    host::request_header("x-request-id").ok().flatten().unwrap_or_default()
}

/// The client address of a denial decided after the body, read from the host now.
fn client_now(policy: &ValidatePolicy) -> Option<IpAddr> {
    let peer = || host::property_encoded(host::SOURCE_ADDRESS).ok().flatten().and_then(|b| String::from_utf8(b).ok());
    adapter::client_from(policy, &|name| host::request_header(name).ok().flatten(), &peer)
}

export_filter!(Validate, waits);
