//! The native runtime: the same filters (the glue's [`Enforcer`]s, the same policy crates and the
//! same [`Step`] pipeline) driven by Envoy's dynamic-module event hooks instead of Proxy-Wasm.
//!
//! ```text
//! on_http_filter_config_new(name, filter_config)  main thread, per configuration (ECDS push)
//!   approvals ─ compile_set::<F::Policy>() ─ check_host ─▶ Native<F>   (or log, count, null:
//!                                                                    Envoy refuses the update)
//! on_http_filter_new ─▶ Request<F>               worker thread, per stream
//! request_headers ─ F::start(policy, state, facts) ─▶ Done ─▶ act (allow / deny / dry run)
//!                                                  ─▶ NeedBody: StopIteration, body hooks buffer,
//!                                                     then F::resume(Body | TooLarge | NoBody)
//!                                                  ─▶ Call(Http): callout, StopIteration, resume
//! ```
//!
//! What differs from the Wasm glue, by design:
//! - **No VM**: one configuration object serves every worker. A policy and its compiled schemas,
//!   key sets and tables exist once per process, not once per worker.
//! - **Policy state** ([`Enforcer::PolicyState`]) is per worker ([`PerWorker`]: one uncontended
//!   mutex each) unless the filter makes it shared itself (the rate limiter's one table for all
//!   workers, see the native crate).
//! - **Counters** go to Envoy at once (an atomic add in Envoy), no tally and flush.
//! - **Live update**: Envoy builds a new configuration for every filter-config push (ECDS) and
//!   keeps the old one until its streams end; a refused document returns null and Envoy keeps
//!   serving the last good configuration. Requests in flight finish with the policy they began with.
//! - **Trust settings** (approvals) come from the file named by `GATEWARDEN_TRUST_FILE` in Envoy's
//!   environment (the platform owner's, never the policy's), read once at module load.

use std::cell::{Cell, OnceCell};
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use gatewarden_glue::fasthash::FastMap;
use gatewarden_glue::metrics::{Counter, OUTCOMES};
use gatewarden_glue::pipeline::{CallFailure, Callout, HostCaps, Pending, Resumed, Step, MAX_STEPS};
use gatewarden_glue::rollout::{self as rollout_glue, ShadowRecord};
use gatewarden_glue::runtime::{allow_header_value, decision_header_name};
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_policy::approvals::TrustConfig;
use gatewarden_policy::decision::UNAVAILABLE_BODY;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::outcome::dry_run_header_value;
use gatewarden_policy::rollout::{accepted_message, disagree, Role, Rollout};
use gatewarden_policy::{compile_set, FilterPolicy, Header, Mode, RequestFacts, Verdict};

use crate::abi;
use crate::envoy::{self, ConfigHandle, Level, Stream};
use crate::remote::{Fetcher, Source};

/// What this host can do, for [`Enforcer::check_host`]: Envoy's body in chunks; gRPC as an
/// HTTP/2 callout (the dynamic-module ABI has HTTP callouts only, see [`grpc_request`]).
pub const NATIVE_CAPS: HostCaps = HostCaps { grpc: true, chunked_body: true, name: "envoy-native" };

/// A unary gRPC call as an HTTP callout: `POST /<service>/<method>`, `content-type:
/// application/grpc`, the message in one length-prefixed frame. The cluster must speak HTTP/2
/// (as for Envoy's own gRPC clients).
fn grpc_request(call: &gatewarden_glue::GrpcCallout) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers = vec![
        (":method".to_owned(), "POST".to_owned()),
        (":path".to_owned(), format!("/{}/{}", call.service, call.method)),
        (":authority".to_owned(), call.upstream.clone()),
        ("content-type".to_owned(), "application/grpc".to_owned()),
        ("te".to_owned(), "trailers".to_owned()),
    ];
    headers.extend(call.metadata.iter().cloned());
    let len = u32::try_from(call.message.len()).unwrap_or(u32::MAX);
    let mut body = Vec::with_capacity(5 + call.message.len());
    body.push(0);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(&call.message);
    (headers, body)
}

/// The gRPC status and message of an HTTP answer to [`grpc_request`]: a `grpc-status` in the
/// headers (a trailers-only answer: an error) wins; else a 200 with one whole frame is OK (the
/// callout hands over no trailers, so an OK is recognised by its message); anything else is
/// UNAVAILABLE (14) with no message.
fn grpc_answer<'a>(status: u16, headers: &[(String, String)], body: &'a [u8]) -> (u32, &'a [u8]) {
    if let Some(code) = headers.iter().find(|(k, _)| k == "grpc-status").and_then(|(_, v)| v.trim().parse::<u32>().ok()) {
        let message = if code == 0 { frame(body).unwrap_or(&[]) } else { &[] };
        return (code, message);
    }
    match (status, frame(body)) {
        (200, Some(message)) => (0, message),
        _ => (14, &[]),
    }
}

/// The message of one uncompressed length-prefixed gRPC frame that is the whole body.
fn frame(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let message = rest.get(4..)?;
    (flag == 0 && message.len() == len).then_some(message)
}

/// A filter the native runtime can serve: the glue's [`Enforcer`] whose policy and state can be
/// shared by (policy) or moved to (state) worker threads, and the remote resources its policy
/// fetches (the Wasm glue's `on_policy`/`on_tick` fetches, natively: [`crate::remote`]).
pub trait NativeFilter: Enforcer
where
    Self::Policy: Send + Sync,
    Self::PolicyState: Send,
{
    /// The resources the active policy fetches (a rollout candidate's are the active one's:
    /// `FilterPolicy::check_candidate` refuses a candidate that would need others).
    fn sources(_policy: &Self::Policy) -> Vec<Source> {
        Vec::new()
    }

    /// Whether the policy reads request headers only through `RequestFacts`' accessors, so they
    /// can be lent from Envoy's map instead of copied (`RequestFacts::borrowed`). A policy that
    /// reads `RequestFacts::headers` itself says false (validation).
    const BORROWS_HEADERS: bool = false;
}

