//! The [`Host`]: one simulated proxy process, with the state its VMs share.
//!
//! ```no_run
//! use gatewarden_wasm_host::{Host, Profile, VmOptions, Request};
//! # fn main() -> gatewarden_wasm_host::Result<()> {
//! let host = Host::new(Profile::Envoy);
//! host.add_cluster("gatewarden_geo_db");
//! let mut vm = host.load_vm_file("target/wasm32-wasip1/release/ip_geo.wasm", VmOptions::new("ip_geo"))?;
//! assert!(vm.configure(br#"{"policy_version":"1"}"#)?);
//! let outcome = vm.http_request(Request::get("/"))?;
//! assert_eq!(outcome.status, 200);
//! # Ok(()) }
//! ```
//!
//! Everything a test scripts or observes lives here, per `Host` value: the clock, the cluster
//! names, the scripted callout responses, shared data and queues, metrics, logs and the record of
//! host calls. There is no global state: hosts in parallel test threads do not see each other.

use crate::abi::{LogLevel, MetricKind};
use crate::error::Result;
use crate::module::Module;
use crate::shared::{SharedStore, SharedValue};
use crate::vm::{Vm, VmInner, VmOptions};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

/// Which proxy the host imitates where Envoy and Kong's ngx_wasm_module differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Envoy: shared-data CAS 0 overwrites, callouts go to cluster names, a refused
    /// reconfiguration keeps the previous one (none at first start: 500), `source.address` is
    /// `ip:port`, a failed VM answers 503.
    Envoy,
    /// Kong / ngx_wasm_module: CAS 0 only creates, callouts go to `host:port`, a refused
    /// configuration fails requests with 500, `source.address` is the bare IP (nginx
    /// `remote_addr`), no trailers callbacks, no shared queues, a failed VM answers 500.
    Kong,
}

impl Profile {
    /// The status a client gets when the filter cannot run (a trap, a failed VM).
    ///
    /// Envoy answers 503 with details `wasm_fail_stream` (fail closed); ngx_wasm_module 500.
    pub fn failure_status(self) -> u16 {
        match self {
            Profile::Envoy => 503,
            Profile::Kong => 500,
        }
    }

    /// The status a client gets when the plugin has no accepted configuration (refused at first
    /// start): 500 on both. Envoy 1.40 answers 500 with an empty body and the response flag `NFCF`
    /// before any of the filter's code runs (seen in scripts/e2e/test_claims.py); ngx_wasm_module
    /// 500 too (Gatewarden's glue avoids it there by accepting the VM without a policy: 503).
    pub fn not_configured_status(self) -> u16 {
        500
    }
}

/// A response scripted for a callout (`dispatch_http_call`), or the response of an upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status, sent to the module as the `:status` pseudo-header.
    pub status: u16,
    /// Response headers (without `:status`).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Vec<(String, String)>,
}

impl HttpResponse {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> HttpResponse {
        HttpResponse { status, ..HttpResponse::default() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> HttpResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> HttpResponse {
        self.body = body.into();
        self
    }
}

/// A callout the module dispatched, as recorded by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    /// The VM that made the call ([`Vm::index`]).
    pub vm: usize,
    /// The token the host returned to the module.
    pub token: u32,
    /// The upstream argument: a cluster name (Envoy) or `host:port` (Kong).
    pub upstream: String,
    /// The request headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
    /// The request trailers.
    pub trailers: Vec<(String, String)>,
    /// The timeout the module asked for.
    pub timeout: Duration,
}

impl HttpCall {
    /// The value of the `:path` pseudo-header, or `""`.
    pub fn path(&self) -> &str {
        header_value(&self.headers, ":path").unwrap_or("")
    }
}

/// The answer of a gRPC service to a unary callout (`proxy_grpc_call`, Envoy profile).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcResponse {
    /// gRPC status: 0 OK; the module gets it in `proxy_on_grpc_close`.
    pub status: u32,
    /// The response message (delivered by `proxy_on_grpc_receive` when the status is 0).
    pub message: Vec<u8>,
}

