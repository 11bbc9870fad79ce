//! What a filter can ask for before it decides: the request body, or an answer from a service.
//!
//! ```text
//! start(policy, state, facts) ─▶ Step::Done(Outcome)                      act now (as `decide`)
//!                             ─▶ Step::NeedBody { max_bytes, pending }        wait for the body
//!                             ─▶ Step::Call { call: Callout::Http | Grpc, .. } wait for the answer
//! resume(policy, state, pending, Resumed::NoBody | Body | BodyTooLarge | BodyUnavailable
//!                                | Http | Grpc | Failed(CallFailure)) ─▶ Step again (bounded: MAX_STEPS)
//! ```
//! Plain Rust on purpose: no proxy-wasm name appears here, so a second host ABI (Envoy's native
//! dynamic modules) can drive the same filters. The Proxy-Wasm side (chunked bodies, callout
//! tokens, effective contexts, `proxy_continue_stream`) is in the glue's `waiting`; the native
//! Envoy module's runtime is the other host.
//!
//! Host differences the glue hides (see the glue's `waiting` for where):
//! - Envoy delivers the body in chunks; the glue buffers until end of stream, or stops as soon as
//!   the running size exceeds `max_bytes` ([`Resumed::BodyTooLarge`]). Envoy itself answers 413
//!   past its own `per_connection_buffer_limit_bytes`.
//! - Kong's ngx_wasm_module delivers the whole body once, or cannot deliver it at all when nginx
//!   spilled it to a temp file (`client_body_buffer_size`): [`Resumed::BodyUnavailable`], and the
//!   filter fails by its `failure_mode`.
//! - Kong has no gRPC (`proxy_grpc_call` traps there): a policy that needs it is refused at
//!   configure time through `Enforcer::check_host` (the glue) with [`HostCaps::grpc`] false.

use std::any::Any;
use std::time::Duration;

use crate::outcome::Outcome;

/// Most steps (body or callouts) one request may take before the glue fails it closed: a filter
/// that keeps asking cannot hold a request forever.
pub const MAX_STEPS: u8 = 8;

/// What a filter does next for one request.
///
/// A decision made after [`Resumed::Body`] (and the other body outcomes except
/// [`Resumed::NoBody`]) cannot change request headers: the headers went on so that the body
/// could come (Envoy runs the body callback only for a request whose headers continued). Its
/// `remove_headers`/`set_headers` must be empty (else the glue fails the request closed) and no
/// decision header is sent; the decision log line and counters are as usual.
pub enum Step {
    /// Decided: act on it (allow, deny, dry-run deny).
    Done(Outcome),
    /// Wait for the request body, at most `max_bytes` of it.
    NeedBody { max_bytes: usize, pending: Pending },
    /// Ask a service, then resume with its answer.
    Call { call: Callout, pending: Pending },
    /// The filter cannot decide (a bug, e.g. a `Pending` of the wrong type): the glue fails the
    /// request closed (503, counted as `waiting_failed`) and logs this at error level.
    Unavailable(&'static str),
}

/// The state a filter keeps for one request while it waits, handed back to `resume`.
///
/// Type-erased because the glue's `Enforcer` trait cannot name a per-filter type without
/// breaking the filters that never wait (associated type defaults are not stable Rust). Only a
/// request that waits allocates one; a headers-only filter never does.
pub struct Pending(Box<dyn Any>);

impl Pending {
    pub fn new<T: 'static>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// The value, if it is a `T` (it is what the filter stored, so a `None` is a filter bug:
    /// fail closed on it).
    pub fn into_inner<T: 'static>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending(..)")
    }
}

/// A service call a filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callout {
    Http(HttpCallout),
    Grpc(GrpcCallout),
}

/// An HTTP call: on Envoy `upstream` is a cluster name, on Kong `host:port`. `headers` must hold
/// `:method`, `:path` and `:authority` (Envoy refuses the dispatch without them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallout {
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// A larger answer is [`CallFailure::ResponseTooLarge`], never read.
    pub max_response_bytes: usize,
}

/// A unary gRPC call (Envoy only): `upstream` is a cluster name; `message` the serialized
/// request message (the glue does not know protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallout {
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub metadata: Vec<(String, String)>,
    pub message: Vec<u8>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
}

/// What a waiting request is resumed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed<'a> {
    /// The request has no body (known from its headers, which are still held: the decision
    /// may change them).
    NoBody,
    /// The whole body (possibly empty, e.g. chunked with no data). The request headers went on
    /// before it came: the decision may change none of them (see [`Step`]).
    Body(&'a [u8]),
    /// The body grew past `max_bytes`; `seen` bytes had arrived (a lower bound of its size).
    BodyTooLarge { seen: usize },
    /// The host cannot hand the body over (Kong: nginx spilled it to a temp file).
    BodyUnavailable,
    /// The HTTP service answered (any status).
    Http { status: u16, headers: &'a [(String, String)], body: &'a [u8] },
    /// The gRPC service answered with this status (0: OK) and message (empty on an error status).
    Grpc { status: u32, message: &'a [u8] },
    /// No answer.
    Failed(CallFailure),
}

/// Why a callout gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// The host refused to start it (unknown cluster, bad target, no gRPC on this host).
    DispatchFailed,
    /// No answer within the timeout: a failure (HTTP: no headers, or Envoy's 504; gRPC:
    /// UNAVAILABLE or DEADLINE_EXCEEDED) that arrived at the deadline by the host clock.
    Timeout,
    /// Reset, refused connection, no `:status`, before the deadline; gRPC: UNAVAILABLE before it.
    CallFailed,
    /// The answer was larger than `max_response_bytes`.
    ResponseTooLarge,
}

impl CallFailure {
    /// The counter suffix (`gatewarden_<filter>_callout_<this>`) and the log word.
    pub fn as_str(self) -> &'static str {
        match self {
            CallFailure::DispatchFailed => "dispatch_failed",
            CallFailure::Timeout => "timeout",
            CallFailure::CallFailed => "failed",
            CallFailure::ResponseTooLarge => "too_large",
        }
    }
}

/// What the host can do, for `Enforcer::check_host` (the glue) at configure time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCaps {
    /// `proxy_grpc_call` works (Envoy); Kong's engine has none.
    pub grpc: bool,
    /// The body arrives in chunks (Envoy) or whole, once (Kong).
    pub chunked_body: bool,
    /// The host's name for messages: `envoy` or `ngx_wasm_module`.
    pub name: &'static str,
}

impl HostCaps {
    pub const ENVOY: HostCaps = HostCaps { grpc: true, chunked_body: true, name: "envoy" };
    pub const NGX_WASM_MODULE: HostCaps = HostCaps { grpc: false, chunked_body: false, name: "ngx_wasm_module" };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_gives_back_what_was_stored_and_nothing_else() {
        let pending = Pending::new((7u8, "stage"));
        assert_eq!(pending.into_inner::<(u8, &str)>(), Some((7, "stage")));
        assert_eq!(Pending::new(7u8).into_inner::<u16>(), None, "another type is refused, not cast");
    }
}
