//! The generic root context and request handling every filter uses, driven by the ABI exports
//! of [`crate::abi`].
//!
//! ```text
//! on_configure(bytes) ─ compile::<F::Policy>() ─▶ Rc<Compiled>    (or log the error, count, return false)
//! on_request_headers ─ the headers the policy reads + source.address ─▶ F::decide ─▶ Outcome
//!   allow        → header mutations (removals, then sets), decision header, Continue
//!   deny         → log line, counters, local response (status, fixed JSON body, the
//!                  evaluation's response headers), Pause
//!   dry-run deny → log line, counters, header mutations, decision header, Continue
//! ```
//! Per-request mutable state: a filter keeps per-VM state (loaded key sets, a geo database) in
//! its own thread_locals, and state tied to one compiled policy (JWT's verified-token cache) in
//! [`Enforcer::PolicyState`], created with the policy and dropped with it.
//! A filter supplies only an [`Enforcer`]: how to decide, which headers that reads, and what to
//! do on ticks and callouts (background fetches). A filter that must wait before it decides (for
//! the request body, or a service's answer) sets `Enforcer::WAITS`, returns `crate::pipeline`
//! steps from `start`/`resume`, and is exported with `export_filter!(Filter, waits)`;
//! `crate::waiting` parks its requests and does the host side.
//!
//! A refused policy: on Envoy `on_configure` returns false, so Envoy keeps the last good policy
//! (at first start the plugin fails closed). On Kong's ngx_wasm_module a false return makes the
//! new nginx workers exit and every route of that nginx stops answering, so there the root
//! accepts the VM without a policy: this filter's requests get 503 (`no_policy`), other routes
//! are untouched, and the refusal is logged at error level and counted (`config_rejected`).
//!
//! Ticks: one period per root context, set once (ngx_wasm_module traps on a second one): the
//! counters flush on every tick, and a filter that asked for ticks gets every one of them (its
//! fetch schedules are by the clock, so a tick finer than it asked for only checks more often).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use gatewarden_policy::decision::UNAVAILABLE_BODY;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::rollout::{accepted_message, disagree, Role, Rollout};
use gatewarden_policy::{compile_set, FilterPolicy, Header, Mode, RequestFacts, Verdict};

use crate::host::{self, Level};
use crate::metrics::{self, Counter};
use crate::panic_hook;
use gatewarden_policy::outcome::dry_run_header_value;
pub use gatewarden_policy::outcome::Outcome;

use crate::pipeline::{HostCaps, Pending, Resumed, Step};
use crate::rollout::{self as rollout_glue, ShadowRecord};
use crate::waiting::{self, At, BodyAhead, Waiting};

/// What the host should do with the request after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Flow {
    Continue = 0,
    Pause = 1,
}

