//! The generic root and request contexts every filter uses.
//!
//! ```text
//! on_configure(bytes) ─ compile::<F::Policy>() ─▶ Arc<Policy>   (or log the error, count, return false)
//! on_http_request_headers ─ headers + source.address ─▶ F::evaluate(policy, facts) ─▶ Evaluation
//!   allow        → decision header to the upstream, Continue
//!   deny         → log line, counters, local response (status, fixed JSON body), Pause
//!   dry-run deny → log line, counters, decision header, Continue
//! ```
//! A filter supplies only an [`Enforcer`]: how to evaluate, and what to do on ticks and
//! callouts (background fetches). Returning false from `on_configure` makes Envoy keep the last
//! good policy; at first start it makes the plugin fail closed.

use std::sync::Arc;
use std::time::Duration;

use gatewarden_policy::decision::UNAVAILABLE_BODY;
use gatewarden_policy::{compile, Decision, FilterPolicy, Mode, RequestFacts, Verdict};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::decision_log::DecisionRecord;
use crate::host::{self, Level};
use crate::{metrics, panic_hook};

/// What a filter decided for one request.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: Decision,
    /// The client address the decision was about, for the log line.
    pub client: Option<String>,
    /// Extra safe detail for the log line (e.g. `country=KP`).
    pub detail: String,
}

/// A filter's policy-specific part of the glue.
pub trait Enforcer: 'static {
    type Policy: FilterPolicy + 'static;

    /// Every denial reason, for the counters `gatewarden_<filter>_denied_<reason>`.
    fn reasons() -> Vec<&'static str>;
    /// Extra counters the filter increments.
    fn extra_counters() -> Vec<String> {
        Vec::new()
    }
    /// A new root context (at start and after every accepted update).
    fn new(root_context_id: u32) -> Self;
    /// The policy was accepted; return the tick period wanted, if any. Must not call out.
    fn on_policy(&mut self, policy: &Arc<Self::Policy>) -> Option<Duration>;
    /// Periodic work (fetches). May change the tick period.
    fn on_tick(&mut self, _policy: &Arc<Self::Policy>) -> Option<Duration> {
        None
    }
    /// A callout answered.
    fn on_http_call_response(&mut self, _token: u32, _body_size: usize) {}
    /// Decides for one request.
    fn evaluate(policy: &Self::Policy, facts: &RequestFacts<'_>) -> Evaluation;
}

/// The root context of filter `F`.
pub struct Root<F: Enforcer> {
    enforcer: F,
    policy: Option<Arc<F::Policy>>,
    tick: Option<Duration>,
}

impl<F: Enforcer> Root<F> {
    pub fn new(context_id: u32) -> Self {
        start::<F>();
        Self { enforcer: F::new(context_id), policy: None, tick: None }
    }

    fn set_tick(&mut self, tick: Option<Duration>) {
        if let Some(period) = tick {
            if self.tick != Some(period) && host::set_tick_period(period).is_ok() {
                self.tick = Some(period);
            }
        }
    }
}

fn name<F: Enforcer>() -> &'static str {
    <F::Policy as FilterPolicy>::NAME
}

/// Once per VM: panic hook and counters.
fn start<F: Enforcer>() {
    panic_hook::install(name::<F>());
    let extra = F::extra_counters();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    metrics::define(name::<F>(), &F::reasons(), &extra);
}

impl<F: Enforcer> Context for Root<F> {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.enforcer.on_http_call_response(token_id, body_size);
    }
}

