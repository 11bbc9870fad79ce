//! The Proxy-Wasm side of a request that waits (see `crate::pipeline` for the filter's side).
//!
//! ```text
//! on_request_headers ─ F::start ─▶ drive ─ Done ──────────────▶ act (Continue / local response)
//!                                       ─ NeedBody ────────────▶ park Body   (Continue: the body comes)
//!                                       ─ Call ─ dispatch ─────▶ park Callout(token) (Pause)
//! on_request_body(size, eos) ─ size > max ─▶ resume(BodyTooLarge) ─▶ drive
//!                            ─ !eos ───────▶ Pause (Envoy buffers: StopIterationAndBuffer)
//!                            ─ eos ─ read ─▶ resume(Body | BodyUnavailable) ─▶ drive
//! on_http_call_response / on_grpc_receive / on_grpc_close(token) ─ token ─▶ request ─ set_effective_context
//!                            ─▶ resume(Http | Grpc | Failed) ─▶ drive ─▶ continue_stream or local response
//! on_delete while parked ─▶ dropped, counted `waiting_abandoned`; a late answer to its token
//!                          is dropped and counted `callout_late` (a bounded memory of tokens)
//! ```
//! Host facts that shape this (Envoy 1.40; ngx_wasm_module 3bed278, read in its source):
//! - Envoy passes the request's context id to `proxy_on_http_call_response`; ngx_wasm_module
//!   passes the **root** context id (the filter id). So a callout is routed by its token, as
//!   the Rust SDK does, never by the context id, and the request is made effective
//!   (`proxy_set_effective_context`, a no-op on ngx_wasm_module) before acting on it.
//! - Pausing in request headers pauses the body too, on both hosts: proxy-wasm-cpp-host turns
//!   a header StopIteration into StopAllIterationAndWatermark (Envoy: no body callback until
//!   `proxy_continue_stream`), and ngx_wasm_module waits for `proxy_continue_stream` before
//!   nginx's content phase, where it reads the body. So a request that waits for its body lets
//!   its headers go on (Continue) and holds the body instead. On Envoy the router then starts the
//!   upstream request with the headers; the body is held until the decision, and a denial's
//!   local response resets that upstream request before any body byte reached it. For the same
//!   reason a decision made after the body changes no request header (Envoy answers BadArgument
//!   once the headers went on): the glue fails such a decision closed and sends no decision
//!   header, on both hosts alike.
//! - Envoy calls `proxy_on_request_body` per chunk with the size buffered so far; returning
//!   Pause on a chunk buffers it (StopIterationAndBuffer). A request whose headers carried
//!   end_of_stream has no body callback at all.
//! - ngx_wasm_module passes end_of_stream false on request headers, always; it reads the whole
//!   body in nginx's content phase and calls `proxy_on_request_body` once (eos true), or not at
//!   all when there is no body; a body spilled to a temp file cannot be read (the buffer call
//!   finds none). So there "no body" is read from the headers (no `content-length` above 0, no
//!   `transfer-encoding`).
//! - ngx_wasm_module has no gRPC: `proxy_grpc_call` traps the instance (NGX_WAVM_NYI). Policies
//!   needing it are refused at configure time (`Enforcer::check_host`), and the glue never
//!   calls it there.
//! - A failed HTTP callout reaches the module as a response with no headers (ngx_wasm_module;
//!   Envoy on a reset), or, on Envoy, as its router's local reply (504 on a timeout, 503 when
//!   the upstream cannot be reached); the ABI does not say which. The glue calls a failure
//!   without headers, or a 504, a timeout when the host clock has reached the deadline; any
//!   other answer is the service's, for the filter to judge.
//! - A unary gRPC callout's success is one `proxy_on_grpc_receive` (no close follows on Envoy);
//!   its failure is one `proxy_on_grpc_close` with the status.
//! - ngx_wasm_module aborts the worker when a local response is sent from the answer callback of
//!   a callout that carried a body and got an answer without one (failed, or empty): on that
//!   host the glue then takes one of two ways around it first (`guard`, `preempt`, `settle`).

use std::rc::Rc;

use gatewarden_policy::rollout::Role;
use gatewarden_policy::{FilterPolicy, Header, Mode, Verdict};