/// A filter's policy-specific part of the glue.
pub trait Enforcer: 'static {
    type Policy: FilterPolicy + 'static;
    /// Mutable state that lives exactly as long as one compiled policy in one VM (JWT: the
    /// verified-token cache, sized by the policy); `()` when none. Created in `on_configure`
    /// after the policy is accepted; a VM is single-threaded, so interior mutability
    /// (`RefCell`) is the filter's business.
    type PolicyState: 'static;

    /// Every denial reason, for the counters `gatewarden_<filter>_denied_<reason>`.
    fn reasons() -> Vec<&'static str>;
    /// Extra counters the filter increments.
    fn extra_counters() -> Vec<String> {
        Vec::new()
    }
    /// A new root context (at start and after every accepted update).
    fn new(root_context_id: u32) -> Self;
    /// The policy was accepted; return the tick period wanted, if any. Must not call out.
    fn on_policy(&mut self, policy: &Self::Policy) -> Option<Duration>;
    /// Periodic work (fetches). May change the tick period.
    fn on_tick(&mut self, _policy: &Self::Policy) -> Option<Duration> {
        None
    }
    /// A callout this root context made was answered.
    fn on_http_call_response(&mut self, _token: u32, _body_size: usize) {}
    /// The request headers `decide` reads; only these cross the Wasm boundary.
    fn header_needs(policy: &Self::Policy) -> HeaderNeeds;
    /// Whether `decide` needs every request header (one `get_header_map_pairs` crossing),
    /// whatever `header_needs` says: JWT counts headers and looks for tokens and cookies.
    fn reads_all_headers(_policy: &Self::Policy) -> bool {
        false
    }
    /// The state of a newly accepted policy.
    fn policy_state(policy: &Self::Policy) -> Self::PolicyState;
    /// Decides for one request.
    fn decide(policy: &Self::Policy, state: &Self::PolicyState, facts: &RequestFacts<'_>) -> Outcome;

    // ---- A filter that waits (for the body, for a service): see `crate::pipeline`. ----

    /// Whether [`Enforcer::start`] may return anything but [`Step::Done`]. False (the default):
    /// the glue calls [`Enforcer::decide`] as before, keeps no per-request state and its body
    /// callback returns at once, so a headers-only filter pays nothing for the pipeline.
    const WAITS: bool = false;
    /// Refuses, at configure time, a policy this host cannot serve (e.g. a gRPC callout on
    /// ngx_wasm_module, which has none): the message names the field path, e.g.
    /// `rules[0].grpc: gRPC callouts are not available on ngx_wasm_module`.
    fn check_host(_policy: &Self::Policy, _host: &HostCaps) -> Result<(), String> {
        Ok(())
    }
    /// The first step for one request (only called when [`Enforcer::WAITS`]); the default decides
    /// at once with [`Enforcer::decide`].
    fn start(policy: &Self::Policy, state: &Self::PolicyState, facts: &RequestFacts<'_>) -> Step {
        Step::Done(Self::decide(policy, state, facts))
    }
    /// The next step once what the request waited for arrived (or failed). A filter that never
    /// waits is never resumed; the default fails the request closed.
    fn resume(_policy: &Self::Policy, _state: &Self::PolicyState, _pending: Pending, _input: Resumed<'_>) -> Step {
        Step::Unavailable("the filter cannot resume a waiting request")
    }
}

/// A compiled policy and what its requests need, prepared once in `on_configure`.
pub struct Compiled<F: Enforcer> {
    pub policy: F::Policy,
    pub state: F::PolicyState,
    /// The candidate of a canary or shadow rollout, with its own state.
    pub rollout: Option<CompiledRollout<F>>,
    needs: HeaderNeeds,
    all_headers: bool,
    header_name: String,
}

impl<F: Enforcer> Compiled<F> {
    /// Every request header, when [`read_headers`] read them all for this policy (spares the
    /// host call `act` would make on ngx_wasm_module to look for duplicates).
    fn all_headers_in<'h>(&self, headers: &'h [(String, String)]) -> Option<&'h [(String, String)]> {
        (self.all_headers || self.needs.names().len() > 1).then_some(headers)
    }

    /// `x-gatewarden-<filter>`, the decision header's name.
    pub(crate) fn header_name(&self) -> &str {
        &self.header_name
    }
}

/// A rollout's candidate policy (inside [`Rollout`]) and its policy state.
pub struct CompiledRollout<F: Enforcer> {
    pub rollout: Rollout<F::Policy>,
    pub state: F::PolicyState,
}

fn name<F: Enforcer>() -> &'static str {
    <F::Policy as FilterPolicy>::NAME
}

/// The decision header sent to the upstream: `x-gatewarden-<filter>` (dashes).
pub fn decision_header_name(filter: &str) -> String {
    format!("x-gatewarden-{}", filter.replace('_', "-"))
}

/// Once per VM: panic hook and counters.
fn start<F: Enforcer>() {
    panic_hook::install(name::<F>());
    let extra = F::extra_counters();
    let waits: &[Counter] = if F::WAITS { crate::waiting::COUNTERS } else { &[] };
    let counters: Vec<Counter> = rollout_glue::COUNTERS.iter().chain(waits).copied().collect();
    metrics::define(name::<F>(), &F::reasons(), &counters, &extra);
}

/// `proxy_on_vm_start`: reads the trust settings of approvals from the VM configuration;
/// false (the plugin fails closed) when they are invalid.
pub fn on_vm_start<F: Enforcer>() -> bool {
    // Probed here, in a root context, and kept for the VM's life (see host::host_kind).
    let _ = host::host_kind();
    rollout_glue::on_vm_start(name::<F>())
}

/// The tick period of a root whose filter asked for ticks: the fastest period a filter asks for
/// (a shared fetch that is loading).
pub const FILTER_TICK_BASE: Duration = crate::remote::TICK_LOADING;