/// The approvals' trust settings of this process (`GATEWARDEN_TRUST_FILE`), or why they are invalid.
fn trust() -> &'static Result<TrustConfig, String> {
    static TRUST: OnceLock<Result<TrustConfig, String>> = OnceLock::new();
    TRUST.get_or_init(|| match std::env::var_os("GATEWARDEN_TRUST_FILE") {
        None => Ok(TrustConfig::default()),
        Some(path) => match std::fs::read(&path) {
            Ok(bytes) => TrustConfig::parse(&bytes).map_err(|e| format!("invalid trust settings in {}: {e}", path.to_string_lossy())),
            Err(e) => Err(format!("cannot read the trust settings {}: {e}", path.to_string_lossy())),
        },
    })
}

thread_local! {
    /// Filter-specific counters a decision asked for ([`tally`]), counted when the request is acted on.
    static TALLY: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// The stream whose event hook is running on this thread (see [`request_header`]).
    static CURRENT: std::cell::Cell<Option<Stream>> = const { std::cell::Cell::new(None) };
}

/// Sets the current stream for the life of an event hook.
struct Current;

impl Current {
    fn enter(stream: Stream) -> Self {
        CURRENT.with(|c| c.set(Some(stream)));
        Current
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}

/// The first value of request header `name` of the request whose hook is running on this
/// thread (what a filter reads after its request facts are gone: a log line's request id).
pub fn request_header(name: &str) -> Option<String> {
    CURRENT.with(|c| c.get()).and_then(|s| s.request_header_values(name).into_iter().next())
}

/// The peer address (`ip:port`) of the request whose hook is running on this thread.
pub fn source_address() -> Option<String> {
    CURRENT.with(|c| c.get()).and_then(Stream::source_address)
}

/// Counts `gatewarden_<filter>_<name>` for the request being decided on this thread (a filter's
/// own counter, listed in its `Enforcer::extra_counters`).
pub fn tally(name: &'static str) {
    TALLY.with(|t| t.borrow_mut().push(name));
}

/// The native module's [`Report`](gatewarden_policy::outcome::Report): counts through [`tally`]
/// (for the request being decided on this thread) and logs through Envoy.
pub struct NativeReport;

impl gatewarden_policy::outcome::Report for NativeReport {
    fn count(&self, name: &'static str) {
        tally(name);
    }

    fn log(&self, level: gatewarden_policy::outcome::ReportLevel, message: std::fmt::Arguments<'_>) {
        let level = match level {
            gatewarden_policy::outcome::ReportLevel::Info => Level::Info,
            gatewarden_policy::outcome::ReportLevel::Warn => Level::Warn,
        };
        envoy::log(level, message);
    }
}

/// Per-worker values, one mutex each (a worker only ever locks its own: never contended).
pub struct PerWorker<S> {
    slots: Vec<Mutex<S>>,
}

impl<S> PerWorker<S> {
    fn new(workers: usize, mut make: impl FnMut() -> S) -> Self {
        Self { slots: (0..workers.max(1)).map(|_| Mutex::new(make())).collect() }
    }

    fn with<R>(&self, worker: u32, f: impl FnOnce(&S) -> R) -> Option<R> {
        let n = self.slots.len();
        let slot = self.slots.get(usize::try_from(worker).unwrap_or(0) % n.max(1))?;
        let guard = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(f(&guard))
    }
}

/// Counter ids of one configuration, by the name after `gatewarden_<filter>_`.
struct Counters {
    /// Looked up on every request (`allowed`): a fast hash of a short name, no allocation.
    ids: FastMap<String, usize>,
    /// By denial reason: the ids of `denied_<reason>` and `dry_run_denied_<reason>`, and the
    /// response details `gatewarden_<filter>_<reason>` (a denial formats no name).
    reasons: FastMap<&'static str, Reason>,
    /// `allowed`, counted on most requests: kept apart from the lookup.
    allowed: Option<usize>,
    config: ConfigHandle,
}

impl Counters {
    fn define<F: Enforcer>(config: ConfigHandle) -> Self {
        let filter = <F::Policy as FilterPolicy>::NAME;
        let reasons = F::reasons();
        let waits: &[Counter] = if F::WAITS { gatewarden_glue::waiting::COUNTERS } else { &[] };
        let names = OUTCOMES
            .iter()
            .chain(rollout_glue::COUNTERS)
            .chain(waits)
            .map(|c| c.name().to_owned())
            .chain(reasons.iter().map(|r| format!("denied_{r}")))
            .chain(reasons.iter().map(|r| format!("dry_run_denied_{r}")))
            .chain(F::extra_counters());
        let mut ids = FastMap::default();
        for outcome in names {
            let full = format!("gatewarden_{filter}_{outcome}");
            match config.define_counter(&full) {
                Some(id) => {
                    ids.insert(outcome, id);
                }
                None => envoy::log(Level::Warn, format_args!("gatewarden {filter}: cannot define counter {full}")),
            }
        }
        let reasons = reasons
            .iter()
            .map(|r| {
                let reason = Reason {
                    denied: ids.get(&format!("denied_{r}")).copied(),
                    dry_run: ids.get(&format!("dry_run_denied_{r}")).copied(),
                    details: format!("gatewarden_{filter}_{r}"),
                };
                (*r, reason)
            })
            .collect();
        let allowed = ids.get(Counter::ALLOWED.name()).copied();
        Self { ids, reasons, allowed, config }
    }

    fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    /// Counts `gatewarden_<filter>_<name>` outside a request (fetches); an undefined name is ignored.
    fn count_named(&self, name: &str) {
        if let Some(id) = self.id(name) {
            self.config.increment_counter(id, 1);
        }
    }

    /// Counts outside a request (configuration).
    fn count_config(&self, counter: Counter) {
        if let Some(id) = self.id(counter.name()) {
            self.config.increment_counter(id, 1);
        }
    }

    fn count(&self, stream: Stream, counter: Counter) {
        if let Some(id) = self.id(counter.name()) {
            stream.increment_counter(id, 1);
        }
    }