use crate::host::{self, HostKind, Level};
use crate::metrics::{self, Counter};
use crate::pipeline::{CallFailure, Callout, GrpcCallout, HttpCallout, Pending, Resumed, Step, MAX_STEPS};
use crate::runtime::{act, fail_closed, Compiled, Enforcer, Flow};

/// Counters of the pipeline, defined for filters that wait (`gatewarden_<filter>_<name>`).
pub const COUNTERS: &[Counter] = &[
    Counter::BODY_TOO_LARGE,
    Counter::BODY_UNAVAILABLE,
    Counter::CALLOUT_DISPATCH_FAILED,
    Counter::CALLOUT_TIMEOUT,
    Counter::CALLOUT_FAILED,
    Counter::CALLOUT_TOO_LARGE,
    Counter::WAITING_ABANDONED,
    Counter::ANSWERED_BEFORE_BODY,
    Counter::WAITING_FAILED,
    Counter::CALLOUT_LATE,
];

/// A request parked in the runtime's map while it waits.
pub struct Waiting<F: Enforcer> {
    compiled: Rc<Compiled<F>>,
    /// Which policy of a canary decides (None: the active one, no canary).
    role: Option<Role>,
    steps: u8,
    pending: Pending,
    on: WaitingOn,
    /// Whether the request's body has gone by (delivered to the filter, or buffered by Envoy
    /// while a callout waited): a later `NeedBody` cannot be served.
    body_passed: bool,
    /// Whether the request headers went on (to let the body come): they cannot change now.
    headers_sent: bool,
}

enum WaitingOn {
    /// `seen`: the body size buffered so far (the last chunk's size argument).
    Body {
        max_bytes: usize,
        seen: usize,
    },
    /// `sent_body`: the callout carried a body (see [`settle`]).
    Http {
        token: u32,
        deadline_ms: u64,
        max_response: usize,
        sent_body: bool,
    },
    Grpc {
        token: u32,
        deadline_ms: u64,
        max_response: usize,
    },
    /// ngx_wasm_module: the filter's next step, taken on an answer whose own callback could not
    /// safely send a local response; acted on when the bodiless settling callout `token` ends
    /// (see [`settle`]).
    Settle {
        token: u32,
        step: Box<Step>,
    },
}

impl<F: Enforcer> Waiting<F> {
    /// The token of the callout it waits for.
    pub fn token(&self) -> Option<u32> {
        match self.on {
            WaitingOn::Body { .. } => None,
            WaitingOn::Http { token, .. } | WaitingOn::Grpc { token, .. } | WaitingOn::Settle { token, .. } => Some(token),
        }
    }
}

/// Whether a body follows the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAhead {
    /// None (a body step resolves at once: `Resumed::NoBody`).
    None,
    /// One comes: a body step waits for it.
    Coming,
    /// One may come that the host would not hand over (ngx_wasm_module: a chunked body, see
    /// [`kong_body_ahead`]): a body step resolves at once as `BodyUnavailable`.
    Unreadable,
    /// ngx_wasm_module: to be read from the request headers when a step asks for the body
    /// ([`kong_body_ahead`]).
    AskHeaders,
}

/// What body follows the request headers on ngx_wasm_module, which never sets end_of_stream on
/// them and calls no body callback for a request without a body, nor for a chunked one whose
/// body is empty (seen on 3bed278: such a request reached the upstream while the filter waited).
/// So: `content-length` above 0 → `Coming`; a `transfer-encoding` → `Unreadable` (the filter
/// cannot wait for a callback that may never come; its failure_mode decides); neither, on
/// HTTP/1.x (`request.protocol`, nginx `$server_protocol`) → `None`; neither on HTTP/2 or 3,
/// where a body needs no content-length → `Unreadable`. What cannot be read → `Unreadable`.
/// `all`: every request header, when the filter read them (else one host call per header).
pub fn kong_body_ahead(all: Option<&[(String, String)]>) -> BodyAhead {
    let get = |name: &str| -> Result<Option<String>, host::HostError> {
        match all {
            Some(headers) => Ok(headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())),
            None => host::request_header(name),
        }
    };
    match (get("transfer-encoding"), get("content-length")) {
        (Ok(Some(_)), _) | (Err(_), _) | (_, Err(_)) => BodyAhead::Unreadable,
        (Ok(None), Ok(Some(length))) if length.trim() != "0" => BodyAhead::Coming,
        (Ok(None), Ok(Some(_))) => BodyAhead::None,
        (Ok(None), Ok(None)) => match host::property(&["request", "protocol"]) {
            Ok(Some(p)) if p.starts_with(b"HTTP/1.") => BodyAhead::None,
            _ => BodyAhead::Unreadable,
        },
    }
}