/// The root context of filter `F`.
pub struct Root<F: Enforcer> {
    enforcer: F,
    policy: Option<Rc<Compiled<F>>>,
    /// The one tick period set on the host (None: not set yet).
    tick: Option<Duration>,
    /// Whether the filter's `on_tick` runs on ticks (it asked for them).
    filter_ticks: bool,
}

impl<F: Enforcer> Root<F> {
    pub fn new(context_id: u32) -> Self {
        start::<F>();
        Self { enforcer: F::new(context_id), policy: None, tick: None, filter_ticks: false }
    }

    /// The policy requests created now will use (None: no valid policy yet).
    pub fn current_policy(&self) -> Option<Rc<Compiled<F>>> {
        self.policy.clone()
    }

    /// Sets the root's tick period, once: [`FILTER_TICK_BASE`] (or finer) when the filter wants
    /// ticks, else [`metrics::FLUSH_PERIOD`] so that tallied counters reach the host.
    fn start_ticking(&mut self, filter_wants: Option<Duration>) {
        if self.tick.is_some() {
            return;
        }
        let period = match filter_wants {
            Some(p) => p.min(FILTER_TICK_BASE).max(Duration::from_millis(1)),
            None => metrics::FLUSH_PERIOD,
        };
        match host::set_tick_period(period) {
            Ok(()) => self.tick = Some(period),
            Err(e) => host::log(Level::Error, format_args!("gatewarden {}: cannot set the tick period (status {})", name::<F>(), e.0)),
        }
    }

    /// Refuses a policy: logged at error level and counted; the return value of `on_configure`.
    /// Envoy keeps the last good policy on false; ngx_wasm_module would stop every route of
    /// nginx, so there the root stays without a policy and its requests fail closed.
    fn refuse(&mut self, why: &str, counters: &[Counter]) -> bool {
        let filter = name::<F>();
        for c in counters {
            metrics::count(filter, *c);
        }
        self.start_ticking(None);
        match host::host_kind() {
            host::HostKind::Envoy => {
                host::log(Level::Error, format_args!("gatewarden {filter}: policy refused: {why}"));
                false
            }
            host::HostKind::NgxWasmModule => {
                host::log(Level::Error, format_args!("gatewarden {filter}: policy refused: {why}; this filter's requests are denied with 503 until a valid policy is loaded"),
                );
                true
            }
        }
    }

    /// Parses, validates and compiles the plugin configuration. A pure function of the bytes.
    pub fn on_configure(&mut self) -> bool {
        let filter = name::<F>();
        let bytes = match host::plugin_configuration() {
            Ok(b) => b,
            Err(e) => return self.refuse(&format!("cannot read the plugin configuration (status {})", e.0), &[Counter::CONFIG_REJECTED]),
        };
        // Approvals first: an unsigned document is not even compiled.
        if let Some(why) = rollout_glue::trust_refused() {
            return self.refuse(&why, &[Counter::CONFIG_REJECTED]);
        }
        let trust = rollout_glue::trust();
        if trust.required() > 0 {
            if let Err(e) = trust.verify(&bytes) {
                return self.refuse(&e.to_string(), &[Counter::CONFIG_REJECTED, Counter::SIGNATURE_REJECTED]);
            }
        }
        match compile_set::<F::Policy>(&bytes) {
            Ok(set) => {
                let policy = set.active;
                let caps = host_caps();
                if let Err(why) = F::check_host(&policy, &caps) {
                    return self.refuse(&why, &[Counter::CONFIG_REJECTED]);
                }
                if let Some(r) = &set.rollout {
                    if let Err(why) = F::check_host(&r.candidate, &caps) {
                        return self.refuse(&format!("rollout.candidate.{why}"), &[Counter::CONFIG_REJECTED]);
                    }
                }
                let what = accepted_message(&policy, set.rollout.as_ref());
                host::log(Level::Info, format_args!("gatewarden {filter}: {what}"));
                metrics::count(filter, Counter::CONFIG_ACCEPTED);
                // Background fetches (geo DB, JWKS) follow the active policy; see README "Safe rollout".
                let tick = self.enforcer.on_policy(&policy);
                self.start_ticking(tick);
                self.filter_ticks = tick.is_some();
                let mut needs = F::header_needs(&policy);
                let mut all_headers = F::reads_all_headers(&policy);
                let rollout = set.rollout.map(|r| {
                    for name in F::header_needs(&r.candidate).names() {
                        needs.add(name);
                    }
                    r.add_needs(&mut needs);
                    all_headers |= F::reads_all_headers(&r.candidate);
                    let state = F::policy_state(&r.candidate);
                    CompiledRollout { rollout: r, state }
                });
                let state = F::policy_state(&policy);
                self.policy =
                    Some(Rc::new(Compiled { policy, state, rollout, needs, all_headers, header_name: decision_header_name(filter) }));
                true
            }
            Err(e) => self.refuse(&e.to_string(), &[Counter::CONFIG_REJECTED]),
        }
    }

