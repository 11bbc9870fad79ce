//! Driving one HTTP request through a VM, phase by phase, as Envoy does.
//!
//! ```no_run
//! # use gatewarden_wasm_host::{Host, Profile, VmOptions, Request, Progress};
//! # fn main() -> gatewarden_wasm_host::Result<()> {
//! # let host = Host::new(Profile::Envoy);
//! # let mut vm = host.load_vm_bytes(&[], VmOptions::new("x"))?;
//! // All at once: callouts are delivered as needed.
//! let outcome = vm.http_request(Request::get("/api").header("x-user", "alice"))?;
//!
//! // Step by step: the test decides when callout responses arrive.
//! let mut request = vm.start_request(Request::get("/api"))?;
//! assert!(matches!(request.poll()?, Progress::Paused(_)));
//! host.deliver_pending_calls()?;
//! let outcome = request.finish()?;
//! # Ok(()) }
//! ```
//!
//! Phases: `proxy_on_context_create`, request headers, body (one chunk, if any), trailers (if
//! any, Envoy only), then the upstream answers with [`Request::upstream_response`], then response
//! headers, body, trailers, then `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`. A callback
//! returning Pause stops the request until the module calls `proxy_continue_stream` (from a
//! callout response). A local response (`proxy_send_local_response`) ends the request: no
//! further phase is called, and the client gets that response. A trap ends it with the profile's
//! failure status (503 Envoy, 500 Kong) and fails the VM.

use crate::abi::Flow;
use crate::context::{Pairs, StreamPhase, StreamState};
use crate::error::Result;
use crate::host::{header_value, HttpResponse, Profile};
use crate::vm::{len_u32, Vm, VmInner};
use std::collections::{BTreeMap, HashMap};

/// A request as the client sends it, and how the upstream answers it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:path`, query included.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// `:scheme`.
    pub scheme: String,
    /// Other headers, in order (names are lower-cased by the host).
    pub headers: Vec<(String, String)>,
    /// The body; `None` means a headers-only request (end of stream on the headers).
    pub body: Option<Vec<u8>>,
    /// Request trailers (not delivered on Kong, which has no trailer callbacks).
    pub trailers: Option<Vec<(String, String)>>,
    /// The peer address, `ip:port` (`[v6]:port` for IPv6). Property `source.address` is this on
    /// Envoy and the bare IP on Kong.
    pub source_address: Option<String>,
    /// Property `request.id`; defaults to the `x-request-id` header.
    pub request_id: Option<String>,
    /// More properties by dotted path; they override the built-in ones.
    pub properties: BTreeMap<String, Vec<u8>>,
    /// What the upstream answers if the request gets there (default: 200, no body).
    pub upstream_response: HttpResponse,
    /// Envoy profile: the body chunk size for this request (default: the host's,
    /// [`crate::Host::set_body_chunk_size`]).
    pub body_chunk_size: Option<usize>,
    /// Kong profile: nginx spilled the body to a temp file (larger than `client_body_buffer_size`):
    /// `proxy_on_request_body` still gets its size, but the module cannot read it.
    pub body_spilled: bool,
    /// The client holds the rest of the body after this many bytes (Envoy: whole chunks are
    /// delivered until at least this many went; Kong: none of it, nginx reads it whole) until
    /// [`RequestHandle::release_body`]: the request stays paused in `RequestBody` meanwhile.
    pub body_held_after: Option<usize>,
}