/// Where a request is when the filter takes a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Request headers, and what body follows them.
    Headers { body: BodyAhead },
    /// The body callback, after the body was handed over.
    Body,
    /// A callout's answer.
    Callout { body_passed: bool, headers_sent: bool },
}

fn name<F: Enforcer>() -> &'static str {
    <F::Policy as FilterPolicy>::NAME
}

fn chosen<F: Enforcer>(compiled: &Compiled<F>, role: Option<Role>) -> (&F::Policy, &F::PolicyState) {
    match (role, &compiled.rollout) {
        (Some(Role::Candidate), Some(r)) => (&r.rollout.candidate, &r.state),
        _ => (&compiled.policy, &compiled.state),
    }
}

fn header_of<F: Enforcer>(compiled: &Compiled<F>, role: Option<Role>) -> &Header {
    chosen(compiled, role).0.header()
}

/// Runs the filter's steps until it decides or must wait. Returns what the host callback
/// returns and, when the request waits, what to park.
pub fn drive<F: Enforcer>(
    compiled: Rc<Compiled<F>>,
    role: Option<Role>,
    first: Step,
    steps: u8,
    mut at: At,
    all_headers: Option<&[(String, String)]>,
) -> (Flow, Option<Waiting<F>>) {
    let filter = name::<F>();
    let mut step = first;
    let mut steps = steps;
    let mut body_passed = match at {
        At::Headers { body } => !matches!(body, BodyAhead::Coming | BodyAhead::AskHeaders),
        At::Body => true,
        At::Callout { body_passed, .. } => body_passed,
    };
    let headers_sent = match at {
        At::Headers { .. } => false,
        At::Body => true,
        At::Callout { headers_sent, .. } => headers_sent,
    };
    let headers_held = !headers_sent;
    loop {
        if steps > MAX_STEPS {
            metrics::tally(filter, Counter::WAITING_FAILED);
            return (fail_closed(filter, &format!("the filter asked for more than {MAX_STEPS} steps"), Counter::HOST_ERROR), None);
        }
        steps += 1;
        let (pending, input) = match step {
            Step::Done(eval) => {
                let header = header_of(&compiled, role);
                if headers_held {
                    let action = act(filter, compiled.header_name(), header, &eval, role, all_headers);
                    return (action, None);
                }
                // The request headers went on so that the body could come (module docs): no
                // header can be changed now, on any host.
                if !eval.remove_headers.is_empty() || !eval.set_headers.is_empty() {
                    metrics::tally(filter, Counter::WAITING_FAILED);
                    let why = "the decision made after the request body changes request headers, which went on before the body";
                    return (fail_closed(filter, why, Counter::HOST_ERROR), None);
                }
                let header = Header { decision_header: false, ..header.clone() };
                return (act(filter, compiled.header_name(), &header, &eval, role, None), None);
            }
            Step::Unavailable(why) => {
                metrics::tally(filter, Counter::WAITING_FAILED);
                return (fail_closed(filter, why, Counter::HOST_ERROR), None);
            }
            Step::NeedBody { max_bytes, pending } => {
                if let At::Headers { body: BodyAhead::AskHeaders } = at {
                    let body = kong_body_ahead(all_headers);
                    body_passed = body != BodyAhead::Coming;
                    at = At::Headers { body };
                }
                if let At::Headers { body: BodyAhead::None } = at {
                    (pending, Resumed::NoBody)
                } else if let At::Headers { body: BodyAhead::Unreadable } = at {
                    host::log(Level::Warn, format_args!("gatewarden {filter}: a chunked request body cannot be read on this host (ngx_wasm_module); failure_mode decides"));
                    metrics::tally(filter, Counter::BODY_UNAVAILABLE);
                    (pending, Resumed::BodyUnavailable)
                } else if body_passed {
                    metrics::tally(filter, Counter::WAITING_FAILED);
                    return (fail_closed(filter, "the filter asked for the body after it went by", Counter::HOST_ERROR), None);
                } else {
                    // Continue: the body only comes to a request that goes on (module docs).
                    let on = WaitingOn::Body { max_bytes, seen: 0 };
                    let waiting = Waiting { compiled, role, steps, pending, on, body_passed, headers_sent: true };
                    return (Flow::Continue, Some(waiting));
                }
            }
            Step::Call { call, pending } => match dispatch(filter, &call) {
                Ok(on) => {
                    let waiting = Waiting { compiled, role, steps, pending, on, body_passed, headers_sent };
                    return (Flow::Pause, Some(waiting));
                }
                Err(failure) => (pending, Resumed::Failed(failure)),
            },
        };
        let (policy, state) = chosen(&compiled, role);
        step = F::resume(policy, state, pending, input);
    }
}