    /// Counts `denied_<reason>` (or `dry_run_denied_<reason>`).
    fn count_reason(&self, stream: Stream, dry_run: bool, reason: &str) {
        let id = self.reasons.get(reason).and_then(|r| if dry_run { r.dry_run } else { r.denied });
        if let Some(id) = id {
            stream.increment_counter(id, 1);
        }
    }
}

/// A denial reason's counters and response details.
struct Reason {
    denied: Option<usize>,
    dry_run: Option<usize>,
    details: String,
}

/// A rollout's candidate policy and its per-worker state.
type Candidate<F> = (Rollout<<F as Enforcer>::Policy>, PerWorker<<F as Enforcer>::PolicyState>);

/// One filter configuration: a compiled policy document and what its requests need.
pub struct Native<F: NativeFilter>
where
    F::Policy: Send + Sync,
    F::PolicyState: Send,
{
    policy: F::Policy,
    state: PerWorker<F::PolicyState>,
    rollout: Option<Candidate<F>>,
    needs: HeaderNeeds,
    all_headers: bool,
    header_name: String,
    counters: Counters,
    fetcher: Fetcher,
}

fn name<F: Enforcer>() -> &'static str {
    <F::Policy as FilterPolicy>::NAME
}

/// Builds a configuration from the `filter_config` bytes; None (logged, counted) refuses it.
pub fn new_config<F: NativeFilter>(config: ConfigHandle, bytes: &[u8]) -> Option<Native<F>>
where
    F::Policy: Send + Sync,
    F::PolicyState: Send,
{
    let filter = name::<F>();
    let counters = Counters::define::<F>(config);
    let refuse = |why: &str, extra: Option<Counter>| {
        envoy::log(Level::Error, format_args!("gatewarden {filter}: policy refused: {why}"));
        counters.count_config(Counter::CONFIG_REJECTED);
        if let Some(c) = extra {
            counters.count_config(c);
        }
    };
    match trust() {
        Err(why) => {
            refuse(why, Some(Counter::TRUST_CONFIG_REJECTED));
            return None;
        }
        Ok(trust) if trust.required() > 0 => {
            if let Err(e) = trust.verify(bytes) {
                refuse(&e.to_string(), Some(Counter::SIGNATURE_REJECTED));
                return None;
            }
        }
        Ok(_) => {}
    }
    let set = match compile_set::<F::Policy>(bytes) {
        Ok(set) => set,
        Err(e) => {
            refuse(&e.to_string(), None);
            return None;
        }
    };
    if let Err(why) = F::check_host(&set.active, &NATIVE_CAPS) {
        refuse(&why, None);
        return None;
    }
    if let Some(r) = &set.rollout {
        if let Err(why) = F::check_host(&r.candidate, &NATIVE_CAPS) {
            refuse(&format!("rollout.candidate.{why}"), None);
            return None;
        }
    }
    let policy = set.active;
    let what = accepted_message(&policy, set.rollout.as_ref());
    envoy::log(Level::Info, format_args!("gatewarden {filter}: {what} (native module)"));
    counters.count_config(Counter::CONFIG_ACCEPTED);
    let workers = usize::try_from(envoy::concurrency()).unwrap_or(1);
    let mut needs = F::header_needs(&policy);
    let mut all_headers = F::reads_all_headers(&policy);
    let rollout = set.rollout.map(|r| {
        for n in F::header_needs(&r.candidate).names() {
            needs.add(n);
        }
        r.add_needs(&mut needs);
        all_headers |= F::reads_all_headers(&r.candidate);
        let state = PerWorker::new(workers, || F::policy_state(&r.candidate));
        (r, state)
    });
    let fetcher = Fetcher::new(filter, config, F::sources(&policy));
    let state = PerWorker::new(workers, || F::policy_state(&policy));
    let header_name = decision_header_name(filter);
    if policy.header().decision_header || rollout.as_ref().is_some_and(|(r, _)| r.candidate.header().decision_header) {
        // Whether the client sent one decides how ours is written (see `put_decision_header`).
        needs.add(&header_name);
    }
    let native = Native { policy, state, rollout, needs, all_headers, header_name, counters, fetcher };
    // The first fetches start now: a resource this process already holds keeps serving meanwhile.
    native.on_scheduled(config);
    Some(native)
}

/// What a request waits for, and with which policy it started.
struct Waiting {
    role: Option<Role>,
    pending: Pending,
    steps: u8,
    /// The body limit of a [`Step::NeedBody`].
    max_bytes: usize,
    /// The callout under way.
    call: Option<Call>,
}

/// Which event hook is running when a request is acted on: its return value passes, holds or
/// ends the request, except after an asynchronous answer, where the request is resumed with
/// `continue_decoding` (never from inside a hook: returning Continue there resumes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers { end_of_stream: bool },
    Body,
    Trailers,
    Async,
}

impl Phase {
    /// Lets the request go on. (Continue is 0 for every hook.)
    fn pass(self, stream: Stream) -> u32 {
        if self == Phase::Async {
            stream.continue_decoding();
        }
        abi::HEADERS_CONTINUE
    }

    /// Holds the request while it waits (StopIteration; for a body, StopIterationAndBuffer).
    fn wait(self) -> u32 {
        abi::HEADERS_STOP_ITERATION
    }

    /// The request was answered locally: nothing more of it goes on.
    fn stop(self) -> u32 {
        match self {
            Phase::Body => abi::BODY_STOP_NO_BUFFER,
            _ => abi::HEADERS_STOP_ITERATION,
        }
    }
}

/// A callout under way: its id, when it started, its timeout and answer limit, and whether it
/// carries a gRPC call.
#[derive(Debug, Clone, Copy)]
struct Call {
    id: u64,
    started: Instant,
    timeout: Duration,
    max_bytes: usize,
    grpc: bool,
}