    /// Flushes the counters, then runs the filter's `on_tick` while it wants ticks.
    pub fn on_tick(&mut self) {
        metrics::flush();
        if !self.filter_ticks {
            return;
        }
        if let Some(compiled) = self.policy.clone() {
            self.filter_ticks = self.enforcer.on_tick(&compiled.policy).is_some();
        }
    }

    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        self.enforcer.on_http_call_response(token, body_size);
    }
}

pub(crate) fn fail_closed(filter: &str, why: &str, outcome: Counter) -> Flow {
    host::log(Level::Error, format_args!("gatewarden {filter}: request denied: {why}"));
    metrics::count(filter, outcome);
    let details = format!("gatewarden_{filter}_{}", outcome.name());
    if let Err(e) = host::send_local_response(503, &details, &[("content-type", "application/json")], UNAVAILABLE_BODY) {
        host::log(Level::Error, format_args!("gatewarden {filter}: cannot send the local response (status {})", e.0));
    }
    Flow::Pause
}

/// Reads the headers the policy needs: none, one (a single lookup), or all in one crossing.
fn read_headers(needs: &HeaderNeeds, all: bool) -> Result<Vec<(String, String)>, host::HostError> {
    if all {
        return host::request_headers();
    }
    match needs.names() {
        [] => Ok(Vec::new()),
        [one] => Ok(host::request_header(one)?.map(|v| vec![(one.clone(), v)]).unwrap_or_default()),
        _ => host::request_headers(),
    }
}

/// The request headers `compiled` reads (see [`read_headers`]), or the request failed closed.
fn headers_for<F: Enforcer>(filter: &str, compiled: &Compiled<F>) -> Result<Vec<(String, String)>, Flow> {
    read_headers(&compiled.needs, compiled.all_headers)
        .map_err(|e| fail_closed(filter, &format!("cannot read the request headers (status {})", e.0), Counter::HOST_ERROR))
}

/// The peer address, for [`RequestFacts::with_peer_source`]: read when a decision asks for it
/// (IP/geo: always; JWT: on a denial), once. A host error reads as "no peer", which no policy
/// lets through as an allowed address.
fn peer_address(filter: &str) -> Option<String> {
    match host::property_encoded(host::SOURCE_ADDRESS) {
        Ok(p) => p.and_then(|b| String::from_utf8(b).ok()),
        Err(e) => {
            host::log(Level::Warn, format_args!("gatewarden {filter}: cannot read source.address (status {})", e.0));
            None
        }
    }
}

/// Handles request headers with the policy the request was created under.
pub fn on_request_headers<F: Enforcer>(compiled: Option<&Compiled<F>>) -> Flow {
    let filter = name::<F>();
    let Some(compiled) = compiled else {
        return fail_closed(filter, "no valid policy is loaded", Counter::NO_POLICY);
    };
    let headers = match headers_for(filter, compiled) {
        Ok(h) => h,
        Err(flow) => return flow,
    };
    let all = compiled.all_headers_in(&headers);
    let peer = std::cell::OnceCell::new();
    let read_peer = || peer_address(filter);
    let facts = RequestFacts::with_peer_source(&headers, &peer, &read_peer);
    let Some(r) = &compiled.rollout else {
        let eval = F::decide(&compiled.policy, &compiled.state, &facts);
        return act(filter, &compiled.header_name, compiled.policy.header(), &eval, None, all);
    };
    let active = compiled.policy.header();
    if r.rollout.shadow {
        let eval = F::decide(&compiled.policy, &compiled.state, &facts);
        let shadow = F::decide(&r.rollout.candidate, &r.state, &facts);
        compare_shadow(filter, active, &r.rollout.candidate, &eval, &shadow, &facts);
        return act(filter, &compiled.header_name, active, &eval, None, all);
    }
    let role = r.rollout.assign(active, &facts);
    metrics::tally(filter, rollout_glue::assignment_counter(role));
    match role {
        Role::Active => {
            let eval = F::decide(&compiled.policy, &compiled.state, &facts);
            act(filter, &compiled.header_name, active, &eval, Some(Role::Active), all)
        }
        Role::Candidate => {
            let eval = F::decide(&r.rollout.candidate, &r.state, &facts);
            act(filter, &compiled.header_name, r.rollout.candidate.header(), &eval, Some(Role::Candidate), all)
        }
    }
}