/// Starts a callout; what the request then waits on, or why it could not start.
fn dispatch(filter: &str, call: &Callout) -> Result<WaitingOn, CallFailure> {
    let started = match call {
        Callout::Http(HttpCallout { upstream, headers, body, timeout, max_response_bytes }) => {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            host::dispatch_http_call_with_body(upstream, &headers, body, *timeout).map(|token| WaitingOn::Http {
                token,
                deadline_ms: deadline_ms(*timeout),
                max_response: *max_response_bytes,
                sent_body: !body.is_empty(),
            })
        }
        // Never on ngx_wasm_module, where `proxy_grpc_call` traps: such policies are refused at
        // configure time; this is the belt to that brace.
        Callout::Grpc(_) if host::host_kind() == HostKind::NgxWasmModule => Err(host::HostError(host::STATUS_UNIMPLEMENTED)),
        Callout::Grpc(GrpcCallout { upstream, service, method, metadata, message, timeout, max_response_bytes }) => {
            let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            host::dispatch_grpc_call(upstream, service, method, &metadata, message, *timeout).map(|token| WaitingOn::Grpc {
                token,
                deadline_ms: deadline_ms(*timeout),
                max_response: *max_response_bytes,
            })
        }
    };
    started.map_err(|e| {
        let target = match call {
            Callout::Http(h) => &h.upstream,
            Callout::Grpc(g) => &g.upstream,
        };
        host::log(Level::Warn, format_args!("gatewarden {filter}: callout to {target:?} could not start (status {})", e.0));
        metrics::tally(filter, Counter::CALLOUT_DISPATCH_FAILED);
        CallFailure::DispatchFailed
    })
}

impl<F: Enforcer> Waiting<F> {
    /// A body chunk while parked: `Some(Pause)` to hold it (a callout is pending, or the body
    /// is still below the limit and not complete); `None`: take the request out and
    /// [`on_body`] it.
    pub fn body_chunk(&mut self, body_size: usize, end_of_stream: bool) -> Option<Flow> {
        match self.on {
            WaitingOn::Http { .. } | WaitingOn::Grpc { .. } | WaitingOn::Settle { .. } => {
                if end_of_stream {
                    self.body_passed = true;
                }
                Some(Flow::Pause)
            }
            WaitingOn::Body { max_bytes, ref mut seen } if !end_of_stream && body_size <= max_bytes => {
                *seen = body_size;
                Some(Flow::Pause)
            }
            WaitingOn::Body { .. } => None,
        }
    }

    /// Request trailers while parked (Envoy: a body that ends with trailers; its last chunk had
    /// no end_of_stream): `Some(Pause)` while a callout is pending; `None`: the body is
    /// complete, take the request out and [`on_body`] it with [`Waiting::body_seen`] bytes.
    pub fn trailers(&mut self) -> Option<Flow> {
        match self.on {
            WaitingOn::Http { .. } | WaitingOn::Grpc { .. } | WaitingOn::Settle { .. } => {
                self.body_passed = true;
                Some(Flow::Pause)
            }
            WaitingOn::Body { .. } => None,
        }
    }

    /// The body size buffered so far by a request waiting for its body.
    pub fn body_seen(&self) -> usize {
        match self.on {
            WaitingOn::Body { seen, .. } => seen,
            WaitingOn::Http { .. } | WaitingOn::Grpc { .. } | WaitingOn::Settle { .. } => 0,
        }
    }
}

