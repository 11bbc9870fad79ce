//! The host adapter: every Proxy-Wasm host call the filters make, with every status handled.
//!
//! Why not the SDK's helpers: `proxy_wasm::hostcalls` panics on any status it does not expect
//! (and decodes statuses into a Rust enum, undefined for values a host may add), and a panic
//! traps the VM and fails every request on that worker. Here each import is declared with plain
//! integer types and every call returns `Result<_, HostError>`. Kong's ngx_wasm_module returns
//! statuses Envoy never does for the same call, so nothing is assumed.
//!
//! The SDK is not used at all: its dispatcher exports every callback (Envoy then calls seven
//! per request where we need three) and panics on unknown context ids; `crate::abi` exports ours.

use std::ptr::null_mut;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A host call failed with this ABI status (e.g. 1 NotFound, 2 BadArgument, 8 CasMismatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

pub const STATUS_OK: u32 = 0;
pub const STATUS_NOT_FOUND: u32 = 1;
pub const STATUS_CAS_MISMATCH: u32 = 8;
pub const STATUS_UNIMPLEMENTED: u32 = 12;

/// Log levels of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

// Buffer and map types of ABI 0.2.1.
const BUFFER_HTTP_REQUEST_BODY: u32 = 0;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const BUFFER_GRPC_RECEIVE: u32 = 5;
const STREAM_HTTP_REQUEST: u32 = 0;
const BUFFER_VM_CONFIGURATION: u32 = 6;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const MAP_HTTP_RESPONSE_HEADERS: u32 = 2;
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const METRIC_COUNTER: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_replace_header_map_value(map_type: u32, key_data: *const u8, key_size: usize, value_data: *const u8, value_size: usize)
        -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(path_data: *const u8, path_size: usize, return_value_data: *mut *mut u8, return_value_size: *mut usize) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key_data: *const u8, key_size: usize, value_data: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_grpc_call(
        service_data: *const u8,
        service_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        message_data: *const u8,
        message_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
}

fn status(code: u32) -> Result<(), HostError> {
    if code == STATUS_OK {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
fn take(ptr: *mut u8, size: usize) -> Vec<u8> {
    if ptr.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into memory it obtained from the SDK's
    // `proxy_on_memory_allocate`, which allocates exactly `size` bytes as a Vec<u8>.
    unsafe { Vec::from_raw_parts(ptr, size, size) }
}

/// The least severe level the glue formats and sends: below it, [`log`] returns before any
/// formatting. Fixed, because the level cannot be asked on every host: Kong's ngx_wasm_module
/// declares `proxy_get_log_level` with another signature, and a module importing it does not load.
pub const MIN_LEVEL: Level = Level::Info;

/// Whether a message at `level` would be sent.
pub fn enabled(level: Level) -> bool {
    level >= MIN_LEVEL
}

/// The one logging helper: `log(Level::Info, format_args!("gatewarden {filter}: …"))`. The level
/// is checked before the message is formatted; a failed log call is ignored (there is nowhere
/// else to report it).
pub fn log(level: Level, message: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    // A message without arguments needs no formatting.
    let owned;
    let text = match message.as_str() {
        Some(s) => s,
        None => {
            owned = message.to_string();
            &owned
        }
    };
    // SAFETY: pointer and length describe a live &str.
    let _ = unsafe { proxy_log(level as u32, text.as_ptr(), text.len()) };
}

/// The host's wall clock.
pub fn now() -> SystemTime {
    let mut ns: u64 = 0;
    // SAFETY: `ns` is a valid out-pointer.
    match status(unsafe { proxy_get_current_time_nanoseconds(&mut ns) }) {
        Ok(()) => UNIX_EPOCH + Duration::from_nanos(ns),
        Err(_) => UNIX_EPOCH,
    }
}

/// Milliseconds since 1970 by the host clock.
pub fn now_ms() -> u64 {
    now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn set_tick_period(period: Duration) -> Result<(), HostError> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain integer argument.
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

fn get_buffer(buffer_type: u32, max: usize) -> Result<Vec<u8>, HostError> {
    let mut ptr = null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers are valid; the returned buffer is taken by `take`.
    let code = unsafe { proxy_get_buffer_bytes(buffer_type, 0, max, &mut ptr, &mut size) };
    match code {
        STATUS_OK => Ok(take(ptr, size)),
        // Envoy answers NotFound for an empty buffer, Kong may too: both mean "no bytes".
        STATUS_NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// The plugin configuration (the policy document).
pub fn plugin_configuration() -> Result<Vec<u8>, HostError> {
    get_buffer(BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
}

/// The VM configuration (Envoy `vm_config.configuration`), read in `proxy_on_vm_start`;
/// empty when none is set.
pub fn vm_configuration() -> Result<Vec<u8>, HostError> {
    get_buffer(BUFFER_VM_CONFIGURATION, usize::MAX)
}

/// The body of an HTTP callout's response, at most `max` bytes.
pub fn http_call_response_body(max: usize) -> Result<Vec<u8>, HostError> {
    get_buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, max)
}

fn get_map(map_type: u32) -> Result<Vec<(String, String)>, HostError> {
    let mut ptr = null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers are valid; the returned buffer is taken by `take`.
    status(unsafe { proxy_get_header_map_pairs(map_type, &mut ptr, &mut size) })?;
    Ok(decode_pairs(&take(ptr, size)))
}

/// All request headers, pseudo-headers included: one boundary crossing per request.
pub fn request_headers() -> Result<Vec<(String, String)>, HostError> {
    get_map(MAP_HTTP_REQUEST_HEADERS)
}

/// One request header (the first value), `Ok(None)` when absent.
pub fn request_header(name: &str) -> Result<Option<String>, HostError> {
    header_value(MAP_HTTP_REQUEST_HEADERS, name)
}

/// One response header (the first value), `Ok(None)` when absent, in `on_response_headers`.
pub fn response_header(name: &str) -> Result<Option<String>, HostError> {
    header_value(MAP_HTTP_RESPONSE_HEADERS, name)
}

fn header_value(map: u32, name: &str) -> Result<Option<String>, HostError> {
    let mut ptr = null_mut();
    let mut size = 0usize;
    // SAFETY: pointers are valid; the returned buffer is taken by `take`.
    let code = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut ptr, &mut size) };
    match code {
        // Envoy answers Ok with no bytes for an absent header; Kong answers NotFound.
        STATUS_OK if ptr.is_null() => Ok(None),
        STATUS_OK => Ok(Some(String::from_utf8_lossy(&take(ptr, size)).into_owned())),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// The request body buffered so far (the first `size` bytes), in `proxy_on_request_body`. A
/// body the host cannot hand over (ngx_wasm_module: spilled to a temp file) reads as fewer bytes.
pub fn request_body(size: usize) -> Result<Vec<u8>, HostError> {
    get_buffer(BUFFER_HTTP_REQUEST_BODY, size)
}

/// The message of a gRPC callout's answer, in `proxy_on_grpc_receive`.
pub fn grpc_receive_buffer(size: usize) -> Result<Vec<u8>, HostError> {
    get_buffer(BUFFER_GRPC_RECEIVE, size)
}

/// Resumes the (paused) request of the effective context.
pub fn continue_request() -> Result<(), HostError> {
    // SAFETY: plain integer argument.
    status(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Makes `context_id` the context later host calls act on (a callout answer arrives on the root
/// context on ngx_wasm_module, where this call is a no-op that answers Ok).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain integer argument.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// The headers of an HTTP callout's response (`:status` included).
pub fn http_call_response_headers() -> Result<Vec<(String, String)>, HostError> {
    get_map(MAP_HTTP_CALL_RESPONSE_HEADERS)
}

/// Sets (replacing any value the client sent) a request header.
pub fn set_request_header(name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live strs.
    status(unsafe { proxy_replace_header_map_value(MAP_HTTP_REQUEST_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Sets (replacing any value the upstream sent) a response header, in `on_response_headers`.
pub fn set_response_header(name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live strs.
    status(unsafe { proxy_replace_header_map_value(MAP_HTTP_RESPONSE_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Removes every value of a request header. An absent header is not an error (Envoy answers
/// Ok, Kong may answer NotFound).
///
/// Why the extra step on ngx_wasm_module: it removes a request header by marking its entry
/// deleted (hash 0), which nginx's `proxy_pass` does not check: the header, value and all, still
/// reaches the upstream (seen on 3bed278 for `authorization` and custom headers). So a header
/// that is present is first emptied, then removed: the upstream gets it with an empty value, never
/// the token or a client's forged claim header.
pub fn remove_request_header(name: &str) -> Result<(), HostError> {
    if host_kind() == HostKind::NgxWasmModule && request_header(name)?.is_some() {
        set_request_header(name, "")?;
    }
    // SAFETY: pointer and length describe a live str.
    match unsafe { proxy_remove_header_map_value(MAP_HTTP_REQUEST_HEADERS, name.as_ptr(), name.len()) } {
        STATUS_OK | STATUS_NOT_FOUND => Ok(()),
        other => Err(HostError(other)),
    }
}

/// A property such as `source.address`; `Ok(None)` when the host has none.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    property_encoded(&encode_path(path))
}

/// `source.address` as the ABI encodes property paths (NUL-separated segments), built once.
pub const SOURCE_ADDRESS: &[u8] = b"source\0address";

/// A property by its encoded path (see [`SOURCE_ADDRESS`]): no allocation for the path.
pub fn property_encoded(encoded: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let mut ptr = null_mut();
    let mut size = 0usize;
    // SAFETY: pointers are valid; the returned buffer is taken by `take`.
    let code = unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut ptr, &mut size) };
    match code {
        STATUS_OK => Ok(Some(take(ptr, size))),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// The proxy the module runs in, where that changes what the glue must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Envoy (and Istio), or any host that keeps the last good configuration when
    /// `on_configure` returns false.
    Envoy,
    /// Kong's ngx_wasm_module: a refused `on_configure` kills the nginx workers.
    NgxWasmModule,
}

/// Which host this is, asked of a root context (`on_vm_start`, `on_configure`).
///
/// Why this probe: ngx_wasm_module answers `plugin_root_id` with `"0"` in a root context, while
/// Envoy answers the configured `root_id` (ours: `gatewarden_<filter>`; Istio: the plugin
/// name; empty when unset). Other probes are unsafe there: asking ngx_wasm_module for
/// `plugin_name` or `plugin_vm_id` in a root context crashes the worker (seen on 3bed278), and
/// a dotted property logs an error. A user who sets Envoy's `root_id` to "0" makes Envoy look
/// like ngx_wasm_module: refused policies then fail closed instead of keeping the last good one.
///
/// Probed once per VM, at the first call, which the glue makes in `proxy_on_vm_start` (a root
/// context, where the probe means what it says); later calls return that answer.
pub fn host_kind() -> HostKind {
    HOST_KIND.with(|kind| {
        *kind.get_or_init(|| match property(&["plugin_root_id"]) {
            Ok(Some(v)) if v == b"0" => HostKind::NgxWasmModule,
            _ => HostKind::Envoy,
        })
    })
}

thread_local! {
    static HOST_KIND: std::cell::OnceCell<HostKind> = const { std::cell::OnceCell::new() };
}

/// Answers the request locally.
pub fn send_local_response(status_code: u16, details: &str, headers: &[(&str, &str)], body: &str) -> Result<(), HostError> {
    let headers = encode_pairs(headers);
    // SAFETY: all pointers and lengths describe live buffers.
    status(unsafe {
        proxy_send_local_response(
            u32::from(status_code),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Shared data: the value and its CAS, `Ok(None)` when the key is absent.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let mut ptr = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    // SAFETY: out-pointers are valid; the returned buffer is taken by `take`.
    let code = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut size, &mut cas) };
    match code {
        STATUS_OK => Ok(Some((take(ptr, size), cas))),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Sets shared data if its CAS still is `cas`. Beware the host difference: with `cas == 0`
/// Envoy overwrites unconditionally, Kong succeeds only if the key is absent.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live buffers.
    status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Defines a counter and returns its id.
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: pointer and length describe a live str; `id` is a valid out-pointer.
    status(unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment(metric_id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: plain integer arguments.
    status(unsafe { proxy_increment_metric(metric_id, by) })
}

/// Starts an HTTP callout without a body; the response arrives in the root context's
/// `on_http_call_response`.
pub fn dispatch_http_call(upstream: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u32, HostError> {
    dispatch_http_call_with_body(upstream, headers, &[], timeout)
}

/// Starts an HTTP callout with a body; the answer arrives in `proxy_on_http_call_response`
/// with the returned token.
pub fn dispatch_http_call_with_body(upstream: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> Result<u32, HostError> {
    let headers = encode_pairs(headers);
    let trailers = encode_pairs(&[]);
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0u32;
    // SAFETY: all pointers and lengths describe live buffers; `token` is a valid out-pointer.
    status(unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            // No body: a null pointer, as before for a bodiless callout.
            if body.is_empty() { std::ptr::null() } else { body.as_ptr() },
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Starts a unary gRPC callout to cluster `upstream` (Envoy; ngx_wasm_module traps on it, so
/// never call it there); the answer arrives in `proxy_on_grpc_receive` / `proxy_on_grpc_close`.
pub fn dispatch_grpc_call(
    upstream: &str,
    service: &str,
    method: &str,
    metadata: &[(&str, &str)],
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    let metadata = encode_pairs(metadata);
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0u32;
    // SAFETY: all pointers and lengths describe live buffers; `token` is a valid out-pointer.
    status(unsafe {
        proxy_grpc_call(
            upstream.as_ptr(),
            upstream.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Decodes the ABI's header map format: u32 count, then (u32 key_len, u32 value_len) per pair,
/// then each key and value followed by a NUL. Malformed input yields the pairs read so far.
pub fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let read_u32 = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let Some(count) = read_u32(0) else { return Vec::new() };
    let mut pairs = Vec::with_capacity(count.min(256));
    let mut data = 4usize.saturating_add(count.saturating_mul(8));
    for i in 0..count {
        let at = i.saturating_mul(8).saturating_add(4);
        let (Some(klen), Some(vlen)) = (read_u32(at), read_u32(at.saturating_add(4))) else { break };
        let Some(key) = data.checked_add(klen).and_then(|end| bytes.get(data..end)) else { break };
        data = data.saturating_add(klen).saturating_add(1);
        let Some(value) = data.checked_add(vlen).and_then(|end| bytes.get(data..end)) else { break };
        data = data.saturating_add(vlen).saturating_add(1);
        pairs.push((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    pairs
}

fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn encode_path(path: &[&str]) -> Vec<u8> {
    // Property paths are NUL-separated segments.
    path.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_truncation_is_safe() {
        let encoded = encode_pairs(&[(":path", "/x"), ("a", "")]);
        assert_eq!(decode_pairs(&encoded), vec![(":path".into(), "/x".into()), ("a".into(), "".into())]);
        for cut in 0..encoded.len() {
            let _ = decode_pairs(&encoded[..cut]);
        }
        assert_eq!(encode_path(&["source", "address"]), SOURCE_ADDRESS);
        let mut huge = encode_pairs(&[("a", "b")]);
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge).len(), 0);
    }
}