impl Request {
    /// A request with this method and path, authority `example.com`, scheme `http`, no body.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            authority: "example.com".to_string(),
            scheme: "http".to_string(),
            headers: Vec::new(),
            body: None,
            trailers: None,
            source_address: None,
            request_id: None,
            properties: BTreeMap::new(),
            upstream_response: HttpResponse::new(200),
            body_chunk_size: None,
            body_spilled: false,
            body_held_after: None,
        }
    }

    /// A `GET` request.
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Envoy profile: delivers the body in chunks of `size` bytes.
    pub fn chunked(mut self, size: usize) -> Request {
        self.body_chunk_size = Some(size.max(1));
        self
    }

    /// Kong profile: the body was spilled to a temp file and cannot be read by the module.
    pub fn spilled(mut self) -> Request {
        self.body_spilled = true;
        self
    }

    /// A slow client: the body stops after `bytes` (see [`Request::body_held_after`]) until
    /// [`RequestHandle::release_body`].
    pub fn hold_body_after(mut self, bytes: usize) -> Request {
        self.body_held_after = Some(bytes);
        self
    }

    /// Sets the trailers.
    pub fn trailers(mut self, trailers: Vec<(String, String)>) -> Request {
        self.trailers = Some(trailers);
        self
    }

    /// Sets the `:authority`.
    pub fn authority(mut self, authority: &str) -> Request {
        self.authority = authority.to_string();
        self
    }

    /// Sets the peer address (`ip:port`).
    pub fn source(mut self, address: &str) -> Request {
        self.source_address = Some(address.to_string());
        self
    }

    /// Sets a property.
    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> Request {
        self.properties.insert(path.to_string(), value.into());
        self
    }

    /// Sets the upstream's answer.
    pub fn upstream(mut self, response: HttpResponse) -> Request {
        self.upstream_response = response;
        self
    }
}

/// A response the module sent itself (`proxy_send_local_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers the module added.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Status-code details (Envoy's `response_code_details`).
    pub details: String,
    /// gRPC status, when the module gave one (not -1).
    pub grpc_status: Option<i32>,
}

impl LocalResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// What went upstream: the request after the filter changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// Headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Body (`None` for a headers-only request).
    pub body: Option<Vec<u8>>,
    /// Trailers.
    pub trailers: Vec<(String, String)>,
}

impl UpstreamRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// A phase of a request where it can pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_request_body`.
    RequestBody,
    /// `proxy_on_request_trailers`.
    RequestTrailers,
    /// `proxy_on_response_headers`.
    ResponseHeaders,
    /// `proxy_on_response_body`.
    ResponseBody,
    /// `proxy_on_response_trailers`.
    ResponseTrailers,
}

impl Phase {
    fn is_request(self) -> bool {
        matches!(self, Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers)
    }
}

/// Why a request did not run normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The module trapped during this request (message: the panic or trap).
    Trap(String),
    /// The VM had failed before (an earlier trap): the filter did not run.
    VmFailed(String),
    /// No configuration is accepted (never configured, refused at start, or refused on Kong).
    NotConfigured,
    /// The module reset the stream (`proxy_close_stream`).
    Reset,
    /// The client went away ([`RequestHandle::reset`]) before the request ended.
    ClientGone,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The status the client saw: the local response's, the upstream's (after the filter's
    /// changes to `:status`), or the profile's failure status. 0 when paused or reset.
    pub status: u16,
    /// Set when the module answered locally.
    pub local_response: Option<LocalResponse>,
    /// Set when the request reached the upstream.
    pub upstream_request: Option<UpstreamRequest>,
    /// Response headers the client saw (upstream's after the filter, or the local response's);
    /// no `:status`.
    pub response_headers: Vec<(String, String)>,
    /// Response body the client saw.
    pub response_body: Vec<u8>,
    /// Set when the request is still paused in this phase (never resumed).
    pub paused: Option<Phase>,
    /// Set when the filter trapped, could not run, or reset the stream.
    pub failure: Option<Failure>,
    /// The http context id the request had.
    pub context_id: u32,
}

impl Outcome {
    /// Whether the module trapped during this request.
    pub fn trapped(&self) -> bool {
        matches!(self.failure, Some(Failure::Trap(_)))
    }