/// One stream's filter.
pub struct Request<F: NativeFilter>
where
    F::Policy: Send + Sync,
    F::PolicyState: Send,
{
    config: *const Native<F>,
    /// What the request waits for. Cells, not `&mut self`: Envoy re-enters a stream's hooks (a
    /// local reply runs its response hooks inside `send_response`), so every hook takes `&self`
    /// and no borrow is held across a call into Envoy.
    waiting: Cell<Option<Waiting>>,
    /// Response headers of an allowed request (rate-limit headers), set on the response.
    allowed_response_headers: Cell<Vec<(String, String)>>,
}

/// The event-hook side of a configuration, as the exported hooks see it.
pub trait AnyConfig: Send + Sync {
    /// A new stream's filter, as Envoy holds it ([`request_into_raw`]).
    fn new_request(&self) -> abi::FilterModulePtr;
    /// Main thread: the configuration's tick (remote resources' schedules).
    fn on_scheduled(&self, config: ConfigHandle);
    /// Main thread: a configuration callout (a fetch) finished.
    fn on_callout_done(&self, id: u64, ok: bool, headers: &[(String, String)], body: &[u8]);
}

/// The event-hook side of a stream's filter.
pub trait AnyRequest {
    fn on_request_headers(&self, stream: Stream, end_of_stream: bool) -> u32;
    fn on_request_body(&self, stream: Stream, end_of_stream: bool) -> u32;
    fn on_request_trailers(&self, stream: Stream) -> u32;
    /// The stream ended (answered, or the client went away).
    fn on_stream_complete(&self, stream: Stream);
    fn on_response_headers(&self, stream: Stream) -> u32;
    fn on_callout_done(&self, stream: Stream, id: u64, result: u32, headers: &[(String, String)], body: &[u8]);
}

impl<F: NativeFilter> AnyConfig for Native<F>
where
    F::Policy: Send + Sync,
    F::PolicyState: Send,
{
    fn new_request(&self) -> abi::FilterModulePtr {
        request_into_raw(Request::<F> { config: self, waiting: Cell::new(None), allowed_response_headers: Cell::new(Vec::new()) })
    }

    fn on_scheduled(&self, config: ConfigHandle) {
        if !self.fetcher.is_empty() {
            self.fetcher.tick(config, &|name| self.counters.count_named(name));
        }
    }

    fn on_callout_done(&self, id: u64, ok: bool, headers: &[(String, String)], body: &[u8]) {
        let _ = self.fetcher.on_response(id, ok, headers, body, &|name| self.counters.count_named(name));
    }
}

/// Reads the headers a policy needs (all of them, or the named ones) into `out`, in one
/// crossing; returns how many headers the request has.
fn read_headers(stream: Stream, needs: &HeaderNeeds, all: bool, out: &mut Vec<(String, String)>) -> usize {
    if all {
        stream.fill_request_headers_where(out, |_| true)
    } else if needs.names().is_empty() {
        // Nothing read: no header, and no count (a policy that counts headers reads some).
        out.clear();
        0
    } else {
        stream.fill_request_headers_where(out, |k| needs.names().iter().any(|n| n.as_bytes() == k))
    }
}