impl GrpcResponse {
    /// Status 0 with this message.
    pub fn ok(message: impl Into<Vec<u8>>) -> GrpcResponse {
        GrpcResponse { status: 0, message: message.into() }
    }

    /// An error status, no message.
    pub fn status(status: u32) -> GrpcResponse {
        GrpcResponse { status, message: Vec::new() }
    }
}

/// gRPC status Envoy's async client closes a call with on its timeout.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
/// gRPC status Envoy's async client closes a call with when the upstream cannot be reached.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// A gRPC callout the module dispatched (`proxy_grpc_call`), as recorded by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    /// The VM that made the call.
    pub vm: usize,
    /// The token the host returned to the module.
    pub token: u32,
    /// The cluster name.
    pub upstream: String,
    /// Service and method names.
    pub service: String,
    pub method: String,
    /// Initial metadata.
    pub metadata: Vec<(String, String)>,
    /// The request message.
    pub message: Vec<u8>,
    /// The timeout the module asked for.
    pub timeout: Duration,
}

/// How the test settles one pending callout ([`Host::settle_call`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// An HTTP answer.
    Http(HttpResponse),
    /// A gRPC answer.
    Grpc(GrpcResponse),
    /// No answer within the call's timeout: the clock moves on by the timeout, then the module
    /// gets a failed call (HTTP: no headers; gRPC: close with DEADLINE_EXCEEDED).
    Timeout,
    /// Reset / refused connection (HTTP: no headers; gRPC: close with UNAVAILABLE), at once.
    Fail,
}

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// `proxy_log`.
    ProxyLog,
    /// WASI `fd_write` to fd 1.
    Stdout,
    /// WASI `fd_write` to fd 2.
    Stderr,
}

/// A log line written by a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The VM that wrote it.
    pub vm: usize,
    /// The level (`Info` for stdout, `Error` for stderr).
    pub level: LogLevel,
    /// The message, without trailing newline.
    pub message: String,
    /// `proxy_log` or a WASI stream.
    pub source: LogSource,
}

/// A metric as defined by the modules of this host (metrics are host-wide, like Envoy stats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The name given to `proxy_define_metric`.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Counter or gauge value; for a histogram the last recorded value.
    pub value: u64,
    /// Every value recorded into a histogram, in order.
    pub samples: Vec<u64>,
}

/// A host function call made by a module, in call order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCall {
    /// The VM that made it.
    pub vm: usize,
    /// The import name, e.g. `proxy_get_header_map_value`.
    pub name: &'static str,
}

#[derive(Clone, Debug)]
pub(crate) enum Scripted {
    Respond(HttpResponse),
    Fail,
}

#[derive(Clone, Debug)]
pub(crate) struct PendingCall {
    pub(crate) call: HttpCall,
    pub(crate) context_id: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct PendingGrpc {
    pub(crate) call: GrpcCall,
    pub(crate) context_id: u32,
}

/// What a pending callout's module gets.
pub(crate) enum Delivery {
    Http(Option<HttpResponse>),
    Grpc(GrpcResponse),
}

/// State shared by the VMs of one host, behind one lock.
///
/// Lock order: a VM's lock first, then this one. Never call into wasm while holding it.
pub(crate) struct HostState {
    pub(crate) now: SystemTime,
    pub(crate) log_level: LogLevel,
    pub(crate) clusters: BTreeSet<String>,
    pub(crate) scripts: HashMap<(String, String), Scripted>,
    pub(crate) pending: Vec<PendingCall>,
    pub(crate) grpc_scripts: HashMap<(String, String), GrpcResponse>,
    pub(crate) pending_grpc: Vec<PendingGrpc>,
    pub(crate) dispatched_grpc: Vec<GrpcCall>,
    /// Envoy profile: the size of the request body chunks `proxy_on_request_body` gets.
    pub(crate) body_chunk_size: usize,
    /// Deliver the callouts of a stream that ended anyway, on its root context (a late answer).
    pub(crate) late_answers: bool,
    /// `(vm, root context, queue id)` to notify with `proxy_on_queue_ready`.
    pub(crate) queue_ready: Vec<(usize, u32, u32)>,
    pub(crate) dispatched: Vec<HttpCall>,
    pub(crate) next_token: u32,
    pub(crate) shared: SharedStore,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) calls: Vec<HostCall>,
    pub(crate) record_calls: bool,
    /// Host functions told to fail with a status ([`Host::fail_host_call`]).
    pub(crate) faults: HashMap<String, u32>,
}