    /// First value of a response header the client saw.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        header_value(&self.response_headers, name)
    }

    /// First value of a header that went upstream.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_request.as_ref().and_then(|request| request.header(name))
    }

    fn failed(profile: Profile, failure: Failure, context_id: u32) -> Outcome {
        let status = match failure {
            Failure::NotConfigured => profile.not_configured_status(),
            _ => profile.failure_status(),
        };
        Outcome {
            status,
            local_response: None,
            upstream_request: None,
            response_headers: Vec::new(),
            response_body: Vec::new(),
            paused: None,
            failure: Some(failure),
            context_id,
        }
    }
}

/// Progress of a request after [`RequestHandle::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the module to resume the stream (e.g. after a callout response).
    Paused(Phase),
    /// Finished.
    Done(Box<Outcome>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    Upstream,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Complete,
}

/// A request in flight on a [`Vm`]; see [`Vm::start_request`].
pub struct RequestHandle {
    vm: Vm,
    context_id: u32,
    stage: Stage,
    waiting: Option<Phase>,
    has_body: bool,
    has_trailers: bool,
    /// The whole request body; `body_sent` bytes of it were delivered so far.
    full_body: Vec<u8>,
    body_sent: usize,
    chunk_size: usize,
    upstream_request: Option<UpstreamRequest>,
    upstream_response: HttpResponse,
    done: Option<Outcome>,
    /// See [`Request::body_held_after`].
    body_held_after: Option<usize>,
}

impl Vm {
    /// Runs a whole request: like [`Vm::start_request`] then [`RequestHandle::finish`].
    pub fn http_request(&mut self, request: Request) -> Result<Outcome> {
        self.start_request(request)?.finish()
    }

    /// Creates the http context and runs phases until the request pauses or ends.
    pub fn start_request(&mut self, request: Request) -> Result<RequestHandle> {
        let profile = self.profile();
        let mut handle = RequestHandle {
            vm: self.clone(),
            context_id: 0,
            stage: Stage::RequestHeaders,
            waiting: None,
            has_body: request.body.is_some(),
            has_trailers: request.trailers.is_some() && profile == Profile::Envoy,
            full_body: request.body.clone().unwrap_or_default(),
            body_sent: 0,
            chunk_size: match profile {
                Profile::Envoy => request.body_chunk_size.unwrap_or_else(|| self.host().shared().state().body_chunk_size).max(1),
                Profile::Kong => usize::MAX,
            },
            upstream_request: None,
            upstream_response: request.upstream_response.clone(),
            done: None,
            body_held_after: request.body_held_after,
        };
        {
            let mut inner = self.lock();
            if let Some(failure) = inner.failure.clone() {
                handle.done = Some(Outcome::failed(profile, Failure::VmFailed(failure), 0));
                return Ok(handle);
            }
            let Some(root) = inner.serving_root else {
                handle.done = Some(Outcome::failed(profile, Failure::NotConfigured, 0));
                return Ok(handle);
            };
            let context = inner.store.data_mut().new_context_id();
            handle.context_id = context;
            let stream = new_stream(profile, root, request);
            inner.store.data_mut().streams.insert(context, stream);
            if let Err(trap) = inner.call_void("proxy_on_context_create", context, &[root]) {
                handle.done = Some(Outcome::failed(profile, Failure::Trap(trap), context));
                return Ok(handle);
            }
        }
        handle.poll()?;
        Ok(handle)
    }
}