thread_local! {
    /// The request headers of the request being decided on this worker: a buffer reused from
    /// request to request (its strings keep their capacity), so reading headers costs copies,
    /// not allocations.
    static HEADERS: Cell<Vec<(String, String)>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with the facts of the request: the headers a policy needs (see [`read_headers`]) in
/// this worker's reused buffer, or lent from Envoy's map (`borrow`, see
/// [`NativeFilter::BORROWS_HEADERS`]); the header count; the peer address on demand. A hook
/// re-entered meanwhile gets a fresh buffer (the cell is empty then).
///
/// Lent headers are valid until the request's headers change: `f` must read from the facts
/// whatever it needs before it sets, adds or removes a request header ([`Request::act`] does).
fn with_facts<R>(stream: Stream, needs: &HeaderNeeds, all: bool, borrow: bool, f: impl FnOnce(&RequestFacts<'_>) -> R) -> R {
    let peer = OnceCell::new();
    let read_peer = || stream.source_address();
    if borrow && !all && !needs.names().is_empty() {
        let mut lent = Vec::with_capacity(needs.names().len());
        // SAFETY: the strings live in `lent`, dropped when `f` returns (this hook); `f` reads the
        // facts only before it changes request headers (see above).
        let count = unsafe { stream.borrow_request_headers_where(&mut lent, |k| needs.names().iter().any(|n| n.as_bytes() == k)) };
        if let Some(count) = count {
            let facts = RequestFacts::with_peer_source(&[], &peer, &read_peer).with_borrowed_headers(&lent).with_header_count(count);
            return f(&facts);
        }
        // A needed header that is not UTF-8: read them copied (invalid bytes replaced).
    }
    let mut buf = HEADERS.with(Cell::take);
    let count = read_headers(stream, needs, all, &mut buf);
    let r = {
        let facts = RequestFacts::with_peer_source(&buf, &peer, &read_peer);
        f(&facts.with_header_count(count))
    };
    HEADERS.with(|h| h.set(buf));
    r
}

impl<F: NativeFilter> Request<F>
where
    F::Policy: Send + Sync,
    F::PolicyState: Send,
{
    fn native<'a>(&self) -> &'a Native<F> {
        // SAFETY: Envoy keeps a filter configuration alive until every stream it made is
        // destroyed (each stream's filter holds a reference to it), so the configuration outlives
        // this request.
        unsafe { &*self.config }
    }

    fn policy_of<'a>(&self, role: Option<Role>) -> (&'a F::Policy, &'a PerWorker<F::PolicyState>) {
        let n = self.native();
        match (role, &n.rollout) {
            (Some(Role::Candidate), Some((r, state))) => (&r.candidate, state),
            _ => (&n.policy, &n.state),
        }
    }

    fn fail_closed(&self, stream: Stream, phase: Phase, why: &str, counter: Counter) -> u32 {
        let n = self.native();
        let filter = name::<F>();
        envoy::log(Level::Error, format_args!("gatewarden {filter}: request denied: {why}"));
        n.counters.count(stream, counter);
        let details = format!("gatewarden_{filter}_{}", counter.name());
        stream.send_response(503, &[("content-type", "application/json")], UNAVAILABLE_BODY, &details);
        phase.stop()
    }

    /// Whether the request waits for a callout, and its body limit, if it waits at all.
    fn peek(&self) -> Option<(bool, usize)> {
        let waiting = self.waiting.take();
        let info = waiting.as_ref().map(|w| (w.call.is_some(), w.max_bytes));
        self.waiting.set(waiting);
        info
    }

    fn on_headers(&self, stream: Stream, end_of_stream: bool) -> u32 {
        let n = self.native();
        with_facts(stream, &n.needs, n.all_headers, F::BORROWS_HEADERS, |facts| self.decide_headers(stream, end_of_stream, facts))
    }

    fn decide_headers(&self, stream: Stream, end_of_stream: bool, facts: &RequestFacts<'_>) -> u32 {
        let n = self.native();
        let worker = stream.worker_index();
        let start = |policy: &F::Policy, state: &PerWorker<F::PolicyState>| {
            state.with(worker, |s| F::start(policy, s, facts)).unwrap_or(Step::Unavailable("no policy state for this worker"))
        };
        let (role, step) = match &n.rollout {
            None => (None, start(&n.policy, &n.state)),
            Some((r, rstate)) if r.shadow => match start(&n.policy, &n.state) {
                Step::Done(eval) => {
                    if let Step::Done(shadow) = start(&r.candidate, rstate) {
                        self.compare_shadow(stream, &r.candidate, &eval, &shadow, facts);
                    }
                    (None, Step::Done(eval))
                }
                waits => (None, waits),
            },
            Some((r, rstate)) => {
                let role = r.assign(n.policy.header(), facts);
                n.counters.count(stream, rollout_glue::assignment_counter(role));
                let step = match role {
                    Role::Active => start(&n.policy, &n.state),
                    Role::Candidate => start(&r.candidate, rstate),
                };
                (Some(role), step)
            }
        };
        self.drive(stream, role, step, 0, Phase::Headers { end_of_stream }, false, facts)
    }

    fn compare_shadow(&self, stream: Stream, candidate: &F::Policy, eval: &Outcome, shadow: &Outcome, facts: &RequestFacts<'_>) {
        let n = self.native();
        if disagree(&eval.decision, &shadow.decision) {
            n.counters.count(stream, Counter::SHADOW_DISAGREED);
            let client = eval.client.or(shadow.client).map(|ip| ip.to_string()).unwrap_or_default();
            let request_id = request_id(stream, facts);
            let line = ShadowRecord {
                filter: name::<F>(),
                active_version: &n.policy.header().policy_version,
                active: &eval.decision,
                candidate_version: &candidate.header().policy_version,
                candidate: &shadow.decision,
                request_id: &request_id,
                client: &client,
            };
            envoy::log(Level::Info, format_args!("{line}"));
        } else {
            n.counters.count(stream, Counter::SHADOW_AGREED);
        }
    }

    /// Acts on a step in `phase`; returns the status for the hook that is running.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &self,
        stream: Stream,
        role: Option<Role>,
        step: Step,
        steps: u8,
        phase: Phase,
        after_body: bool,
        facts: &RequestFacts<'_>,
    ) -> u32 {
        let n = self.native();
        let filter = name::<F>();
        let mut step = step;
        let mut steps = steps;
        loop {
            if steps >= MAX_STEPS {
                step = Step::Unavailable("the filter asked for more steps than one request may take");
            }
            match step {
                Step::Done(eval) => {
                    let header = self.policy_of(role).0.header();
                    self.waiting.set(None);
                    return self.act(stream, header, &eval, role, facts, phase, after_body);
                }
                Step::Unavailable(why) => {
                    self.waiting.set(None);
                    n.counters.count(stream, Counter::WAITING_FAILED);
                    return self.fail_closed(stream, phase, why, Counter::HOST_ERROR);
                }
                Step::NeedBody { max_bytes, pending } => {
                    if phase == (Phase::Headers { end_of_stream: true }) {
                        // No body: resume at once, headers still held.
                        let (policy, state) = self.policy_of(role);
                        let worker = stream.worker_index();
                        step = state
                            .with(worker, |s| F::resume(policy, s, pending, Resumed::NoBody))
                            .unwrap_or(Step::Unavailable("no policy state for this worker"));
                        steps += 1;
                        continue;
                    }
                    self.waiting.set(Some(Waiting { role, pending, steps, max_bytes, call: None }));
                    return phase.wait();
                }
                Step::Call { call, pending } => {
                    let (upstream, headers, body, timeout, max_bytes, grpc) = match call {
                        Callout::Http(h) => (h.upstream, h.headers, h.body, h.timeout, h.max_response_bytes, false),
                        Callout::Grpc(g) => {
                            let (headers, body) = grpc_request(&g);
                            // The frame's 5 bytes come on top of the message limit.
                            (g.upstream, headers, body, g.timeout, g.max_response_bytes.saturating_add(5), true)
                        }
                    };
                    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
                    match stream.http_callout(&upstream, &headers, &body, timeout_ms) {
                        Ok(id) => {
                            self.waiting.set(Some(Waiting {
                                role,
                                pending,
                                steps,
                                max_bytes: 0,
                                call: Some(Call { id, started: Instant::now(), timeout, max_bytes, grpc }),
                            }));
                            return phase.wait();
                        }
                        Err(status) => {
                            envoy::log(
                                Level::Warn,
                                format_args!("gatewarden {filter}: callout to {upstream:?} refused by Envoy (status {status})"),
                            );
                            n.counters.count(stream, Counter::CALLOUT_DISPATCH_FAILED);
                            let (policy, state) = self.policy_of(role);
                            step = state
                                .with(stream.worker_index(), |s| {
                                    F::resume(policy, s, pending, Resumed::Failed(CallFailure::DispatchFailed))
                                })
                                .unwrap_or(Step::Unavailable("no policy state for this worker"));
                            steps += 1;
                        }
                    }
                }
            }
        }
    }

    /// Acts on a decision made in `phase`. `after_body`: decided on the request body. The request
    /// headers are still held then (this host, unlike Proxy-Wasm, can hold them until the body is
    /// decided: an upstream never sees a request before its validation), but they go upstream as
    /// the Wasm build sends them: no decision header after a body decision.
    #[allow(clippy::too_many_arguments)]
    fn act(
        &self,
        stream: Stream,
        header: &Header,
        eval: &Outcome,
        role: Option<Role>,
        facts: &RequestFacts<'_>,
        phase: Phase,
        after_body: bool,
    ) -> u32 {
        let n = self.native();
        let filter = name::<F>();
        for extra in TALLY.with(|t| std::mem::take(&mut *t.borrow_mut())) {
            if let Some(id) = n.counters.id(extra) {
                stream.increment_counter(id, 1);
            }
        }
        let version = &*header.policy_version;
        let rule = &*eval.decision.rule;
        let candidate = role == Some(Role::Candidate);
        // Read from the facts before any request header changes (their headers may be lent
        // from Envoy's map, see `with_facts`): whether the client sent a decision header.
        let writes_decision_header = header.decision_header && !after_body;
        let client_sent_one = writes_decision_header && facts.header(&n.header_name).is_some();
        let pass = |this: &Self| {
            if !eval.allowed_response_headers.is_empty() {
                this.allowed_response_headers.set(eval.allowed_response_headers.clone());
            }
            phase.pass(stream)
        };
        match (&eval.decision.verdict, header.mode) {
            (Verdict::Allow, _) => {
                if !apply_mutations(stream, eval) {
                    return self.fail_closed(stream, phase, "cannot change the request headers", Counter::HOST_ERROR);
                }
                if let Some(id) = n.counters.allowed {
                    stream.increment_counter(id, 1);
                }
                if candidate {
                    n.counters.count(stream, Counter::CANDIDATE_ALLOWED);
                }
                if writes_decision_header {
                    put_decision_header(stream, &n.header_name, &allow_header_value(rule, version), client_sent_one);
                }
                pass(self)
            }
            (Verdict::Deny(denial), mode) => {
                let dry_run = mode == Mode::DryRun;
                if envoy::log_enabled(Level::Info) {
                    // The request id and the client are read and written for the log line only.
                    let request_id = request_id(stream, facts);
                    let client = eval.client.map(|ip| ip.to_string()).unwrap_or_default();
                    let rollout = role.map(Role::as_str).unwrap_or("");
                    let record = eval.denial_record(filter, denial, version, dry_run, &request_id, &client, rollout);
                    envoy::log(Level::Info, format_args!("{record}"));
                }
                let (outcome, candidate_outcome) = if dry_run {
                    (Counter::DRY_RUN_DENIED, Counter::CANDIDATE_DRY_RUN_DENIED)
                } else {
                    (Counter::DENIED, Counter::CANDIDATE_DENIED)
                };
                n.counters.count(stream, outcome);
                n.counters.count_reason(stream, dry_run, denial.reason);
                if candidate {
                    n.counters.count(stream, candidate_outcome);
                }
                if dry_run {
                    if !apply_mutations(stream, eval) {
                        return self.fail_closed(stream, phase, "cannot change the request headers", Counter::HOST_ERROR);
                    }
                    if writes_decision_header {
                        let value = dry_run_header_value(denial.reason, rule, version);
                        put_decision_header(stream, &n.header_name, &value, client_sent_one);
                    }
                    return pass(self);
                }
                let details = match n.counters.reasons.get(denial.reason) {
                    Some(r) => std::borrow::Cow::Borrowed(r.details.as_str()),
                    None => std::borrow::Cow::Owned(format!("gatewarden_{filter}_{}", denial.reason)),
                };
                let (headers, body) = eval.local_response(denial);
                stream.send_response(denial.status, &headers, body, &details);
                phase.stop()
            }
        }
    }

    /// Resumes a waiting request with `input` in `phase` (a body, trailers or callout hook).
    fn resume(&self, stream: Stream, phase: Phase, input: Resumed<'_>) -> u32 {
        let Some(w) = self.waiting.take() else { return abi::BODY_CONTINUE };
        let (policy, state) = self.policy_of(w.role);
        let step = state
            .with(stream.worker_index(), |s| F::resume(policy, s, w.pending, input))
            .unwrap_or(Step::Unavailable("no policy state for this worker"));
        // The headers a later step may read are the ones read at the start; a resumed decision's
        // log line reads the request id again.
        let n = self.native();
        with_facts(stream, &n.needs, n.all_headers, F::BORROWS_HEADERS, |facts| {
            self.drive(stream, w.role, step, w.steps.saturating_add(1), phase, w.call.is_none(), facts)
        })
    }
}

