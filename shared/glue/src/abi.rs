//! Our Proxy-Wasm ABI 0.2.1 exports, instead of the SDK's dispatcher.
//!
//! Every stream callback either host may call is exported: Kong's ngx_wasm_module calls
//! `proxy_on_request_headers`, `_request_body`, `_response_headers`, `_response_body`, `_done`
//! and `_log` on every request without checking that the module exports them, and a missing one
//! crashes the nginx worker (seen on ngx_wasm_module 3bed278). The ones a Gatewarden filter does
//! not use return at once (Continue / done). Envoy calls every export too, so each costs an
//! Envoy VM crossing per request (measured in the README's benchmark section).
//! We also never panic on a context id we do not know.
//!
//! A filter crate calls [`export_filter!`] once with its [`Enforcer`](crate::Enforcer).

use std::cell::RefCell;
use std::rc::Rc;

use crate::fasthash::FastMap;
use crate::metrics;
use crate::runtime::{Compiled, Enforcer, Root};
use crate::waiting::Waiting;

/// The per-VM state behind the exports: root contexts (one per plugin configuration, a new one
/// after every policy update) and, per live request, the policy it was created under.
///
/// Filters that wait (`Enforcer::WAITS`) also park requests here: `waiting` by request context,
/// and `callouts` maps each pending callout's token to the request that made it (answers are
/// routed by token: ngx_wasm_module delivers them on the root context). Both are empty for a
/// headers-only filter, whose requests never touch them.
pub struct Runtime<F: Enforcer> {
    roots: FastMap<u32, Rc<RefCell<Root<F>>>>,
    requests: FastMap<u32, Option<Rc<Compiled<F>>>>,
    waiting: FastMap<u32, Waiting<F>>,
    callouts: FastMap<u32, u32>,
    /// Tokens of the callouts of requests deleted while they waited, newest last, at most
    /// [`ABANDONED_TOKENS`]: a late answer to one is dropped and counted (`callout_late`)
    /// instead of reaching the root's filter. Envoy cancels such calls and ngx_wasm_module
    /// destroys them with the request, so none is expected; bounded so that it cannot grow.
    abandoned: std::collections::VecDeque<u32>,
    /// Response headers of let-through requests (`Outcome::allowed_response_headers`), by
    /// request context, until their `on_response_headers` (or `on_delete`). Empty unless a
    /// policy adds headers to allowed responses.
    response_headers: FastMap<u32, Vec<(String, String)>>,
}

/// How many abandoned callout tokens a VM remembers.
pub const ABANDONED_TOKENS: usize = 64;

impl<F: Enforcer> Default for Runtime<F> {
    fn default() -> Self {
        Self {
            roots: FastMap::default(),
            requests: FastMap::default(),
            waiting: FastMap::default(),
            callouts: FastMap::default(),
            abandoned: std::collections::VecDeque::new(),
            response_headers: FastMap::default(),
        }
    }
}

impl<F: Enforcer> Runtime<F> {
    /// `parent == 0`: a root context; otherwise a request of root `parent`.
    pub fn context_create(&mut self, context_id: u32, parent: u32) {
        if parent == 0 {
            self.roots.insert(context_id, Rc::new(RefCell::new(Root::new(context_id))));
        } else {
            let policy = self.roots.get(&parent).and_then(|r| r.try_borrow().ok()).and_then(|r| r.current_policy());
            self.requests.insert(context_id, policy);
        }
    }

    pub fn is_root(&self, context_id: u32) -> bool {
        self.roots.contains_key(&context_id)
    }

    pub fn root(&self, context_id: u32) -> Option<Rc<RefCell<Root<F>>>> {
        self.roots.get(&context_id).cloned()
    }

