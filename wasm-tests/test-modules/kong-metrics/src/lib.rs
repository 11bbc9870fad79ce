//! Reads ngx_wasm_module's Proxy-Wasm metrics for the e2e harness (test-only).
//!
//! ngx_wasm_module keeps every filter's metrics in shared memory under the prefixed name
//! `pw:<module name>:<metric name>`, with id = CRC-32 (IEEE, zlib's; nginx's `ngx_crc32_long`) of
//! that name, and `proxy_get_metric(id)` reads any of them from any filter. Plain nginx has no
//! endpoint that lists them, so this module answers a request carrying
//!
//! ```text
//! x-gatewarden-metrics: pw:gatewarden_floor:gatewarden_floor_allowed,pw:...
//! ```
//!
//! with a local `200` whose body is the JSON object `{"<full name>": value, ...}` (`null` where the
//! host returns an error status).
//!
//! ngx_wasm_module traps on `proxy_get_metric` of an id it does not know (no status comes back),
//! which ends the request with a 500: the harness asks only for names the filter defines
//! (`gatewarden counters --module`). The module counts its own queries in
//! `pw:gatewarden_kong_metrics:queries`, so the harness can check the whole path (name, CRC-32, value).
//!
//! It must not use the `log` crate: the SDK's logger imports `proxy_get_log_level` with a
//! signature ngx_wasm_module does not provide, and the module then fails to instantiate.

use std::cell::Cell;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

const QUERY_HEADER: &str = "x-gatewarden-metrics";

thread_local! {
    /// Id of this module's own `queries` counter (None until defined).
    static QUERIES: Cell<Option<u32>> = const { Cell::new(None) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MetricsRoot) });
}}

struct MetricsRoot;

impl Context for MetricsRoot {}

impl RootContext for MetricsRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Ok(id) = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "queries") {
            QUERIES.with(|q| q.set(Some(id)));
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MetricsRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct MetricsRequest;

impl Context for MetricsRequest {}

impl HttpContext for MetricsRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(query) = self.get_http_request_header(QUERY_HEADER) else {
            self.send_http_response(400, vec![("content-type", "text/plain")], Some(b"no x-gatewarden-metrics header\n"));
            return Action::Pause;
        };
        if let Some(id) = QUERIES.with(Cell::get) {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
        let mut body = String::from("{");
        for name in query.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let value = match proxy_wasm::hostcalls::get_metric(crc32(name.as_bytes())) {
                Ok(v) => v.to_string(),
                Err(_) => "null".to_owned(),
            };
            if body.len() > 1 {
                body.push(',');
            }
            body.push('"');
            for c in name.chars() {
                if c == '"' || c == '\\' {
                    body.push('\\');
                }
                body.push(c);
            }
            body.push_str("\":");
            body.push_str(&value);
        }
        body.push('}');
        self.send_http_response(200, vec![("content-type", "application/json")], Some(body.as_bytes()));
        Action::Pause
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): zlib's `crc32` and nginx's `ngx_crc32_long`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
    }
}