fn request_id(stream: Stream, facts: &RequestFacts<'_>) -> String {
    match facts.header("x-request-id") {
        Some(id) => id.to_owned(),
        None => stream.request_header_values("x-request-id").into_iter().next().unwrap_or_default(),
    }
}

/// Writes the decision header: added when the request came without one (the cheaper call),
/// else set, replacing the client's (a forgery).
fn put_decision_header(stream: Stream, name: &str, value: &str, client_sent_one: bool) {
    if client_sent_one {
        stream.set_request_header(name, value);
    } else {
        stream.add_request_header(name, value);
    }
}

/// Removes, then sets, the request headers of an evaluation; false if Envoy refused one (a header
/// the filter could not strip may be a client's forgery: the caller fails closed).
fn apply_mutations(stream: Stream, eval: &Outcome) -> bool {
    for name in &eval.remove_headers {
        // Removing an absent header is not an error; Envoy answers false only without a map.
        let _ = stream.remove_request_header(name);
    }
    eval.set_headers.iter().all(|(name, value)| stream.set_request_header(name, value))
}

impl<F: NativeFilter> AnyRequest for Request<F>
where
    F::Policy: Send + Sync,
    F::PolicyState: Send,
{
    fn on_request_headers(&self, stream: Stream, end_of_stream: bool) -> u32 {
        let _current = Current::enter(stream);
        self.on_headers(stream, end_of_stream)
    }

    fn on_request_body(&self, stream: Stream, end_of_stream: bool) -> u32 {
        let _current = Current::enter(stream);
        let Some((calling, max)) = self.peek() else { return abi::BODY_CONTINUE };
        if calling {
            // Waiting for a service: hold the body meanwhile.
            return abi::BODY_STOP_AND_BUFFER;
        }
        let size = stream.request_body_size();
        if size > max {
            self.native().counters.count(stream, Counter::BODY_TOO_LARGE);
            return self.resume(stream, Phase::Body, Resumed::BodyTooLarge { seen: size });
        }
        if !end_of_stream {
            return abi::BODY_STOP_AND_BUFFER;
        }
        let body = stream.request_body();
        self.resume(stream, Phase::Body, Resumed::Body(&body))
    }

    fn on_request_trailers(&self, stream: Stream) -> u32 {
        let _current = Current::enter(stream);
        let Some((calling, max)) = self.peek() else { return abi::TRAILERS_CONTINUE };
        if calling {
            return abi::TRAILERS_STOP;
        }
        // Trailers end the request: the body (all buffered by now) is whole.
        let size = stream.request_body_size();
        if size > max {
            self.native().counters.count(stream, Counter::BODY_TOO_LARGE);
            return self.resume(stream, Phase::Trailers, Resumed::BodyTooLarge { seen: size });
        }
        let body = stream.request_body();
        self.resume(stream, Phase::Trailers, Resumed::Body(&body))
    }

    fn on_stream_complete(&self, stream: Stream) {
        if self.waiting.take().is_some() {
            // Still waiting when the stream ended: the client went away (or was reset).
            self.native().counters.count(stream, Counter::WAITING_ABANDONED);
        }
    }

    fn on_response_headers(&self, stream: Stream) -> u32 {
        if self.waiting.take().is_some() {
            // Envoy answered (e.g. its own 413 past the connection buffer limit) while the
            // request waited: that answer goes on; the request never reached the upstream.
            let counter = if stream.response_status() == Some(413) { Counter::BODY_TOO_LARGE } else { Counter::ANSWERED_BEFORE_BODY };
            self.native().counters.count(stream, counter);
        }
        for (k, v) in self.allowed_response_headers.take() {
            if !stream.set_response_header(&k, &v) {
                envoy::log(Level::Warn, format_args!("gatewarden {}: cannot add response header {k}", name::<F>()));
                break;
            }
        }
        abi::HEADERS_CONTINUE
    }

    fn on_callout_done(&self, stream: Stream, id: u64, result: u32, headers: &[(String, String)], body: &[u8]) {
        let _current = Current::enter(stream);
        let waiting = self.waiting.take();
        let call = waiting.as_ref().and_then(|w| w.call);
        self.waiting.set(waiting);
        let Some(Call { id: call_id, started, timeout, max_bytes, grpc }) = call else { return };
        if call_id != id {
            return;
        }
        let counters = &self.native().counters;
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
        let input = match (result, status) {
            (abi::CALLOUT_SUCCESS, Some(_)) if body.len() > max_bytes => {
                counters.count(stream, Counter::CALLOUT_TOO_LARGE);
                Resumed::Failed(CallFailure::ResponseTooLarge)
            }
            (abi::CALLOUT_SUCCESS, Some(504)) | (abi::CALLOUT_RESET, _) | (abi::CALLOUT_SUCCESS, None) if started.elapsed() >= timeout => {
                counters.count(stream, Counter::CALLOUT_TIMEOUT);
                Resumed::Failed(CallFailure::Timeout)
            }
            (abi::CALLOUT_SUCCESS, Some(status)) if grpc => {
                let (status, message) = grpc_answer(status, headers, body);
                Resumed::Grpc { status, message }
            }
            (abi::CALLOUT_SUCCESS, Some(status)) => Resumed::Http { status, headers, body },
            (abi::CALLOUT_TOO_LARGE, _) => {
                counters.count(stream, Counter::CALLOUT_TOO_LARGE);
                Resumed::Failed(CallFailure::ResponseTooLarge)
            }
            _ => {
                counters.count(stream, Counter::CALLOUT_FAILED);
                Resumed::Failed(CallFailure::CallFailed)
            }
        };
        // Resumed with continue_decoding on a pass, or answered: the status is for no hook.
        let _ = self.resume(stream, Phase::Async, input);
    }
}