/// Counts (and logs, when they differ) the shadow candidate's decision beside the active one's.
fn compare_shadow<P: FilterPolicy>(
    filter: &str,
    active: &Header,
    candidate: &P,
    eval: &Outcome,
    shadow: &Outcome,
    facts: &RequestFacts<'_>,
) {
    if disagree(&eval.decision, &shadow.decision) {
        metrics::tally(filter, Counter::SHADOW_DISAGREED);
        let request_id = request_id(facts);
        let client = eval.client.or(shadow.client).map(|ip| ip.to_string()).unwrap_or_default();
        let line = ShadowRecord {
            filter,
            active_version: &active.policy_version,
            active: &eval.decision,
            candidate_version: &candidate.header().policy_version,
            candidate: &shadow.decision,
            request_id: &request_id,
            client: &client,
        };
        host::log(Level::Info, format_args!("{line}"));
    } else {
        metrics::tally(filter, Counter::SHADOW_AGREED);
    }
}

/// What this host can do, for [`Enforcer::check_host`].
pub fn host_caps() -> HostCaps {
    match host::host_kind() {
        host::HostKind::Envoy => HostCaps::ENVOY,
        host::HostKind::NgxWasmModule => HostCaps::NGX_WASM_MODULE,
    }
}

/// Request headers of a filter that may wait ([`Enforcer::WAITS`]): like [`on_request_headers`],
/// but the filter's [`Enforcer::start`] may ask for the body or a callout; then the request is
/// returned to be parked (and keeps the policy it started with until it is decided).
///
/// A shadow rollout compares the two policies only when both decide on the headers; when the
/// active one waits, the candidate is not run for that request.
pub fn on_request_headers_waiting<F: Enforcer>(compiled: Option<Rc<Compiled<F>>>, end_of_stream: bool) -> (Flow, Option<Waiting<F>>) {
    let filter = name::<F>();
    let Some(compiled) = compiled else {
        return (fail_closed(filter, "no valid policy is loaded", Counter::NO_POLICY), None);
    };
    let headers = match headers_for(filter, &compiled) {
        Ok(h) => h,
        Err(flow) => return (flow, None),
    };
    let all = compiled.all_headers_in(&headers);
    let peer = std::cell::OnceCell::new();
    let read_peer = || peer_address(filter);
    let facts = RequestFacts::with_peer_source(&headers, &peer, &read_peer);
    let (role, step) = match &compiled.rollout {
        None => (None, F::start(&compiled.policy, &compiled.state, &facts)),
        Some(r) if r.rollout.shadow => match F::start(&compiled.policy, &compiled.state, &facts) {
            Step::Done(eval) => {
                if let Step::Done(shadow) = F::start(&r.rollout.candidate, &r.state, &facts) {
                    compare_shadow(filter, compiled.policy.header(), &r.rollout.candidate, &eval, &shadow, &facts);
                }
                (None, Step::Done(eval))
            }
            waits => (None, waits),
        },
        Some(r) => {
            let role = r.rollout.assign(compiled.policy.header(), &facts);
            metrics::tally(filter, rollout_glue::assignment_counter(role));
            let step = match role {
                Role::Active => F::start(&compiled.policy, &compiled.state, &facts),
                Role::Candidate => F::start(&r.rollout.candidate, &r.state, &facts),
            };
            (Some(role), step)
        }
    };
    let body = match (end_of_stream, host::host_kind()) {
        (true, _) => BodyAhead::None,
        (false, host::HostKind::Envoy) => BodyAhead::Coming,
        // Only worked out if a step asks for the body (it may cost host calls).
        (false, host::HostKind::NgxWasmModule) => BodyAhead::AskHeaders,
    };
    waiting::drive(Rc::clone(&compiled), role, step, 0, At::Headers { body }, all)
}