/// The request reached the upstream's answer while still waiting (a host that let it go on
/// without the callback the glue waited for): the upstream has seen it, but the client gets a
/// 503 instead of the answer, and it is logged and counted as `waiting_failed`.
///
/// A request waiting for its *body* on Envoy is the exception. Its headers went on (Envoy runs
/// the body callbacks only then) but not one byte of its body: every chunk is held (stop and
/// buffer) until the decision. An upstream that answers
/// on the headers alone (a 401 before reading the body, Envoy's `direct_response`) has seen
/// nothing the filter would have refused, so its answer goes on, counted as
/// `answered_before_body` and logged. Envoy's own 413 for a body past the listener's
/// `per_connection_buffer_limit_bytes` (a local reply, response code details
/// `request_payload_too_large`) goes on the same way, counted as `body_too_large`: it refuses
/// the request as the filter would have. Not on ngx_wasm_module: there a request goes on
/// undecided only when the engine skipped the body callback, and its body may have gone with it.
pub fn undecided<F: Enforcer>(waiting: Waiting<F>) -> Flow {
    let filter = name::<F>();
    if matches!(waiting.on, WaitingOn::Body { .. }) && host::host_kind() == HostKind::Envoy {
        let (counter, what) = if host_refused_the_body() {
            (Counter::BODY_TOO_LARGE, "the host refused the request body as too large (413)")
        } else {
            (Counter::ANSWERED_BEFORE_BODY, "the upstream answered on the request headers, before the body was read")
        };
        metrics::tally(filter, counter);
        host::log(Level::Info, format_args!("gatewarden {filter}: {what}; its answer goes on, the body was never forwarded"));
        return Flow::Continue;
    }
    metrics::tally(filter, Counter::WAITING_FAILED);
    fail_closed(filter, "the upstream answered a request the filter had not decided yet", Counter::HOST_ERROR)
}

/// Whether the response is the host's own 413 for a request body it would not buffer.
fn host_refused_the_body() -> bool {
    let status = host::response_header(":status").ok().flatten();
    let details = host::property(&["response", "code_details"]).ok().flatten();
    status.as_deref() == Some("413") && details.as_deref() == Some(b"request_payload_too_large".as_slice())
}

/// The body (or its end, or its overflow) arrived for a request waiting for it.
pub fn on_body<F: Enforcer>(waiting: Waiting<F>, body_size: usize) -> (Flow, Option<Waiting<F>>) {
    let filter = name::<F>();
    let Waiting { compiled, role, steps, pending, on, .. } = waiting;
    let WaitingOn::Body { max_bytes, .. } = on else {
        return (mismatch(filter), None);
    };
    let (policy, state) = chosen(&compiled, role);
    let step = if body_size > max_bytes {
        metrics::tally(filter, Counter::BODY_TOO_LARGE);
        F::resume(policy, state, pending, Resumed::BodyTooLarge { seen: body_size })
    } else {
        match host::request_body(body_size) {
            Ok(body) if body.len() == body_size => F::resume(policy, state, pending, Resumed::Body(&body)),
            Ok(body) => {
                // ngx_wasm_module: nginx spilled the body to a temp file (client_body_buffer_size).
                host::log(
                    Level::Warn,
                    format_args!(
                        "gatewarden {filter}: the request body ({body_size} bytes) cannot be read here ({} read); failure_mode decides",
                        body.len()
                    ),
                );
                metrics::tally(filter, Counter::BODY_UNAVAILABLE);
                F::resume(policy, state, pending, Resumed::BodyUnavailable)
            }
            Err(e) => {
                host::log(
                    Level::Warn,
                    format_args!("gatewarden {filter}: cannot read the request body (status {}); failure_mode decides", e.0),
                );
                metrics::tally(filter, Counter::BODY_UNAVAILABLE);
                F::resume(policy, state, pending, Resumed::BodyUnavailable)
            }
        }
    };
    drive(compiled, role, step, steps, At::Body, None)
}