pub(crate) struct HostShared {
    pub(crate) profile: Profile,
    state: Mutex<HostState>,
    vms: Mutex<Vec<Weak<Mutex<VmInner>>>>,
    next_vm_index: std::sync::atomic::AtomicUsize,
}

impl HostShared {
    /// Locks the shared state. A poisoned lock (a panic in another test thread while holding it)
    /// is recovered: the state is plain data and stays consistent between statements.
    pub(crate) fn state(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One simulated proxy: create VMs from it, script it, observe it. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Host {
    shared: Arc<HostShared>,
}

/// The Envoy profile's default request body chunk (a request body larger than this reaches the
/// module in several `proxy_on_request_body` calls). Kong delivers the whole body in one call.
pub const DEFAULT_BODY_CHUNK_SIZE: usize = 1024;

/// 2026-01-01T00:00:00Z: the default time of a new host, so tests never read the wall clock.
pub const DEFAULT_TIME_UNIX_SECONDS: u64 = 1_767_225_600;

impl Host {
    /// A host imitating `profile`, with its clock at [`DEFAULT_TIME_UNIX_SECONDS`], log level
    /// `Trace` (every line recorded), no cluster, no script.
    pub fn new(profile: Profile) -> Host {
        let state = HostState {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_TIME_UNIX_SECONDS),
            log_level: LogLevel::Trace,
            clusters: BTreeSet::new(),
            scripts: HashMap::new(),
            pending: Vec::new(),
            grpc_scripts: HashMap::new(),
            pending_grpc: Vec::new(),
            dispatched_grpc: Vec::new(),
            body_chunk_size: DEFAULT_BODY_CHUNK_SIZE,
            late_answers: false,
            queue_ready: Vec::new(),
            dispatched: Vec::new(),
            next_token: 1,
            shared: SharedStore::new(profile),
            metrics: Vec::new(),
            logs: Vec::new(),
            calls: Vec::new(),
            record_calls: true,
            faults: HashMap::new(),
        };
        Host {
            shared: Arc::new(HostShared {
                profile,
                state: Mutex::new(state),
                vms: Mutex::new(Vec::new()),
                next_vm_index: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The profile this host imitates.
    pub fn profile(&self) -> Profile {
        self.shared.profile
    }

    pub(crate) fn shared(&self) -> &Arc<HostShared> {
        &self.shared
    }

    // ---- VMs ----

    /// Starts a new VM of `module`: instantiation, `_initialize` (or `_start`) and the ABI
    /// version check. Call [`Vm::configure`] next (it creates the root context).
    pub fn load_vm(&self, module: &Module, options: VmOptions) -> Result<Vm> {
        let index = {
            let mut vms = self.lock_vms();
            vms.retain(|vm| vm.strong_count() > 0);
            self.shared.next_vm_index.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        let vm = Vm::start(self.clone(), module, options, index)?;
        self.lock_vms().push(vm.downgrade());
        Ok(vm)
    }

    /// Compiles `wasm` and starts a VM of it ([`Module::new`] then [`Host::load_vm`]).
    pub fn load_vm_bytes(&self, wasm: &[u8], options: VmOptions) -> Result<Vm> {
        self.load_vm(&Module::new(wasm)?, options)
    }

    /// Compiles a `.wasm` file and starts a VM of it.
    pub fn load_vm_file(&self, path: impl AsRef<Path>, options: VmOptions) -> Result<Vm> {
        self.load_vm(&Module::from_file(path)?, options)
    }

    fn lock_vms(&self) -> MutexGuard<'_, Vec<Weak<Mutex<VmInner>>>> {
        self.shared.vms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live_vms(&self) -> Vec<Vm> {
        self.lock_vms().iter().filter_map(|weak| weak.upgrade()).map(|inner| Vm::from_inner(self.clone(), inner)).collect()
    }

    /// Fires `proxy_on_tick` on every root context, in every live VM, that set a tick period.
    pub fn tick(&self) -> Result<()> {
        for vm in self.live_vms() {
            vm.tick()?;
        }
        Ok(())
    }

    // ---- clock ----

    /// Sets the clock read by `proxy_get_current_time_nanoseconds` and WASI `clock_time_get`.
    pub fn set_time(&self, now: SystemTime) {
        self.shared.state().now = now;
    }

    /// Moves the clock forward. Ticks are not fired: call [`Host::tick`].
    pub fn advance(&self, by: Duration) {
        let mut state = self.shared.state();
        state.now += by;
    }

    /// The current time of the host clock.
    pub fn now(&self) -> SystemTime {
        self.shared.state().now
    }

    // ---- callouts ----

    /// Declares an Envoy cluster name that `dispatch_http_call` may target (Envoy profile).
    pub fn add_cluster(&self, name: &str) {
        self.shared.state().clusters.insert(name.to_string());
    }

    /// Scripts the answer to callouts to `upstream` with `:path` equal to `path` (`"*"`: any path).
    /// An exact path wins over `"*"`. A callout with no script fails (like a timeout).
    pub fn script_http_response(&self, upstream: &str, path: &str, response: HttpResponse) {
        self.shared.state().scripts.insert((upstream.to_string(), path.to_string()), Scripted::Respond(response));
    }

    /// Scripts a failure (reset, timeout): the module gets `proxy_on_http_call_response` with
    /// zero headers, body and trailers, as Envoy delivers a failed call.
    pub fn script_http_failure(&self, upstream: &str, path: &str) {
        self.shared.state().scripts.insert((upstream.to_string(), path.to_string()), Scripted::Fail);
    }

    /// Envoy profile: request bodies reach the module in chunks of `size` bytes (at least 1);
    /// the default is [`DEFAULT_BODY_CHUNK_SIZE`]. The Kong profile always delivers one.
    pub fn set_body_chunk_size(&self, size: usize) {
        self.shared.state().body_chunk_size = size.max(1);
    }

    /// Scripts the answer to gRPC callouts to cluster `upstream` for `service/method`
    /// (`"*"`: any). A gRPC callout with no script closes with UNAVAILABLE.
    pub fn script_grpc_response(&self, upstream: &str, service_method: &str, response: GrpcResponse) {
        self.shared.state().grpc_scripts.insert((upstream.to_string(), service_method.to_string()), response);
    }

    /// Every gRPC callout dispatched so far, in order.
    pub fn grpc_calls(&self) -> Vec<GrpcCall> {
        self.shared.state().dispatched_grpc.clone()
    }

    /// Tokens of the callouts (HTTP and gRPC) dispatched and not yet settled, in dispatch order.
    pub fn pending_tokens(&self) -> Vec<u32> {
        let state = self.shared.state();
        state.pending.iter().map(|p| p.call.token).chain(state.pending_grpc.iter().map(|p| p.call.token)).collect()
    }

    /// Settles one pending callout as the test says (answer, timeout, failure), delivering the
    /// result to the context that made it; false when no callout with `token` is pending (or its
    /// context is gone: it is dropped, as Envoy cancels the calls of a finished stream).
    pub fn settle_call(&self, token: u32, how: Settle) -> Result<bool> {
        let timed_out = how == Settle::Timeout;
        let (vm, context, delivery, timeout) = {
            let mut state = self.shared.state();
            if let Some(at) = state.pending.iter().position(|p| p.call.token == token) {
                let pending = state.pending.remove(at);
                let delivery = match how {
                    Settle::Http(response) => Delivery::Http(Some(response)),
                    Settle::Grpc(_) | Settle::Timeout | Settle::Fail => Delivery::Http(None),
                };
                (pending.call.vm, pending.context_id, delivery, pending.call.timeout)
            } else if let Some(at) = state.pending_grpc.iter().position(|p| p.call.token == token) {
                let pending = state.pending_grpc.remove(at);
                let delivery = Delivery::Grpc(match how {
                    Settle::Grpc(response) => response,
                    Settle::Timeout => GrpcResponse::status(GRPC_DEADLINE_EXCEEDED),
                    Settle::Http(_) | Settle::Fail => GrpcResponse::status(GRPC_UNAVAILABLE),
                });
                (pending.call.vm, pending.context_id, delivery, pending.call.timeout)
            } else {
                return Ok(false);
            }
        };
        if timed_out {
            self.advance(timeout);
        }
        let Some(vm) = self.live_vms().into_iter().find(|v| v.index() == vm) else {
            return Ok(false);
        };
        vm.deliver(context, token, delivery)
    }

    /// `true`: the callouts of a stream that ended stay pending, and settling one delivers it on
    /// the root context (a late answer, which neither real host sends: Envoy cancels such calls,
    /// ngx_wasm_module destroys them with the request). Default `false`.
    pub fn deliver_late_answers(&self, on: bool) {
        self.shared.state().late_answers = on;
    }

    /// Drops the pending callouts of `context` in VM `vm` (the stream ended: Envoy cancels them).
    pub(crate) fn cancel_calls_of(&self, vm: usize, context: u32) {
        let mut state = self.shared.state();
        if state.late_answers {
            return;
        }
        state.pending.retain(|p| !(p.call.vm == vm && p.context_id == context));
        state.pending_grpc.retain(|p| !(p.call.vm == vm && p.context_id == context));
    }

    /// Every callout dispatched so far, in order.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.shared.state().dispatched.clone()
    }

    /// Callouts dispatched and not yet delivered.
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        self.shared.state().pending.iter().map(|pending| pending.call.clone()).collect()
    }

    /// Delivers every pending callout response, in dispatch order, to the context that made it
    /// (responses dispatched during delivery wait for the next call). Returns the delivered calls.
    /// A call whose context is gone (request finished) is dropped, as Envoy cancels it.
    /// A trap during delivery fails that VM; the affected request reports it.
    pub fn deliver_pending_calls(&self) -> Result<Vec<HttpCall>> {
        let pending = std::mem::take(&mut self.shared.state().pending);
        let pending_grpc = std::mem::take(&mut self.shared.state().pending_grpc);
        let vms = self.live_vms();
        let mut delivered = Vec::new();
        for call in pending {
            let Some(vm) = vms.iter().find(|vm| vm.index() == call.call.vm) else {
                continue;
            };
            let response = self.scripted_response(&call.call);
            if vm.deliver(call.context_id, call.call.token, Delivery::Http(response))? {
                delivered.push(call.call);
            }
        }
        for call in pending_grpc {
            let Some(vm) = vms.iter().find(|vm| vm.index() == call.call.vm) else {
                continue;
            };
            let response = self.scripted_grpc(&call.call);
            vm.deliver(call.context_id, call.call.token, Delivery::Grpc(response))?;
        }
        Ok(delivered)
    }

    fn scripted_grpc(&self, call: &GrpcCall) -> GrpcResponse {
        let state = self.shared.state();
        let exact = (call.upstream.clone(), format!("{}/{}", call.service, call.method));
        let any = (call.upstream.clone(), "*".to_string());
        state
            .grpc_scripts
            .get(&exact)
            .or_else(|| state.grpc_scripts.get(&any))
            .cloned()
            .unwrap_or_else(|| GrpcResponse::status(GRPC_UNAVAILABLE))
    }

    /// Delivers `proxy_on_queue_ready` for every enqueue since the last call (Envoy profile),
    /// to the root context that registered the queue. Returns how many were delivered.
    pub fn deliver_queue_ready(&self) -> usize {
        let ready = std::mem::take(&mut self.shared.state().queue_ready);
        let vms = self.live_vms();
        let mut delivered = 0;
        for (index, root, queue) in ready {
            if let Some(vm) = vms.iter().find(|vm| vm.index() == index) {
                if vm.deliver_queue_ready(root, queue) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    pub(crate) fn has_pending_calls_for(&self, vm: usize) -> bool {
        let state = self.shared.state();
        state.pending.iter().any(|pending| pending.call.vm == vm) || state.pending_grpc.iter().any(|pending| pending.call.vm == vm)
    }

    fn scripted_response(&self, call: &HttpCall) -> Option<HttpResponse> {
        let state = self.shared.state();
        let exact = (call.upstream.clone(), call.path().to_string());
        let any = (call.upstream.clone(), "*".to_string());
        match state.scripts.get(&exact).or_else(|| state.scripts.get(&any)) {
            Some(Scripted::Respond(response)) => Some(response.clone()),
            Some(Scripted::Fail) | None => None,
        }
    }

    // ---- shared data ----

    /// The shared-data value of `key` in the store of `vm_id` (Kong: one store for all).
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<SharedValue> {
        self.shared.state().shared.get(vm_id, key)
    }

    /// Sets a shared-data value as an operator would (new CAS, no CAS check).
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8]) {
        self.shared.state().shared.force_set(vm_id, key, value);
    }

    /// Number of keys in the shared-data store of `vm_id`.
    pub fn shared_data_len(&self, vm_id: &str) -> usize {
        self.shared.state().shared.len(vm_id)
    }

    // ---- metrics, logs, calls ----

    /// The metric named `name`, if a module defined it.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.shared.state().metrics.iter().find(|metric| metric.name == name).cloned()
    }

    /// The value of metric `name`, 0 when it was never defined.
    pub fn metric_value(&self, name: &str) -> u64 {
        self.metric(name).map_or(0, |metric| metric.value)
    }

    /// All metrics by name.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.shared.state().metrics.iter().map(|metric| (metric.name.clone(), metric.clone())).collect()
    }

    /// Sets the level reported by `proxy_get_log_level`; lines below it are not recorded.
    pub fn set_log_level(&self, level: LogLevel) {
        self.shared.state().log_level = level;
    }

    /// Every recorded log line, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        self.shared.state().logs.clone()
    }

    /// Log lines at `level` or above.
    pub fn logs_at_least(&self, level: LogLevel) -> Vec<LogLine> {
        let state = self.shared.state();
        state.logs.iter().filter(|line| line.level >= level).cloned().collect()
    }

    /// Forgets recorded log lines.
    pub fn clear_logs(&self) {
        self.shared.state().logs.clear();
    }

    /// Every host call made by the modules, in order (see [`Host::record_calls`]).
    pub fn calls(&self) -> Vec<HostCall> {
        self.shared.state().calls.clone()
    }

    /// How many times host function `name` was called.
    pub fn call_count(&self, name: &str) -> usize {
        self.shared.state().calls.iter().filter(|call| call.name == name).count()
    }

    /// Forgets recorded host calls (e.g. after configure, to count one request's crossings).
    pub fn clear_calls(&self) {
        self.shared.state().calls.clear();
    }

    /// Makes every later call of host function `name` return ABI status `status` without doing
    /// anything (`None`: work again). Only the header-map functions honour it (they are what a
    /// filter's fail-closed paths guard), e.g. `("proxy_get_header_map_pairs", Some(2))`.
    pub fn fail_host_call(&self, name: &str, status: Option<u32>) {
        let mut state = self.shared.state();
        match status {
            Some(code) => state.faults.insert(name.to_string(), code),
            None => state.faults.remove(name),
        };
    }

    /// Turns the host-call record on (default) or off (long soak tests).
    pub fn record_calls(&self, on: bool) {
        self.shared.state().record_calls = on;
    }
}

impl HostState {
    pub(crate) fn record_call(&mut self, vm: usize, name: &'static str) {
        if self.record_calls {
            self.calls.push(HostCall { vm, name });
        }
    }

    pub(crate) fn log(&mut self, vm: usize, level: LogLevel, message: String, source: LogSource) {
        if level >= self.log_level {
            self.logs.push(LogLine { vm, level, message, source });
        }
    }
}

/// Case-insensitive lookup of the first value of `name`.
pub(crate) fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}