/// The request id for a log line: from the headers already read, else one host call.
fn request_id(facts: &RequestFacts<'_>) -> String {
    match facts.header("x-request-id") {
        Some(id) => id.to_owned(),
        None => host::request_header("x-request-id").ok().flatten().unwrap_or_default(),
    }
}

/// Acts on the evaluation of the policy whose header is `header`: `role` is which policy of a
/// canary decided (None without a canary).
/// `all_headers`: every request header, when they were read for the policy (spares a host call).
pub(crate) fn act(
    filter: &str,
    header_name: &str,
    header: &Header,
    eval: &Outcome,
    role: Option<Role>,
    all_headers: Option<&[(String, String)]>,
) -> Flow {
    let version = &*header.policy_version;
    let rule = &*eval.decision.rule;
    let candidate = role == Some(Role::Candidate);
    match (&eval.decision.verdict, header.mode) {
        (Verdict::Allow, _) => {
            if let Some(action) = refuse_duplicates(filter, eval, header.decision_header.then_some(header_name), all_headers) {
                return action;
            }
            if let Err(e) = apply_request_mutations(eval) {
                return fail_closed(filter, &format!("cannot change the request headers (status {})", e.0), Counter::HOST_ERROR);
            }
            metrics::tally(filter, Counter::ALLOWED);
            if candidate {
                metrics::tally(filter, Counter::CANDIDATE_ALLOWED);
            }
            keep_allowed_response_headers(eval);
            if header.decision_header {
                let _ = host::set_request_header(header_name, &allow_header_value(rule, version));
            }
            Flow::Continue
        }
        (Verdict::Deny(denial), mode) => {
            let dry_run = mode == Mode::DryRun;
            // Read only on a denial: the id is for the log line.
            let request_id = host::request_header("x-request-id").ok().flatten().unwrap_or_default();
            let client = eval.client.map(|ip| ip.to_string()).unwrap_or_default();
            let record = eval.denial_record(filter, denial, version, dry_run, &request_id, &client, role.map(Role::as_str).unwrap_or(""));
            host::log(Level::Info, format_args!("{record}"));
            let (outcome, candidate_outcome) = if dry_run {
                (Counter::DRY_RUN_DENIED, Counter::CANDIDATE_DRY_RUN_DENIED)
            } else {
                (Counter::DENIED, Counter::CANDIDATE_DENIED)
            };
            metrics::tally(filter, outcome);
            metrics::tally_reason(filter, outcome, denial.reason);
            if candidate {
                metrics::tally(filter, candidate_outcome);
            }
            if dry_run {
                if let Some(action) = refuse_duplicates(filter, eval, header.decision_header.then_some(header_name), all_headers) {
                    return action;
                }
                if let Err(e) = apply_request_mutations(eval) {
                    return fail_closed(filter, &format!("cannot change the request headers (status {})", e.0), Counter::HOST_ERROR);
                }
                if header.decision_header {
                    let value = dry_run_header_value(denial.reason, rule, version);
                    let _ = host::set_request_header(header_name, &value);
                }
                keep_allowed_response_headers(eval);
                return Flow::Continue;
            }
            let details = format!("gatewarden_{filter}_{}", denial.reason);
            let (headers, body) = eval.local_response(denial);
            if let Err(e) = host::send_local_response(denial.status, &details, &headers, body) {
                host::log(Level::Error, format_args!("gatewarden {filter}: cannot send the denial (status {})", e.0));
            }
            Flow::Pause
        }
    }
}

thread_local! {
    /// The response headers of the request just let through ([`Outcome::allowed_response_headers`]),
    /// until the export that decided it files them under its context id
    /// ([`take_allowed_response_headers`]).
    static ALLOWED_RESPONSE_HEADERS: Cell<Option<Vec<(String, String)>>> = const { Cell::new(None) };
}

fn keep_allowed_response_headers(eval: &Outcome) {
    if !eval.allowed_response_headers.is_empty() {
        ALLOWED_RESPONSE_HEADERS.with(|c| c.set(Some(eval.allowed_response_headers.clone())));
    }
}

/// The response headers of the request the last callback let through, if it has any: the
/// export files them under the request's context id for its `on_response_headers`.
pub fn take_allowed_response_headers() -> Option<Vec<(String, String)>> {
    ALLOWED_RESPONSE_HEADERS.with(Cell::take)
}