/// Makes the request `context_id` effective for the host calls that follow (a callout answer
/// arrives on the root context on ngx_wasm_module). False when the host no longer knows it.
fn make_effective(filter: &str, context_id: u32) -> bool {
    match host::set_effective_context(context_id) {
        Ok(()) => true,
        Err(e) => {
            host::log(
                Level::Info,
                format_args!("gatewarden {filter}: request {context_id} is gone (status {}): its callout answer is dropped", e.0),
            );
            metrics::tally(filter, Counter::WAITING_ABANDONED);
            false
        }
    }
}

/// An HTTP callout of request `context_id` was answered (`num_headers` 0: it failed).
pub fn on_http_response<F: Enforcer>(context_id: u32, waiting: Waiting<F>, num_headers: usize, body_size: usize) -> Option<Waiting<F>> {
    let filter = name::<F>();
    if !make_effective(filter, context_id) {
        return None;
    }
    let Waiting { compiled, role, steps, pending, on, body_passed, headers_sent } = waiting;
    let at = At::Callout { body_passed, headers_sent };
    let (deadline_ms, max_response, sent_body) = match on {
        WaitingOn::Http { deadline_ms, max_response, sent_body, .. } => (deadline_ms, max_response, sent_body),
        // The settling callout ended, however: act on the step taken on the real answer.
        WaitingOn::Settle { step, .. } => return finish_callout(drive(compiled, role, *step, steps, at, None)),
        WaitingOn::Body { .. } | WaitingOn::Grpc { .. } => {
            mismatch(filter);
            return None;
        }
    };
    let (policy, state) = chosen(&compiled, role);
    let failed = |failure: CallFailure| {
        metrics::tally(filter, counter_of(failure));
        host::log(Level::Warn, format_args!("gatewarden {filter}: callout {}; failure_mode decides", failure.as_str()));
        Resumed::Failed(failure)
    };
    let headers;
    let body;
    let input = if num_headers == 0 {
        failed(if host::now_ms() >= deadline_ms { CallFailure::Timeout } else { CallFailure::CallFailed })
    } else if body_size > max_response {
        failed(CallFailure::ResponseTooLarge)
    } else {
        match (host::http_call_response_headers(), host::http_call_response_body(body_size)) {
            (Ok(h), Ok(b)) => {
                headers = h;
                body = b;
                let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
                match status {
                    // Envoy answers a callout that timed out itself: 504 (its router's local
                    // reply), at the deadline.
                    Some(504) if host::now_ms() >= deadline_ms => failed(CallFailure::Timeout),
                    Some(status) => Resumed::Http { status, headers: &headers, body: &body },
                    None => failed(CallFailure::CallFailed),
                }
            }
            _ => failed(CallFailure::CallFailed),
        }
    };
    let step = F::resume(policy, state, pending, input);
    if sent_body && body_size == 0 && host::host_kind() == HostKind::NgxWasmModule {
        match guard(&compiled, role, &step, steps, body_passed, headers_sent) {
            Guard::None => {}
            Guard::Preempt => preempt(filter),
            Guard::Settle => match settle() {
                Ok(token) => {
                    let on = WaitingOn::Settle { token, step: Box::new(step) };
                    return Some(Waiting { compiled, role, steps, pending: Pending::new(()), on, body_passed, headers_sent });
                }
                Err(e) => {
                    host::log(
                        Level::Error,
                        format_args!("gatewarden {filter}: cannot start the settling callout (status {}); acting now", e.0),
                    );
                    preempt(filter);
                }
            },
        }
    }
    finish_callout(drive(compiled, role, step, steps, at, None))
}