/// The floor: a filter that does nothing (`filter_name: floor`, any `filter_config`), as the
/// `.wasm` floor is for Proxy-Wasm: what the dynamic-module plumbing costs a request (the
/// stream's filter, its allocation, every hook crossing) before any policy runs. For benchmarks.
pub struct Floor;

struct FloorRequest;

impl AnyConfig for Floor {
    fn new_request(&self) -> abi::FilterModulePtr {
        request_into_raw(FloorRequest)
    }
    fn on_scheduled(&self, _config: ConfigHandle) {}
    fn on_callout_done(&self, _id: u64, _ok: bool, _headers: &[(String, String)], _body: &[u8]) {}
}

impl AnyRequest for FloorRequest {
    fn on_request_headers(&self, _stream: Stream, _end_of_stream: bool) -> u32 {
        abi::HEADERS_CONTINUE
    }
    fn on_request_body(&self, _stream: Stream, _end_of_stream: bool) -> u32 {
        abi::BODY_CONTINUE
    }
    fn on_request_trailers(&self, _stream: Stream) -> u32 {
        abi::TRAILERS_CONTINUE
    }
    fn on_stream_complete(&self, _stream: Stream) {}
    fn on_response_headers(&self, _stream: Stream) -> u32 {
        abi::HEADERS_CONTINUE
    }
    fn on_callout_done(&self, _stream: Stream, _id: u64, _result: u32, _headers: &[(String, String)], _body: &[u8]) {}
}

