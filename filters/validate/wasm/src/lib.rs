//! Gatewarden request validation as a Proxy-Wasm module: glue only. The policy (rules, schemas,
//! reasons, problem bodies) lives in `gatewarden_validate_policy`; the host adapter in
//! `gatewarden_glue`, whose pipeline lets a request wait for its body
//! (`export_filter!(Validate, waits)`).
//!
//! ```text
//! request headers ─ ValidatePolicy::start ─ Done(outcome) ──────────▶ act (allow, 4xx)
//!                                          ─ NeedBody(plan) ─▶ Step::NeedBody { max_bytes }
//! body (whole, or past max_bytes, or none, or unreadable) ─ finish(plan, BodyInput) ─▶ act
//! ```
//! - The body is read only when the matched rule needs it; the glue stops at `max_bytes`
//!   (`Resumed::BodyTooLarge`: the bytes past the limit are never read into the VM).
//! - A denial answers with the outcome's problem body (the verbose error list) or the reason's
//!   fixed one, as `application/problem+json` (RFC 9457).
//! - The decision log's detail names the first error's instance pointer, schema location and
//!   keyword (never a value from the body: pointers are cut by the policy to 120 characters).
//! - `failure_mode: allow` lets a body the host cannot hand over (Kong: spilled to a temp file)
//!   through unvalidated; the glue counts it (`gatewarden_validate_body_unavailable`) and logs it.

use std::time::Duration;

use gatewarden_glue::pipeline::{Pending, Resumed, Step};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_policy::decision::Decision;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FailureMode, FilterPolicy, RequestFacts};
use gatewarden_validate_policy::{BodyInput, BodyPlan, Start, ValidateOutcome, ValidatePolicy, ValidateReason, PROBLEM_JSON};

struct Validate;

impl Enforcer for Validate {
    type Policy = ValidatePolicy;
    type PolicyState = ();
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        ValidateReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn new(_root_context_id: u32) -> Self {
        Validate
    }

    fn on_policy(&mut self, _policy: &ValidatePolicy) -> Option<Duration> {
        None
    }

    fn header_needs(policy: &ValidatePolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(_policy: &ValidatePolicy) {}

    /// Not called: a filter that waits is driven by [`Enforcer::start`]. Kept total anyway: a
    /// request that needs its body cannot be decided on its headers, so it fails by
    /// `failure_mode` as a body the host cannot hand over.
    fn decide(policy: &ValidatePolicy, _state: &(), facts: &RequestFacts<'_>) -> Outcome {
        match policy.start(facts) {
            Start::Done(out) => to_outcome(policy, out),
            Start::NeedBody(plan) => to_outcome(policy, policy.finish(plan, BodyInput::Unavailable)),
        }
    }

    fn start(policy: &ValidatePolicy, _state: &(), facts: &RequestFacts<'_>) -> Step {
        match policy.start(facts) {
            Start::Done(out) => Step::Done(to_outcome(policy, out)),
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
        Step::Done(to_outcome(policy, policy.finish(plan, body)))
    }
}

/// The glue's outcome of a validation: the problem body and its media type on a denial, the
/// first error in the log's detail; `body_unavailable` let through under `failure_mode: allow`.
fn to_outcome(policy: &ValidatePolicy, out: ValidateOutcome) -> Outcome {
    let ValidateOutcome { decision, reason, errors, body, .. } = out;
    if reason == Some(ValidateReason::BodyUnavailable) && policy.header().failure_mode == FailureMode::Allow {
        // The glue counted `body_unavailable` and logged why; the request goes on unvalidated.
        return Outcome::new(Decision::allow(&decision.rule), None, String::new());
    }
    let detail = match errors.first() {
        Some(e) => format!("pointer={}; schema={}; keyword={}", e.instance, e.schema, e.keyword),
        None => String::new(),
    };
    let mut outcome = Outcome::new(decision, None, detail);
    if reason.is_some() {
        outcome.response_headers.push(("content-type".to_owned(), PROBLEM_JSON.to_owned()));
    }
    outcome.body = body;
    outcome
}

export_filter!(Validate, waits);