// ngx_wasm_module (3bed278): a local response sent from `proxy_on_http_call_response` when the
// answer had no body (a failed callout: timeout, reset, refused after sending; or an empty
// answer, e.g. a 403 with no body) of a callout that carried a body aborts the worker:
// - once the callout's request is sent, its body's chain link goes back to the request's list
//   of free buffers, at its head (ngx_http_proxy_wasm_dispatch.c:847-849,
//   `ngx_chain_update_chains`); reading an answer's body takes free links again
//   (ngx_wasm_socket_tcp_readers.c:447, :505), an answer without one takes none;
// - a local response takes the head link for its body (ngx_http_wasm_local_response.c:154,
//   `ngx_wasm_chain_get_free_buf`, reuse on): the callout's own link;
// - after the callback returns, `ngx_http_proxy_wasm_dispatch_destroy` (:498-505; called at
//   :162 on the error path, :903 after an answer) sets `pos = last` on every link of the
//   callout's body, which now holds the local response's body;
// - flushing the emptied body fails in nginx's write filter ("zero size buf in writer"), the
//   resumed content phase returns 500, and `ngx_http_wasm_wev_handler` asserts it never does
//   (ngx_http_wasm_module.c:1240, "TODO: coverage"): signal 6, the client gets no answer.
// Two ways around it, both keeping the callout's link away from the local response:
// - [`preempt`], when the step surely answers locally: a 1-byte-body callout started first takes
//   the head link for its own body; the local response then gets another one, and stashing it
//   cancels that callout before it connects (ngx_proxy_wasm_host.c:1129-1135,
//   `ngx_proxy_wasm_dispatch_ops_cancel`): nothing is sent, the engine logs a notice.
// - [`settle`], when the step may answer locally: a bodiless callout, and the step is acted on
//   when it ends; by then the first callout is destroyed, and a callout without a body leaves no
//   link to be emptied after its own callback. It costs a connection refused (the engine logs
//   "dispatch failed") and an event-loop turn.
// A step that goes on (allow, no header the client sent twice) needs neither. Both depend on
// `wasm_socket_buffer_reuse` on (the engine's default; our configs keep it): without it, any
// answer leaves the callout's link at the head.

/// Whether acting on a step at a callout answer needs a way around the engine defect above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    None,
    Preempt,
    Settle,
}

/// Follows [`drive`] and `runtime::act`: a denial or a failure answers locally (`Preempt`); an
/// allow or a dry run may still be refused by `act` on this host (a header the client sent
/// twice, a rewritten `:path`: checked here more broadly, any header sent twice), and a new
/// callout may fail to start and then answer locally (`Settle`).
fn guard<F: Enforcer>(compiled: &Compiled<F>, role: Option<Role>, step: &Step, steps: u8, body_passed: bool, headers_sent: bool) -> Guard {
    if steps > MAX_STEPS {
        return Guard::Preempt;
    }
    match step {
        Step::Unavailable(_) => Guard::Preempt,
        // At a callout answer a body step either fails closed (the body went by) or lets the
        // request go on for its body (module docs).
        Step::NeedBody { .. } if body_passed => Guard::Preempt,
        Step::NeedBody { .. } => Guard::None,
        Step::Call { .. } => Guard::Settle,
        Step::Done(eval) => {
            let changes = !eval.remove_headers.is_empty() || !eval.set_headers.is_empty();
            let dry_run = header_of(compiled, role).mode == Mode::DryRun;
            if (headers_sent && changes) || (matches!(eval.decision.verdict, Verdict::Deny(_)) && !dry_run) {
                return Guard::Preempt;
            }
            let twice = match host::request_headers() {
                Ok(headers) => {
                    headers.iter().enumerate().any(|(i, (k, _))| headers.iter().skip(i + 1).any(|(other, _)| other.eq_ignore_ascii_case(k)))
                }
                Err(_) => true,
            };
            if twice || eval.set_headers.iter().any(|(n, _)| n == ":path") {
                Guard::Settle
            } else {
                Guard::None
            }
        }
    }
}

/// Where the extra callouts go: a local TCP port nothing listens on (1, tcpmux, unused in
/// practice), refused at once. A preempting callout never connects (it is cancelled); a settling
/// one carries no body, and if something answered there, only the timeout would be waited for.
const SPARE_UPSTREAM: &str = "127.0.0.1:1";
const SPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
const SPARE_HEADERS: [(&str, &str); 3] = [(":method", "GET"), (":path", "/"), (":authority", "gatewarden-settle")];

/// Starts the 1-byte-body callout the local response about to be sent cancels (see above).
fn preempt(filter: &str) {
    if let Err(e) = host::dispatch_http_call_with_body(SPARE_UPSTREAM, &SPARE_HEADERS, b"-", SPARE_TIMEOUT) {
        host::log(Level::Error, format_args!("gatewarden {filter}: cannot start the preempting callout (status {})", e.0));
    }
}