fn new_stream(profile: Profile, root: u32, request: Request) -> StreamState {
    let mut headers: Pairs = vec![
        (":authority".to_string(), request.authority.clone()),
        (":path".to_string(), request.path.clone()),
        (":method".to_string(), request.method.clone()),
        (":scheme".to_string(), request.scheme.clone()),
    ];
    headers.extend(request.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
    let mut properties: HashMap<String, Vec<u8>> = HashMap::new();
    properties.insert("request.path".to_string(), request.path.clone().into_bytes());
    properties.insert("request.url_path".to_string(), url_path(&request.path).into_bytes());
    properties.insert("request.method".to_string(), request.method.clone().into_bytes());
    properties.insert("request.host".to_string(), request.authority.clone().into_bytes());
    properties.insert("request.scheme".to_string(), request.scheme.clone().into_bytes());
    // Both hosts have it (nginx `$server_protocol`); the test may set another with `property`.
    properties.insert("request.protocol".to_string(), b"HTTP/1.1".to_vec());
    let request_id = request.request_id.clone().or_else(|| header_value(&headers, "x-request-id").map(str::to_string));
    if let Some(id) = request_id {
        properties.insert("request.id".to_string(), id.into_bytes());
    }
    if let Some(address) = &request.source_address {
        let (ip, port) = split_address(address);
        let value = match profile {
            Profile::Envoy => address.clone(),
            Profile::Kong => ip.clone(),
        };
        properties.insert("source.address".to_string(), value.into_bytes());
        if let (Profile::Envoy, Some(port)) = (profile, port) {
            // Envoy encodes integer properties as 8 little-endian bytes.
            properties.insert("source.port".to_string(), i64::from(port).to_le_bytes().to_vec());
        }
    }
    properties.extend(request.properties);
    StreamState {
        root,
        phase: StreamPhase::Request,
        request_headers: headers,
        removed_but_forwarded: Vec::new(),
        request_body: Vec::new(),
        body_spilled: profile == Profile::Kong && request.body_spilled,
        request_trailers: request.trailers.unwrap_or_default(),
        response_headers: Vec::new(),
        response_body: Vec::new(),
        response_trailers: Vec::new(),
        properties,
        local_response: None,
        continue_request: false,
        continue_response: false,
        reset: false,
        request_headers_sent: false,
    }
}

fn url_path(path: &str) -> String {
    path.split('?').next().unwrap_or_default().to_string()
}

/// `1.2.3.4:80` → (`1.2.3.4`, 80); `[::1]:80` → (`::1`, 80); no port → (address, None).
fn split_address(address: &str) -> (String, Option<u16>) {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((ip, port)) = rest.split_once("]:") {
            return (ip.to_string(), port.parse().ok());
        }
        return (rest.trim_end_matches(']').to_string(), None);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') => (ip.to_string(), port.parse().ok()),
        _ => (address.to_string(), None),
    }
}

impl RequestHandle {
    /// The http context id of this request.
    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    /// The phase the request is paused in, if it is.
    pub fn paused_at(&self) -> Option<Phase> {
        if self.done.is_some() {
            return None;
        }
        self.waiting
    }

    /// Runs phases until the request pauses or ends. A paused request moves on once the module
    /// has resumed it (`proxy_continue_stream`, typically in a callout response delivered by
    /// [`crate::Host::deliver_pending_calls`]) or answered it locally.
    pub fn poll(&mut self) -> Result<Progress> {
        if let Some(done) = &self.done {
            return Ok(Progress::Done(Box::new(done.clone())));
        }
        let vm = self.vm.clone();
        let mut inner = vm.lock();
        loop {
            if let Some(outcome) = self.check_end(&mut inner) {
                self.done = Some(outcome.clone());
                return Ok(Progress::Done(Box::new(outcome)));
            }
            if self.waiting.is_none() && self.body_held() {
                return Ok(Progress::Paused(Phase::RequestBody));
            }
            if let Some(phase) = self.waiting {
                let Some(stream) = inner.store.data_mut().streams.get_mut(&self.context_id) else {
                    return Ok(Progress::Paused(phase));
                };
                let resumed = if phase.is_request() {
                    std::mem::take(&mut stream.continue_request)
                } else {
                    std::mem::take(&mut stream.continue_response)
                };
                if !resumed {
                    return Ok(Progress::Paused(phase));
                }
                if phase == Phase::RequestHeaders {
                    mark_request_headers_sent(&mut inner, self.context_id);
                }
                self.waiting = None;
                self.stage = next_stage(self.stage);
                continue;
            }
            self.run_stage(&mut inner);
        }
    }