    /// Parks a waiting request. A request already deleted (the host ended it while the filter
    /// was deciding) is dropped and counted instead.
    pub fn park(&mut self, context_id: u32, waiting: Waiting<F>) {
        if !self.requests.contains_key(&context_id) {
            metrics::tally(<F::Policy as gatewarden_policy::FilterPolicy>::NAME, crate::metrics::Counter::WAITING_ABANDONED);
            return;
        }
        if let Some(token) = waiting.token() {
            self.callouts.insert(token, context_id);
        }
        self.waiting.insert(context_id, waiting);
    }

    /// The parked request `context_id`, if it waits.
    pub fn waiting_mut(&mut self, context_id: u32) -> Option<&mut Waiting<F>> {
        self.waiting.get_mut(&context_id)
    }

    /// Takes the parked request `context_id` out (to resume it).
    pub fn unpark(&mut self, context_id: u32) -> Option<Waiting<F>> {
        let waiting = self.waiting.remove(&context_id)?;
        if let Some(token) = waiting.token() {
            self.callouts.remove(&token);
        }
        Some(waiting)
    }

    /// Takes out the request waiting for callout `token`, with its context id.
    pub fn unpark_token(&mut self, token: u32) -> Option<(u32, Waiting<F>)> {
        let context_id = self.callouts.remove(&token)?;
        self.waiting.remove(&context_id).map(|w| (context_id, w))
    }

    /// Whether `token` is the callout of a request deleted while it waited (forgotten now): its
    /// late answer is to be dropped, and is counted here.
    pub fn late_answer(&mut self, token: u32) -> bool {
        let Some(at) = self.abandoned.iter().position(|t| *t == token) else { return false };
        self.abandoned.remove(at);
        metrics::tally(<F::Policy as gatewarden_policy::FilterPolicy>::NAME, crate::metrics::Counter::CALLOUT_LATE);
        true
    }

    /// Requests parked, callout tokens pending, abandoned tokens remembered: for tests.
    pub fn waiting_counts(&self) -> (usize, usize, usize) {
        (self.waiting.len(), self.callouts.len(), self.abandoned.len())
    }

    /// Files the response headers of request `context_id`, just let through, for its
    /// `on_response_headers`. A request the host already deleted is skipped.
    pub fn keep_response_headers(&mut self, context_id: u32, headers: Vec<(String, String)>) {
        if self.requests.contains_key(&context_id) {
            self.response_headers.insert(context_id, headers);
        }
    }

    /// The response headers filed for request `context_id`, taken.
    pub fn take_response_headers(&mut self, context_id: u32) -> Option<Vec<(String, String)>> {
        if self.response_headers.is_empty() {
            return None;
        }
        self.response_headers.remove(&context_id)
    }

    /// The policy of a request, taken: it is needed once, on request headers. The (now empty)
    /// entry stays until `delete`, which then finds it with one lookup (and, for a filter that
    /// waits, it marks the request as live for [`Runtime::park`]).
    pub fn take_request(&mut self, context_id: u32) -> Option<Rc<Compiled<F>>> {
        self.requests.get_mut(&context_id).and_then(Option::take)
    }

    pub fn delete(&mut self, context_id: u32) {
        if self.requests.remove(&context_id).is_none() {
            self.roots.remove(&context_id);
            return;
        }
        if !self.response_headers.is_empty() {
            self.response_headers.remove(&context_id);
        }
        // A request deleted while it waits (the client went away): its late answer, if the host
        // still delivers one, finds no token and is dropped.
        if F::WAITS {
            if let Some(waiting) = self.unpark(context_id) {
                metrics::tally(<F::Policy as gatewarden_policy::FilterPolicy>::NAME, crate::metrics::Counter::WAITING_ABANDONED);
                if let Some(token) = waiting.token() {
                    if self.abandoned.len() >= ABANDONED_TOKENS {
                        self.abandoned.pop_front();
                    }
                    self.abandoned.push_back(token);
                }
            }
        }
    }
}

