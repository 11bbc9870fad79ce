//! The floor filter: a Proxy-Wasm HTTP filter that does nothing.
//!
//! It measures what any Rust Wasm filter costs before it does any work: the VM, the context
//! creation per request and the host calls Envoy makes for every callback. Benchmarks report the
//! real filters relative to it. The root context accepts any configuration (so ECDS pushes of
//! arbitrary bytes are accepted and counted), and every request continues unchanged.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_root_context_id| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

/// Accepts any configuration and creates one [`FloorHttp`] per request.
struct FloorRoot;

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    /// Any configuration (or none) is valid: the floor has nothing to configure.
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Lets every request through; the default callbacks of [`HttpContext`] all return `Continue`.
struct FloorHttp;

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