    /// Polls, delivering this host's pending callouts while the request is paused and callouts
    /// for this VM are pending. Returns the outcome; [`Outcome::paused`] is set when the request
    /// stays paused with nothing left to deliver.
    pub fn finish(mut self) -> Result<Outcome> {
        loop {
            match self.poll()? {
                Progress::Done(outcome) => return Ok(*outcome),
                Progress::Paused(phase) => {
                    if self.vm.host().has_pending_calls_for(self.vm.index()) {
                        self.vm.host().deliver_pending_calls()?;
                        continue;
                    }
                    return Ok(Outcome {
                        status: 0,
                        local_response: None,
                        upstream_request: self.upstream_request.clone(),
                        response_headers: Vec::new(),
                        response_body: Vec::new(),
                        paused: Some(phase),
                        failure: None,
                        context_id: self.context_id,
                    });
                }
            }
        }
    }

    /// Whether the next body chunk is held by the client ([`Request::body_held_after`]).
    fn body_held(&self) -> bool {
        let held = |after: usize| self.vm.profile() == Profile::Kong || self.body_sent >= after;
        self.stage == Stage::RequestBody && self.has_body && self.body_held_after.is_some_and(held)
    }

    /// The client sends the rest of a held body ([`Request::hold_body_after`]); runs phases
    /// until the request pauses or ends.
    pub fn release_body(&mut self) -> Result<Progress> {
        self.body_held_after = None;
        self.poll()
    }

    /// Runs the current stage's callback; sets `waiting` on Pause, advances otherwise.
    fn run_stage(&mut self, inner: &mut VmInner) {
        let context = self.context_id;
        let profile = self.vm.profile();
        if self.stage == Stage::RequestBody && self.has_body {
            self.run_body_chunk(inner);
            return;
        }
        let (name, phase, a, b) = {
            let Some(stream) = inner.store.data().streams.get(&context) else {
                self.stage = Stage::Complete;
                return;
            };
            match self.stage {
                Stage::RequestHeaders => {
                    // ngx_wasm_module always passes end_of_stream false on request headers.
                    let eos = profile == Profile::Envoy && !self.has_body && !self.has_trailers;
                    ("proxy_on_request_headers", Phase::RequestHeaders, len_u32(stream.request_headers.len()), Some(u32::from(eos)))
                }
                Stage::RequestTrailers if self.has_trailers => {
                    ("proxy_on_request_trailers", Phase::RequestTrailers, len_u32(stream.request_trailers.len()), None)
                }
                Stage::Upstream => {
                    self.go_upstream(inner);
                    self.stage = Stage::ResponseHeaders;
                    return;
                }
                Stage::ResponseHeaders => {
                    let eos = stream.response_body.is_empty() && !self.response_has_trailers();
                    ("proxy_on_response_headers", Phase::ResponseHeaders, len_u32(stream.response_headers.len()), Some(u32::from(eos)))
                }
                Stage::ResponseBody if !stream.response_body.is_empty() => {
                    let eos = !self.response_has_trailers();
                    ("proxy_on_response_body", Phase::ResponseBody, len_u32(stream.response_body.len()), Some(u32::from(eos)))
                }
                Stage::ResponseTrailers if self.response_has_trailers() => {
                    ("proxy_on_response_trailers", Phase::ResponseTrailers, len_u32(stream.response_trailers.len()), None)
                }
                Stage::Complete => {
                    self.stage = Stage::Complete;
                    return;
                }
                // A phase without data: skip it.
                Stage::RequestBody | Stage::RequestTrailers | Stage::ResponseBody | Stage::ResponseTrailers => {
                    self.stage = next_stage(self.stage);
                    return;
                }
            }
        };
        match inner.call_action(name, context, a, b) {
            Ok(Flow::Continue) => {
                if phase == Phase::RequestHeaders {
                    mark_request_headers_sent(inner, context);
                }
                self.stage = next_stage(self.stage);
            }
            // Pause on a chunk that is not the last only buffers (Envoy's StopIterationAndBuffer):
            // the next phase still runs.
            Ok(Flow::Pause) if b == Some(0) && matches!(phase, Phase::RequestBody | Phase::ResponseBody) => {
                self.stage = next_stage(self.stage);
            }
            // Pause on request headers stops the body too, on both hosts: proxy-wasm-cpp-host
            // turns StopIteration into StopAllIterationAndWatermark (Envoy), and ngx_wasm_module
            // waits for proxy_continue_stream before the content phase that reads the body.
            Ok(Flow::Pause) => self.waiting = Some(phase),
            Err(_trap) => {} // check_end reports it
        }
    }

