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
//! For fault injection it also reads and writes shared data, which on ngx_wasm_module lives in
//! `shm_kv` zones shared by every module of the nginx (a key `gatewarden/...` is in the zone
//! named gatewarden, where the filters publish fetched resources):
//!
//! ```text
//! x-gatewarden-shared-get: <key>                        -> {"value_hex": "..." | null, "cas": n}
//! x-gatewarden-shared-set: <key>
//! x-gatewarden-shared-value-hex: <hex>                  -> {"ok": true} (written whatever the CAS)
//! ```
//!
//! It must not use the `log` crate: the SDK's logger imports `proxy_get_log_level` with a
//! signature ngx_wasm_module does not provide, and the module then fails to instantiate.

use std::cell::Cell;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

const QUERY_HEADER: &str = "x-gatewarden-metrics";
const SHARED_GET: &str = "x-gatewarden-shared-get";
const SHARED_SET: &str = "x-gatewarden-shared-set";
const SHARED_VALUE: &str = "x-gatewarden-shared-value-hex";

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
        if let Some(key) = self.get_http_request_header(SHARED_GET) {
            let body = match proxy_wasm::hostcalls::get_shared_data(&key) {
                Ok((Some(value), cas)) => format!("{{\"value_hex\":\"{}\",\"cas\":{}}}", hex(&value), cas.unwrap_or(0)),
                Ok((None, cas)) => format!("{{\"value_hex\":null,\"cas\":{}}}", cas.unwrap_or(0)),
                Err(status) => format!("{{\"error\":\"{status:?}\"}}"),
            };
            self.send_http_response(200, vec![("content-type", "application/json")], Some(body.as_bytes()));
            return Action::Pause;
        }
        if let Some(key) = self.get_http_request_header(SHARED_SET) {
            let value = self.get_http_request_header(SHARED_VALUE).and_then(|h| unhex(&h));
            let (status, body) = match value {
                None => (400, "{\"error\":\"no or bad x-gatewarden-shared-value-hex\"}".to_owned()),
                Some(value) => match overwrite(&key, &value) {
                    Ok(()) => (200, "{\"ok\":true}".to_owned()),
                    Err(why) => (500, format!("{{\"error\":\"{why}\"}}")),
                },
            };
            self.send_http_response(status, vec![("content-type", "application/json")], Some(body.as_bytes()));
            return Action::Pause;
        }
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

/// Writes `key` whatever its value: ngx_wasm_module's CAS 0 means "only if absent", so pass the
/// CAS just read. The raw host call: the SDK's helper panics on statuses other than Ok/CasMismatch.
fn overwrite(key: &str, value: &[u8]) -> Result<(), String> {
    let (_, cas) = proxy_wasm::hostcalls::get_shared_data(key).map_err(|s| format!("get: {s:?}"))?;
    let status = unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) };
    if status == 0 {
        Ok(())
    } else {
        Err(format!("set: status {status}"))
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_shared_data(key_data: *const u8, key_size: usize, value_data: *const u8, value_size: usize, cas: u32) -> u32;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
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

    #[test]
    fn hex_round_trip() {
        assert_eq!(super::unhex(&super::hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(super::unhex("abc"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