impl<F: Enforcer> RootContext for Root<F> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let filter = name::<F>();
        let bytes = match host::plugin_configuration() {
            Ok(b) => b,
            Err(e) => {
                host::log(Level::Error, &format!("gatewarden {filter}: policy refused: cannot read the plugin configuration (status {})", e.0));
                metrics::count(filter, "config_rejected");
                return false;
            }
        };
        match compile::<F::Policy>(&bytes) {
            Ok(policy) => {
                let policy = Arc::new(policy);
                host::log(
                    Level::Info,
                    &format!("gatewarden {filter}: policy {:?} accepted", &*policy.header().policy_version),
                );
                metrics::count(filter, "config_accepted");
                let tick = self.enforcer.on_policy(&policy);
                self.set_tick(tick);
                self.policy = Some(policy);
                true
            }
            Err(e) => {
                host::log(Level::Error, &format!("gatewarden {filter}: policy refused: {e}"));
                metrics::count(filter, "config_rejected");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(policy) = &self.policy {
            let tick = self.enforcer.on_tick(policy);
            self.set_tick(tick);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request::<F> { policy: self.policy.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The request context of filter `F`: holds the policy that was current when it began, so a
/// live update never changes the rules in the middle of a request.
pub struct Request<F: Enforcer> {
    policy: Option<Arc<F::Policy>>,
}

impl<F: Enforcer> Context for Request<F> {}

/// The decision header sent to the upstream: `x-gatewarden-<filter>` (dashes).
pub fn decision_header_name(filter: &str) -> String {
    format!("x-gatewarden-{}", filter.replace('_', "-"))
}

fn fail_closed(filter: &str, why: &str, outcome: &str) -> Action {
    host::log(Level::Error, &format!("gatewarden {filter}: request denied: {why}"));
    metrics::count(filter, outcome);
    let details = format!("gatewarden_{filter}_{outcome}");
    if let Err(e) = host::send_local_response(503, &details, &[("content-type", "application/json")], UNAVAILABLE_BODY) {
        host::log(Level::Error, &format!("gatewarden {filter}: cannot send the local response (status {})", e.0));
    }
    Action::Pause
}

impl<F: Enforcer> HttpContext for Request<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let filter = name::<F>();
        let Some(policy) = self.policy.as_ref() else {
            return fail_closed(filter, "no valid policy is loaded", "no_policy");
        };
        let headers = match host::request_headers() {
            Ok(h) => h,
            Err(e) => return fail_closed(filter, &format!("cannot read the request headers (status {})", e.0), "host_error"),
        };
        let peer = match host::property(&["source", "address"]) {
            Ok(p) => p.map(|b| String::from_utf8_lossy(&b).into_owned()),
            Err(e) => return fail_closed(filter, &format!("cannot read source.address (status {})", e.0), "host_error"),
        };
        let facts = RequestFacts::new(&headers, peer.as_deref());
        let eval = F::evaluate(policy, &facts);
        let header = policy.header();
        let version = &*header.policy_version;
        let rule = &*eval.decision.rule;
        let header_name = decision_header_name(filter);
        match (&eval.decision.verdict, header.mode) {
            (Verdict::Allow, _) => {
                metrics::count(filter, "allowed");
                let _ = host::set_request_header(&header_name, &format!("allow; rule={rule}; version={version}"));
                Action::Continue
            }
            (Verdict::Deny(denial), mode) => {
                let dry_run = mode == Mode::DryRun;
                let decision = if dry_run { "dry_run_deny" } else { "deny" };
                let record = DecisionRecord {
                    filter,
                    decision,
                    reason: denial.reason,
                    rule,
                    policy_version: version,
                    request_id: facts.request_id(),
                    client: eval.client.as_deref().unwrap_or(""),
                    detail: &eval.detail,
                };
                host::log(Level::Info, &record.to_line());
                let outcome = if dry_run { "dry_run_denied" } else { "denied" };
                metrics::count(filter, outcome);
                metrics::count(filter, &format!("{outcome}_{}", denial.reason));
                if dry_run {
                    let value = format!("dry_run_deny; reason={}; rule={rule}; version={version}", denial.reason);
                    let _ = host::set_request_header(&header_name, &value);
                    return Action::Continue;
                }
                let details = format!("gatewarden_{filter}_{}", denial.reason);
                if let Err(e) = host::send_local_response(denial.status, &details, &[("content-type", "application/json")], denial.body) {
                    host::log(Level::Error, &format!("gatewarden {filter}: cannot send the denial (status {})", e.0));
                }
                Action::Pause
            }
        }
    }
}