    /// Delivers the next request body chunk (Envoy: `chunk_size` bytes, the size argument is
    /// what is buffered so far; Kong: the whole body, once, end of stream set).
    fn run_body_chunk(&mut self, inner: &mut VmInner) {
        let context = self.context_id;
        let end = self.body_sent.saturating_add(self.chunk_size).min(self.full_body.len());
        let last = end == self.full_body.len();
        let eos = last && !self.has_trailers;
        let Some(stream) = inner.store.data_mut().streams.get_mut(&context) else {
            self.stage = Stage::Complete;
            return;
        };
        // Appended, so that what the module changed in earlier (buffered) chunks stays changed.
        let chunk = self.full_body.get(self.body_sent..end).unwrap_or_default();
        stream.request_body.extend_from_slice(chunk);
        let buffered = stream.request_body.len();
        self.body_sent = end;
        match inner.call_action("proxy_on_request_body", context, len_u32(buffered), Some(u32::from(eos))) {
            Ok(Flow::Continue) => {
                if last {
                    self.stage = next_stage(self.stage);
                }
            }
            // StopIterationAndBuffer: the chunk is buffered; the next one (or the trailers) follows.
            Ok(Flow::Pause) if !eos => {
                if last {
                    self.stage = next_stage(self.stage);
                }
            }
            Ok(Flow::Pause) => self.waiting = Some(Phase::RequestBody),
            Err(_trap) => {} // check_end reports it
        }
    }

    /// The client goes away: the stream ends now (`proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`, as Envoy does on a downstream reset) and its pending callouts are
    /// cancelled (their answers never reach the module). The outcome says `ClientGone`.
    pub fn reset(&mut self) -> Result<Outcome> {
        if let Some(done) = &self.done {
            return Ok(done.clone());
        }
        let vm = self.vm.clone();
        let mut inner = vm.lock();
        let context = self.context_id;
        let mut outcome = Outcome::failed(self.vm.profile(), Failure::ClientGone, context);
        outcome.status = 0;
        outcome.upstream_request = self.upstream_request.clone();
        if inner.store.data().streams.contains_key(&context) {
            let ended = inner
                .call_bool("proxy_on_done", context, None)
                .and_then(|_| inner.call_void("proxy_on_log", context, &[]))
                .and_then(|()| inner.call_void("proxy_on_delete", context, &[]));
            if let Err(trap) = ended {
                outcome.failure = Some(Failure::Trap(trap));
            }
            inner.store.data_mut().streams.remove(&context);
        }
        self.vm.host().cancel_calls_of(self.vm.index(), context);
        self.done = Some(outcome.clone());
        Ok(outcome)
    }

    fn response_has_trailers(&self) -> bool {
        self.vm.profile() == Profile::Envoy && !self.upstream_response.trailers.is_empty()
    }