/// Starts the bodiless callout whose end the step waits for (see above).
fn settle() -> Result<u32, host::HostError> {
    host::dispatch_http_call_with_body(SPARE_UPSTREAM, &SPARE_HEADERS, &[], SPARE_TIMEOUT)
}

/// A unary gRPC callout of request `context_id` answered: `proxy_on_grpc_receive` with its
/// message is the whole success (Envoy calls no close after it, as the Rust SDK's dispatcher
/// also assumes); `status` is `None` then. A failed call gets `proxy_on_grpc_close` only, with
/// the status (`Some`).
pub fn on_grpc_answer<F: Enforcer>(context_id: u32, waiting: Waiting<F>, message_size: usize, status: Option<u32>) -> Option<Waiting<F>> {
    let filter = name::<F>();
    if !make_effective(filter, context_id) {
        return None;
    }
    let Waiting { compiled, role, steps, pending, on, body_passed, headers_sent } = waiting;
    let WaitingOn::Grpc { max_response, deadline_ms, .. } = on else {
        mismatch(filter);
        return None;
    };
    let (policy, state) = chosen(&compiled, role);
    let mut message = Vec::new();
    let failure = match status {
        None if message_size > max_response => Some(CallFailure::ResponseTooLarge),
        None => match host::grpc_receive_buffer(message_size) {
            Ok(bytes) if bytes.len() == message_size => {
                message = bytes;
                None
            }
            _ => Some(CallFailure::CallFailed),
        },
        // Envoy's async client closes a call that timed out with UNAVAILABLE (seen on 1.40: its
        // router's 504 local reply, as gRPC) or DEADLINE_EXCEEDED, and one without a
        // connection with UNAVAILABLE: the deadline tells them apart.
        Some(4 | 14) if host::now_ms() >= deadline_ms => Some(CallFailure::Timeout),
        Some(14) => Some(CallFailure::CallFailed),
        Some(_) => None,
    };
    let input = match (failure, status) {
        (Some(f), _) => {
            metrics::tally(filter, counter_of(f));
            host::log(
                Level::Warn,
                format_args!("gatewarden {filter}: gRPC callout {} (status {}); failure_mode decides", f.as_str(), status.unwrap_or(0)),
            );
            Resumed::Failed(f)
        }
        (None, Some(status)) => Resumed::Grpc { status, message: &[] },
        (None, None) => Resumed::Grpc { status: 0, message: &message },
    };
    let step = F::resume(policy, state, pending, input);
    finish_callout(drive(compiled, role, step, steps, At::Callout { body_passed, headers_sent }, None))
}

/// A request resumed by something it was not waiting for (a glue bug): fails it closed rather
/// than leave it paused.
fn mismatch(filter: &str) -> Flow {
    metrics::tally(filter, Counter::WAITING_FAILED);
    fail_closed(filter, "a waiting request was resumed by something it did not wait for", Counter::HOST_ERROR)
}

/// After a callout answer: resumes the request when it was let through, or when it now waits for
/// its body (which only comes to a request that goes on).
fn finish_callout<F: Enforcer>((action, waiting): (Flow, Option<Waiting<F>>)) -> Option<Waiting<F>> {
    if action == Flow::Continue {
        if let Err(e) = host::continue_request() {
            host::log(Level::Error, format_args!("gatewarden {}: cannot resume the request (status {})", name::<F>(), e.0));
        }
    }
    waiting
}

/// When a callout started now with `timeout` times out, by the host clock, less a margin: the
/// clock a host reads to the module is its event loop's (Envoy: cached per loop iteration), so a
/// failure delivered by the timeout's own timer may read a few milliseconds early. The margin
/// is a tenth of the timeout, at most 100 ms: a failure that early is no timeout.
fn deadline_ms(timeout: std::time::Duration) -> u64 {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    host::now_ms().saturating_add(ms).saturating_sub((ms / 10).min(100))
}

fn counter_of(failure: CallFailure) -> Counter {
    match failure {
        CallFailure::DispatchFailed => Counter::CALLOUT_DISPATCH_FAILED,
        CallFailure::Timeout => Counter::CALLOUT_TIMEOUT,
        CallFailure::CallFailed => Counter::CALLOUT_FAILED,
        CallFailure::ResponseTooLarge => Counter::CALLOUT_TOO_LARGE,
    }
}