/// Adds a let-through request's response headers (in `on_response_headers`). A host error is
/// logged: the response itself is not changed by a failure to add an informative header.
pub fn add_allowed_response_headers<F: Enforcer>(headers: &[(String, String)]) {
    for (header, value) in headers {
        if let Err(e) = host::set_response_header(header, value) {
            let filter = name::<F>();
            host::log(Level::Warn, format_args!("gatewarden {filter}: cannot add response header {header} (status {})", e.0));
            return;
        }
    }
}

/// `allow; rule=<rule>; version=<version>`, built without the formatting machinery (every
/// allowed request sends it).
pub fn allow_header_value(rule: &str, version: &str) -> String {
    const RULE: &str = "allow; rule=";
    const VERSION: &str = "; version=";
    let mut value = String::with_capacity(RULE.len() + rule.len() + VERSION.len() + version.len());
    value.push_str(RULE);
    value.push_str(rule);
    value.push_str(VERSION);
    value.push_str(version);
    value
}

/// On ngx_wasm_module, `:path` if the filter rewrites it (proxy_pass sends the original URI), or
/// the first header the filter strips or replaces that the client sent more than once. That host replaces only the first copy and marks the others deleted, and nginx's
/// `proxy_pass` still forwards them (seen on 3bed278): a forged `x-user` or a second token would
/// reach the upstream. Such a request fails closed there. One extra host call, on that host only,
/// and only when the evaluation changes headers.
fn duplicated_header<'a>(
    eval: &'a Outcome,
    decision_header: Option<&'a str>,
    all_headers: Option<&[(String, String)]>,
) -> Result<Option<&'a str>, host::HostError> {
    if host::host_kind() != host::HostKind::NgxWasmModule {
        return Ok(None);
    }
    if eval.set_headers.iter().any(|(n, _)| n == ":path") {
        // nginx's proxy_pass sends the original request URI, not a :path the filter rewrote
        // (seen on 3bed278): a token cut from the query would still reach the upstream.
        return Ok(Some(":path"));
    }
    let mut names = eval
        .remove_headers
        .iter()
        .map(String::as_str)
        .chain(eval.set_headers.iter().map(|(n, _)| n.as_str()))
        .chain(decision_header)
        .peekable();
    if names.peek().is_none() {
        return Ok(None);
    }
    let read;
    let headers = match all_headers {
        Some(h) => h,
        None => {
            read = host::request_headers()?;
            &read
        }
    };
    Ok(names.find(|name| headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count() > 1))
}

/// Fails the request closed (503, `host_error`) when [`duplicated_header`] finds one.
fn refuse_duplicates(
    filter: &str,
    eval: &Outcome,
    decision_header: Option<&str>,
    all_headers: Option<&[(String, String)]>,
) -> Option<Flow> {
    match duplicated_header(eval, decision_header, all_headers) {
        Ok(None) => None,
        Ok(Some(":path")) => Some(fail_closed(
            filter,
            "the filter must rewrite :path (a token in the query), which this host (ngx_wasm_module) would not send upstream",
            Counter::HOST_ERROR,
        )),
        Ok(Some(name)) => Some(fail_closed(
            filter,
            &format!("header {name:?} was sent more than once; this host (ngx_wasm_module) would forward the copies the filter must strip or replace"),
            Counter::HOST_ERROR,
        )),
        Err(e) => Some(fail_closed(filter, &format!("cannot read the request headers (status {})", e.0), Counter::HOST_ERROR)),
    }
}

/// Removes, then sets, the request headers of an evaluation. A failure is reported: a header
/// the filter could not strip may be a client's forgery, so the caller fails closed.
fn apply_request_mutations(eval: &Outcome) -> Result<(), host::HostError> {
    // On ngx_wasm_module a removed header still goes upstream (emptied, see host::remove_request_header),
    // so a header that is set next is not removed first: the set replaces its one copy (a request
    // with several copies was refused by `refuse_duplicates`).
    let ngx = host::host_kind() == host::HostKind::NgxWasmModule;
    for name in &eval.remove_headers {
        if ngx && eval.set_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        host::remove_request_header(name)?;
    }
    for (name, value) in &eval.set_headers {
        host::set_request_header(name, value)?;
    }
    Ok(())
}