/// `proxy_on_memory_allocate`: a buffer the host fills and we take back as a `Vec<u8>`
/// (`host::take`).
pub fn allocate(size: usize) -> *mut u8 {
    let mut buf: Vec<u8> = Vec::with_capacity(size);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Runs `f` on a root context; `None` if it is unknown or busy (a re-entrant host callback).
pub fn with_root<F: Enforcer, R>(root: Option<Rc<RefCell<Root<F>>>>, f: impl FnOnce(&mut Root<F>) -> R) -> Option<R> {
    let root = root?;
    let mut guard = root.try_borrow_mut().ok()?;
    Some(f(&mut guard))
}

/// Exports the Proxy-Wasm callbacks of a filter whose glue is the [`Enforcer`](crate::Enforcer) `$enforcer`:
/// `export_filter!(MyFilter)` for a headers-only filter, `export_filter!(MyFilter, waits)` for one
/// with `Enforcer::WAITS` (a compile-time check keeps the two in step).
///
/// Why two forms: a headers-only filter's module then contains none of the waiting code (no
/// gRPC exports, no parking), and its request path is exactly the one it had before the
/// pipeline existed; the per-request cost is unchanged (`request_cost`, see the glue's
/// `waiting` module docs).
#[macro_export]
macro_rules! export_filter {
    (@common $enforcer:ty) => {
        thread_local! {
            static GATEWARDEN_RUNTIME: ::core::cell::RefCell<$crate::abi::Runtime<$enforcer>> =
                ::core::cell::RefCell::new(::core::default::Default::default());
        }

        /// Runs `f` on the runtime unless it is already borrowed (a re-entrant host callback).
        fn gatewarden_runtime<R>(f: impl FnOnce(&mut $crate::abi::Runtime<$enforcer>) -> R) -> Option<R> {
            GATEWARDEN_RUNTIME.with(|rt| rt.try_borrow_mut().ok().map(|mut rt| f(&mut rt)))
        }

        /// Files the response headers of the request `context_id` just let through, if any.
        fn gatewarden_keep_response_headers(context_id: u32) {
            if let Some(headers) = $crate::runtime::take_allowed_response_headers() {
                gatewarden_runtime(|rt| rt.keep_response_headers(context_id, headers));
            }
        }

        /// Adds the response headers filed for the request `context_id`, if any.
        fn gatewarden_add_response_headers(context_id: u32) {
            if let Some(headers) = gatewarden_runtime(|rt| rt.take_response_headers(context_id)).flatten() {
                $crate::runtime::add_allowed_response_headers::<$enforcer>(&headers);
            }
        }

        #[cfg(target_os = "wasi")]
        extern "C" {
            fn __wasm_call_ctors();
        }

        #[no_mangle]
        pub extern "C" fn _initialize() {
            // SAFETY: called once by the host before any other export, as the reactor ABI requires.
            #[cfg(target_os = "wasi")]
            unsafe {
                __wasm_call_ctors();
            }
        }

        #[no_mangle]
        pub extern "C" fn proxy_abi_version_0_2_1() {}

        #[no_mangle]
        pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
            $crate::abi::allocate(size)
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
            gatewarden_runtime(|rt| rt.context_create(context_id, parent_context_id));
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> bool {
            $crate::runtime::on_vm_start::<$enforcer>()
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_configure(context_id: u32, _plugin_configuration_size: usize) -> bool {
            let root = gatewarden_runtime(|rt| rt.root(context_id)).flatten();
            $crate::abi::with_root(root, |r| r.on_configure()).unwrap_or(false)
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_tick(context_id: u32) {
            let root = gatewarden_runtime(|rt| rt.root(context_id)).flatten();
            $crate::abi::with_root(root, |r| r.on_tick());
        }

        // Callbacks a Gatewarden filter does not use, exported because ngx_wasm_module calls
        // them unchecked (see the module docs): each returns at once.

        #[no_mangle]
        pub extern "C" fn proxy_on_response_body(_context_id: u32, _body_size: usize, _end_of_stream: bool) -> u32 {
            $crate::runtime::Flow::Continue as u32
        }

        /// A root context's `on_done` (its VM is shutting down, e.g. an nginx worker replaced by
        /// a reload) flushes the counters tallied since the last tick; a request's does nothing.
        #[no_mangle]
        pub extern "C" fn proxy_on_done(context_id: u32) -> bool {
            if gatewarden_runtime(|rt| rt.is_root(context_id)).unwrap_or(false) {
                $crate::metrics::flush();
            }
            true
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_log(_context_id: u32) {}

        #[no_mangle]
        pub extern "C" fn proxy_on_delete(context_id: u32) {
            gatewarden_runtime(|rt| rt.delete(context_id));
        }
    };
    ($enforcer:ty) => {
        const _: () = assert!(
            !<$enforcer as $crate::Enforcer>::WAITS,
            "a filter with Enforcer::WAITS = true is exported with export_filter!(Filter, waits)"
        );
        $crate::export_filter!(@common $enforcer);

        #[no_mangle]
        pub extern "C" fn proxy_on_http_call_response(
            context_id: u32,
            token: u32,
            _num_headers: usize,
            body_size: usize,
            _num_trailers: usize,
        ) {
            let root = gatewarden_runtime(|rt| rt.root(context_id)).flatten();
            $crate::abi::with_root(root, |r| r.on_http_call_response(token, body_size));
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> u32 {
            let compiled = gatewarden_runtime(|rt| rt.take_request(context_id)).flatten();
            let action = $crate::runtime::on_request_headers::<$enforcer>(compiled.as_deref());
            gatewarden_keep_response_headers(context_id);
            action as u32
        }

        /// Exported because ngx_wasm_module calls it unchecked (see the module docs): returns at once.
        #[no_mangle]
        pub extern "C" fn proxy_on_request_body(_context_id: u32, _body_size: usize, _end_of_stream: bool) -> u32 {
            $crate::runtime::Flow::Continue as u32
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_response_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> u32 {
            gatewarden_add_response_headers(context_id);
            $crate::runtime::Flow::Continue as u32
        }
    };
    ($enforcer:ty, waits) => {
        const _: () = assert!(
            <$enforcer as $crate::Enforcer>::WAITS,
            "export_filter!(Filter, waits) is for a filter with Enforcer::WAITS = true"
        );
        $crate::export_filter!(@common $enforcer);

        /// Routed by token: a request's callout goes to that request (ngx_wasm_module passes
        /// the root context id here, Envoy the caller's), any other to the root's filter.
        #[no_mangle]
        pub extern "C" fn proxy_on_http_call_response(
            context_id: u32,
            token: u32,
            num_headers: usize,
            body_size: usize,
            _num_trailers: usize,
        ) {
            if let Some((request, waiting)) = gatewarden_runtime(|rt| rt.unpark_token(token)).flatten() {
                let next = $crate::waiting::on_http_response::<$enforcer>(request, waiting, num_headers, body_size);
                match next {
                    Some(next) => gatewarden_runtime(|rt| rt.park(request, next)).unwrap_or(()),
                    None => gatewarden_keep_response_headers(request),
                }
                return;
            }
            if gatewarden_runtime(|rt| rt.late_answer(token)).unwrap_or(false) {
                return;
            }
            let root = gatewarden_runtime(|rt| rt.root(context_id)).flatten();
            $crate::abi::with_root(root, |r| r.on_http_call_response(token, body_size));
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_grpc_receive(_context_id: u32, token: u32, response_size: usize) {
            if let Some((request, waiting)) = gatewarden_runtime(|rt| rt.unpark_token(token)).flatten() {
                let next = $crate::waiting::on_grpc_answer::<$enforcer>(request, waiting, response_size, None);
                match next {
                    Some(next) => gatewarden_runtime(|rt| rt.park(request, next)).unwrap_or(()),
                    None => gatewarden_keep_response_headers(request),
                }
            } else {
                gatewarden_runtime(|rt| rt.late_answer(token));
            }
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_grpc_close(_context_id: u32, token: u32, status_code: u32) {
            if let Some((request, waiting)) = gatewarden_runtime(|rt| rt.unpark_token(token)).flatten() {
                let next = $crate::waiting::on_grpc_answer::<$enforcer>(request, waiting, 0, Some(status_code));
                match next {
                    Some(next) => gatewarden_runtime(|rt| rt.park(request, next)).unwrap_or(()),
                    None => gatewarden_keep_response_headers(request),
                }
            } else {
                gatewarden_runtime(|rt| rt.late_answer(token));
            }
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(context_id: u32, _num_headers: usize, end_of_stream: bool) -> u32 {
            let compiled = gatewarden_runtime(|rt| rt.take_request(context_id)).flatten();
            let (action, waiting) = $crate::runtime::on_request_headers_waiting::<$enforcer>(compiled, end_of_stream);
            match waiting {
                Some(waiting) => gatewarden_runtime(|rt| rt.park(context_id, waiting)).unwrap_or(()),
                None => gatewarden_keep_response_headers(context_id),
            }
            action as u32
        }

        /// Body chunks are held while the request waits; a decided request's pass.
        #[no_mangle]
        pub extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32 {
            // A busy runtime (a re-entrant callback) holds the body: never let it pass undecided.
            let held = gatewarden_runtime(|rt| match rt.waiting_mut(context_id) {
                None => Some($crate::runtime::Flow::Continue),
                Some(waiting) => waiting.body_chunk(body_size, end_of_stream),
            })
            .unwrap_or(Some($crate::runtime::Flow::Pause));
            if let Some(action) = held {
                return action as u32;
            }
            let Some(waiting) = gatewarden_runtime(|rt| rt.unpark(context_id)).flatten() else {
                return $crate::runtime::Flow::Pause as u32;
            };
            let (action, next) = $crate::waiting::on_body::<$enforcer>(waiting, body_size);
            match next {
                Some(next) => gatewarden_runtime(|rt| rt.park(context_id, next)).unwrap_or(()),
                None => gatewarden_keep_response_headers(context_id),
            }
            action as u32
        }

        /// Envoy: a body that ends with trailers is complete here (its last chunk had no
        /// end_of_stream). ngx_wasm_module has no trailer callbacks.
        #[no_mangle]
        pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> u32 {
            let held = gatewarden_runtime(|rt| match rt.waiting_mut(context_id) {
                None => Some($crate::runtime::Flow::Continue),
                Some(waiting) => waiting.trailers(),
            })
            .unwrap_or(Some($crate::runtime::Flow::Pause));
            if let Some(action) = held {
                return action as u32;
            }
            let Some(waiting) = gatewarden_runtime(|rt| rt.unpark(context_id)).flatten() else {
                return $crate::runtime::Flow::Pause as u32;
            };
            let seen = waiting.body_seen();
            let (action, next) = $crate::waiting::on_body::<$enforcer>(waiting, seen);
            match next {
                Some(next) => gatewarden_runtime(|rt| rt.park(context_id, next)).unwrap_or(()),
                None => gatewarden_keep_response_headers(context_id),
            }
            action as u32
        }

        /// A request still waiting when the upstream answers passed undecided (a host that let
        /// it go on without the callback the glue waited for): the client gets a 503 instead.
        #[no_mangle]
        pub extern "C" fn proxy_on_response_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> u32 {
            match gatewarden_runtime(|rt| rt.unpark(context_id)).flatten() {
                None => {
                    gatewarden_add_response_headers(context_id);
                    $crate::runtime::Flow::Continue as u32
                }
                Some(waiting) => $crate::waiting::undecided::<$enforcer>(waiting) as u32,
            }
        }
    };
}