// ---- Pointers handed to Envoy ----

/// A configuration as Envoy holds it: a thin pointer to a boxed trait object.
pub fn config_into_raw(config: Box<dyn AnyConfig>) -> abi::ConfigModulePtr {
    Box::into_raw(Box::new(config)) as *const c_void
}

/// # Safety
/// `ptr` came from [`config_into_raw`] and was not destroyed.
pub unsafe fn config_ref<'a>(ptr: abi::ConfigModulePtr) -> Option<&'a dyn AnyConfig> {
    // SAFETY: per the contract, a live Box<Box<dyn AnyConfig>>.
    unsafe { (ptr as *const Box<dyn AnyConfig>).as_ref() }.map(|b| &**b)
}

/// # Safety
/// `ptr` came from [`config_into_raw`]; destroyed once.
pub unsafe fn config_drop(ptr: abi::ConfigModulePtr) {
    if !ptr.is_null() {
        // SAFETY: per the contract.
        drop(unsafe { Box::from_raw(ptr as *mut Box<dyn AnyConfig>) });
    }
}

/// A stream's filter as Envoy holds it: one allocation per stream, a thin pointer to the request
/// led by the functions that view and free it (a boxed trait object would need a second box:
/// its pointer is two words, Envoy keeps one).
#[repr(C)]
struct Held<R> {
    hooks: &'static HeldHooks,
    request: R,
}

struct HeldHooks {
    view: unsafe fn(*const c_void) -> *const dyn AnyRequest,
    free: unsafe fn(*mut c_void),
}

impl<R: AnyRequest + 'static> Held<R> {
    const HOOKS: HeldHooks = HeldHooks { view: Self::view, free: Self::free };

    /// # Safety
    /// `ptr` is a live `Held<R>`.
    unsafe fn view(ptr: *const c_void) -> *const dyn AnyRequest {
        // SAFETY: per the contract.
        let held = unsafe { &*(ptr as *const Self) };
        &held.request as &dyn AnyRequest as *const dyn AnyRequest
    }

    /// # Safety
    /// `ptr` came from `Box::<Held<R>>::into_raw`; freed once.
    unsafe fn free(ptr: *mut c_void) {
        // SAFETY: per the contract.
        drop(unsafe { Box::from_raw(ptr as *mut Self) });
    }
}

/// A stream's filter as Envoy holds it.
pub fn request_into_raw<R: AnyRequest + 'static>(request: R) -> abi::FilterModulePtr {
    Box::into_raw(Box::new(Held { hooks: &Held::<R>::HOOKS, request })) as *const c_void
}

/// # Safety
/// `ptr` came from [`request_into_raw`] and was not destroyed; Envoy calls a stream's hooks on
/// one thread (one may run inside another: a local reply's response hooks).
pub unsafe fn request_ref<'a>(ptr: abi::FilterModulePtr) -> Option<&'a dyn AnyRequest> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per the contract, a live `Held<_>`, whose first field (`repr(C)`) is its hooks;
    // shared references only (hooks re-enter, see `Request`).
    unsafe {
        let hooks: &'static HeldHooks = *(ptr as *const &'static HeldHooks);
        (hooks.view)(ptr).as_ref()
    }
}

/// # Safety
/// `ptr` came from [`request_into_raw`]; destroyed once.
pub unsafe fn request_drop(ptr: abi::FilterModulePtr) {
    if !ptr.is_null() {
        // SAFETY: per the contract, as in `request_ref`.
        unsafe {
            let hooks: &'static HeldHooks = *(ptr as *const &'static HeldHooks);
            (hooks.free)(ptr as *mut c_void);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;
    use gatewarden_glue::GrpcCallout;

    fn call(message: &[u8]) -> GrpcCallout {
        GrpcCallout {
            upstream: "rls".into(),
            service: "envoy.service.ratelimit.v3.RateLimitService".into(),
            method: "ShouldRateLimit".into(),
            metadata: vec![("x-tenant".into(), "a".into())],
            message: message.to_vec(),
            timeout: Duration::from_millis(100),
            max_response_bytes: 1024,
        }
    }

    #[test]
    fn a_grpc_call_is_a_post_with_one_length_prefixed_frame() {
        let (headers, body) = grpc_request(&call(b"hello"));
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(":path"), Some("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"));
        assert_eq!(get(":method"), Some("POST"));
        assert_eq!(get("content-type"), Some("application/grpc"));
        assert_eq!(get("x-tenant"), Some("a"));
        assert_eq!(body, [&[0u8, 0, 0, 0, 5][..], b"hello"].concat());
        assert_eq!(frame(&body), Some(&b"hello"[..]));
    }

    #[test]
    fn grpc_answers_read_status_from_headers_or_a_whole_frame() {
        let ok = [&[0u8, 0, 0, 0, 2][..], b"hi"].concat();
        assert_eq!(grpc_answer(200, &[], &ok), (0, &b"hi"[..]), "OK: trailers are not handed over, the frame is");
        let trailers_only = vec![("grpc-status".to_owned(), "8".to_owned())];
        assert_eq!(grpc_answer(200, &trailers_only, b""), (8, &b""[..]));
        assert_eq!(grpc_answer(503, &[], b"upstream connect error"), (14, &b""[..]));
        assert_eq!(grpc_answer(200, &[], &ok[..4]), (14, &b""[..]), "a cut frame is no answer");
        let compressed = [&[1u8, 0, 0, 0, 2][..], b"hi"].concat();
        assert_eq!(grpc_answer(200, &[], &compressed), (14, &b""[..]), "compressed frames are not read");
    }

    #[test]
    fn per_worker_values_are_distinct_and_an_unknown_worker_wraps() {
        let counter = std::sync::atomic::AtomicUsize::new(0);
        let slots = PerWorker::new(2, || counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        assert_eq!(slots.with(0, |v| *v), Some(0));
        assert_eq!(slots.with(1, |v| *v), Some(1));
        assert_eq!(slots.with(2, |v| *v), Some(0));
    }
}