    fn go_upstream(&mut self, inner: &mut VmInner) {
        let Some(stream) = inner.store.data_mut().streams.get_mut(&self.context_id) else {
            return;
        };
        let mut headers = stream.request_headers.clone();
        headers.extend(stream.removed_but_forwarded.iter().cloned());
        self.upstream_request = Some(UpstreamRequest {
            headers,
            body: self.has_body.then(|| stream.request_body.clone()),
            trailers: stream.request_trailers.clone(),
        });
        let response = &self.upstream_response;
        let mut headers = vec![(":status".to_string(), response.status.to_string())];
        headers.extend(response.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
        stream.phase = StreamPhase::Response;
        stream.response_headers = headers;
        stream.response_body = response.body.clone();
        stream.response_trailers = response.trailers.clone();
    }

    /// The outcome if the request has ended (trap, local response, reset, all phases done).
    fn check_end(&mut self, inner: &mut VmInner) -> Option<Outcome> {
        let profile = self.vm.profile();
        if let Some(failure) = inner.failure.clone() {
            inner.store.data_mut().streams.remove(&self.context_id);
            let mut outcome = Outcome::failed(profile, Failure::Trap(failure), self.context_id);
            outcome.upstream_request = self.upstream_request.clone();
            return Some(outcome);
        }
        let stream = inner.store.data().streams.get(&self.context_id)?;
        let local = stream.local_response.clone();
        let reset = stream.reset;
        if local.is_none() && !reset && self.stage != Stage::Complete {
            return None;
        }
        let mut outcome = Outcome {
            status: 0,
            local_response: local.clone(),
            upstream_request: self.upstream_request.clone(),
            response_headers: Vec::new(),
            response_body: Vec::new(),
            paused: None,
            failure: None,
            context_id: self.context_id,
        };
        if reset {
            outcome.failure = Some(Failure::Reset);
        } else if let Some(local) = local {
            outcome.status = local.status;
            outcome.response_headers = local.headers;
            outcome.response_body = local.body;
        } else {
            outcome.status = header_value(&stream.response_headers, ":status")
                .and_then(|status| status.parse().ok())
                .unwrap_or(self.upstream_response.status);
            outcome.response_headers = stream.response_headers.iter().filter(|(name, _)| name != ":status").cloned().collect();
            outcome.response_body = stream.response_body.clone();
        }
        // The end of the stream: done, log, delete (proxy-wasm-cpp-host order).
        let context = self.context_id;
        let ended = inner
            .call_bool("proxy_on_done", context, None)
            .and_then(|_| inner.call_void("proxy_on_log", context, &[]))
            .and_then(|()| inner.call_void("proxy_on_delete", context, &[]));
        if let Err(trap) = ended {
            outcome.failure = Some(Failure::Trap(trap));
        }
        inner.store.data_mut().streams.remove(&context);
        Some(outcome)
    }
}

fn mark_request_headers_sent(inner: &mut VmInner, context: u32) {
    if let Some(stream) = inner.store.data_mut().streams.get_mut(&context) {
        stream.request_headers_sent = true;
    }
}

fn next_stage(stage: Stage) -> Stage {
    match stage {
        Stage::RequestHeaders => Stage::RequestBody,
        Stage::RequestBody => Stage::RequestTrailers,
        Stage::RequestTrailers => Stage::Upstream,
        Stage::Upstream => Stage::ResponseHeaders,
        Stage::ResponseHeaders => Stage::ResponseBody,
        Stage::ResponseBody => Stage::ResponseTrailers,
        Stage::ResponseTrailers | Stage::Complete => Stage::Complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_ip_and_port() {
        assert_eq!(split_address("1.2.3.4:5678"), ("1.2.3.4".to_string(), Some(5678)));
        assert_eq!(split_address("[2001:db8::1]:443"), ("2001:db8::1".to_string(), Some(443)));
        assert_eq!(split_address("2001:db8::1"), ("2001:db8::1".to_string(), None));
        assert_eq!(split_address("1.2.3.4"), ("1.2.3.4".to_string(), None));
    }
}
