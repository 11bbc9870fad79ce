//! Safe wrappers of the callbacks in [`crate::abi`]: every `unsafe` block of the runtime is here.
//!
//! A [`Stream`] is valid for the event hook it was made in (Envoy's filter pointer lives until
//! `on_http_filter_destroy`; buffers Envoy returns live until the hook returns, so every wrapper
//! copies what it reads). A [`ConfigHandle`] is valid for the life of the filter configuration.

use std::fmt;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer, ModuleHttpHeader};

/// Log levels of `envoy_dynamic_module_callback_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl Level {
    fn abi(self) -> u32 {
        match self {
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
            Level::Critical => abi::LOG_CRITICAL,
        }
    }
}

/// Logs under Envoy's `dynamic_modules` logger; the message is formatted only when the level is on.
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if !log_enabled(level) {
        return;
    }
    let message = args.to_string();
    // SAFETY: the buffer points into `message`, alive for the call.
    unsafe { abi::envoy_dynamic_module_callback_log(level.abi(), ModuleBuffer::of(message.as_bytes())) }
}

/// Whether Envoy logs `level` (`dynamic_modules` logger): what only a log line needs is not
/// computed otherwise.
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: plain value argument; callable from any thread.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(level.abi()) }
}

/// The number of worker threads (main thread only: at configuration time).
pub fn concurrency() -> u32 {
    // SAFETY: no arguments; called from `on_http_filter_config_new`, on the main thread.
    unsafe { abi::envoy_dynamic_module_callback_get_concurrency() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Replaces `out` with `bytes` as text (invalid UTF-8 replaced), keeping `out`'s capacity.
fn copy_text(out: &mut String, bytes: &[u8]) {
    out.clear();
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// An Envoy filter configuration (`DynamicModuleHttpFilterConfig`).
#[derive(Debug, Clone, Copy)]
pub struct ConfigHandle(pub(crate) abi::ConfigEnvoyPtr);

// SAFETY: the handle is an opaque pointer Envoy owns for the configuration's life; the callbacks
// made with it (counters, callouts, scheduler) are the ones Envoy allows from the main thread or
// (scheduler commit) from any thread.
unsafe impl Send for ConfigHandle {}
unsafe impl Sync for ConfigHandle {}

impl ConfigHandle {
    /// The handle of the configuration Envoy passed to `on_http_filter_config_new`.
    pub fn from_raw(ptr: abi::ConfigEnvoyPtr) -> Self {
        Self(ptr)
    }

    /// Defines counter `name`; its id, or None when Envoy refused it.
    pub fn define_counter(self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: the name buffer is alive for the call; no labels; `id` is a valid out pointer.
        let status = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null(),
                0,
                &mut id,
            )
        };
        (status == abi::METRICS_SUCCESS).then_some(id)
    }

    /// Adds `value` to counter `id` outside a request (configuration, fetches).
    pub fn increment_counter(self, id: usize, value: u64) {
        // SAFETY: id came from `define_counter` on this configuration; no labels.
        let _ = unsafe { abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(self.0, id, std::ptr::null(), 0, value) };
    }

    /// Starts an HTTP call from the configuration (main thread); its id, or None when refused.
    pub fn http_callout(self, cluster: &str, headers: &[(String, String)], body: &[u8], timeout_ms: u64) -> Result<u64, u32> {
        http_callout(abi::envoy_dynamic_module_callback_http_filter_config_http_callout, self.0, cluster, headers, body, timeout_ms)
    }

    /// A scheduler that posts events to this configuration on the main thread, from any thread.
    pub fn scheduler(self) -> Option<Scheduler> {
        // SAFETY: called on the main thread with a live configuration.
        let ptr = unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }
}

/// A configuration scheduler (deleted when dropped).
#[derive(Debug)]
pub struct Scheduler(abi::SchedulerPtr);

// SAFETY: Envoy's configuration scheduler is made to be committed from any thread.
unsafe impl Send for Scheduler {}
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Runs `on_http_filter_config_scheduled(event_id)` on the main thread soon.
    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is alive until dropped.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new and deleted once, here.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// One HTTP stream's filter in Envoy (`DynamicModuleHttpFilter`), for the current event hook.
#[derive(Debug, Clone, Copy)]
pub struct Stream(pub(crate) abi::FilterEnvoyPtr);

/// Envoy's `set_header` and `add_header` callbacks.
type HeaderWrite = unsafe extern "C" fn(abi::FilterEnvoyPtr, u32, ModuleBuffer, ModuleBuffer) -> bool;

impl Stream {
    /// Calls `each` with every request header (name and value as Envoy holds them), in order, in
    /// one crossing; returns how many headers the request has, and false from `each` stops.
    ///
    /// # Safety
    /// The slices point into Envoy's header map: valid during this hook while the request
    /// headers are not changed.
    unsafe fn each_request_header<'a>(self, mut each: impl FnMut(&'a [u8], EnvoyBuffer) -> bool) -> usize {
        // SAFETY: a live filter pointer during its event hook.
        let n = unsafe { abi::envoy_dynamic_module_callback_http_get_headers_size(self.0, abi::HEADER_REQUEST) };
        // Up to 32 headers on the stack (most requests), more on the heap. The stack array is
        // left uninitialised (zeroing its 1 KB cost more than reading the headers): Envoy
        // writes the first `n` entries, and only those are read.
        let mut stack = std::mem::MaybeUninit::<[EnvoyHttpHeader; 32]>::uninit();
        let mut heap = Vec::new();
        let raw: *mut EnvoyHttpHeader = if n <= 32 {
            stack.as_mut_ptr().cast()
        } else {
            heap.resize(n, EnvoyHttpHeader::NULL);
            heap.as_mut_ptr()
        };
        // SAFETY: `raw` has room for the `n` headers Envoy just counted.
        if n == 0 || !unsafe { abi::envoy_dynamic_module_callback_http_get_headers(self.0, abi::HEADER_REQUEST, raw) } {
            return 0;
        }
        // SAFETY: Envoy filled the first `n` entries (it returned true).
        let filled = unsafe { std::slice::from_raw_parts(raw.cast_const(), n) };
        for h in filled {
            // SAFETY: Envoy filled each header with buffers valid per this function's contract.
            let k = unsafe { EnvoyBuffer { ptr: h.key_ptr, length: h.key_length }.bytes() };
            if !each(k, EnvoyBuffer { ptr: h.value_ptr, length: h.value_length }) {
                break;
            }
        }
        n
    }

    /// The request headers whose (lowercase) name `keep` accepts into `out`, in order, reusing
    /// its strings; returns how many headers the request has. One crossing for any number of
    /// names (a lookup by name is one crossing, and an allocation in Envoy, each), and only the
    /// kept ones are copied.
    pub fn fill_request_headers_where(self, out: &mut Vec<(String, String)>, keep: impl Fn(&[u8]) -> bool) -> usize {
        let mut kept = 0;
        let copy = |k: &[u8], value: EnvoyBuffer| {
            if keep(k) {
                // SAFETY: Envoy's buffer, copied at once, inside this hook, before any header changes.
                let v = unsafe { value.bytes() };
                match out.get_mut(kept) {
                    Some((key, value)) => {
                        copy_text(key, k);
                        copy_text(value, v);
                    }
                    None => out.push((text(k), text(v))),
                }
                kept += 1;
            }
            true
        };
        // SAFETY: the slices are copied at once (above).
        let n = unsafe { self.each_request_header(copy) };
        out.truncate(kept);
        n
    }

    /// The request headers whose (lowercase) name `keep` accepts, **borrowed** from Envoy's map,
    /// into `out`, in order (no copy: the request's own bytes); returns how many headers the
    /// request has, or None when a kept one is not UTF-8 (then read them with
    /// [`Self::fill_request_headers_where`], which replaces invalid bytes).
    ///
    /// # Safety
    /// The strings point into Envoy's header map: they must not be used after this hook returns
    /// or after the request headers are changed (set, add or remove), whichever comes first.
    pub unsafe fn borrow_request_headers_where<'a>(self, out: &mut Vec<(&'a str, &'a str)>, keep: impl Fn(&[u8]) -> bool) -> Option<usize> {
        out.clear();
        let mut utf8 = true;
        let borrow = |k: &'a [u8], value: EnvoyBuffer| {
            if keep(k) {
                // SAFETY: Envoy's buffer, valid per this function's contract (passed on to the caller).
                let v: &'a [u8] = unsafe { value.bytes() };
                match (std::str::from_utf8(k), std::str::from_utf8(v)) {
                    (Ok(k), Ok(v)) => out.push((k, v)),
                    _ => utf8 = false,
                }
            }
            utf8
        };
        // SAFETY: per this function's contract, passed on to the caller.
        let n = unsafe { self.each_request_header(borrow) };
        utf8.then_some(n)
    }

    /// Every value of request header `name` (lowercase).
    pub fn request_header_values(self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut count = 0usize;
        let mut index = 0usize;
        loop {
            let mut value = EnvoyBuffer::NULL;
            // SAFETY: the key buffer is alive for the call; `value` and `count` are valid out pointers.
            let found = unsafe {
                abi::envoy_dynamic_module_callback_http_get_header(
                    self.0,
                    abi::HEADER_REQUEST,
                    ModuleBuffer::of(name.as_bytes()),
                    &mut value,
                    index,
                    &mut count,
                )
            };
            if !found || index >= count || value.ptr.is_null() {
                return out;
            }
            // SAFETY: Envoy's buffer, valid until the hook returns; copied at once.
            out.push(text(unsafe { value.bytes() }));
            index += 1;
            if index >= count {
                // The first call said how many values there are: no call to learn there are no more.
                return out;
            }
        }
    }

    /// Sets request header `name` (replacing every value).
    pub fn set_request_header(self, name: &str, value: &str) -> bool {
        self.write_request_header(abi::envoy_dynamic_module_callback_http_set_header, name, value)
    }

    /// Adds a value of request header `name` (beside any it has: for a header the request is known
    /// not to carry, about a third of the instructions of [`Self::set_request_header`], which
    /// first looks for and removes the old values). An empty value is not added (false).
    pub fn add_request_header(self, name: &str, value: &str) -> bool {
        self.write_request_header(abi::envoy_dynamic_module_callback_http_add_header, name, value)
    }

    /// Calls Envoy's `set_header` or `add_header` (the same signature) on the request headers.
    fn write_request_header(self, call: HeaderWrite, name: &str, value: &str) -> bool {
        // SAFETY: both buffers are alive for the call; `call` is one of Envoy's header callbacks.
        unsafe { call(self.0, abi::HEADER_REQUEST, ModuleBuffer::of(name.as_bytes()), ModuleBuffer::of(value.as_bytes())) }
    }

    /// Removes every value of request header `name` (a null value removes).
    pub fn remove_request_header(self, name: &str) -> bool {
        // SAFETY: the key buffer is alive for the call; a null value means "remove".
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::HEADER_REQUEST,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NULL,
            )
        }
    }

    /// Sets response header `name` (in the response-headers hook).
    pub fn set_response_header(self, name: &str, value: &str) -> bool {
        // SAFETY: both buffers are alive for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::HEADER_RESPONSE,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// The response's `:status`, in the response-headers hook.
    pub fn response_status(self) -> Option<u16> {
        let values = {
            let mut value = EnvoyBuffer::NULL;
            // SAFETY: as in `request_header_values`, for the response map, first value only.
            let found = unsafe {
                abi::envoy_dynamic_module_callback_http_get_header(
                    self.0,
                    abi::HEADER_RESPONSE,
                    ModuleBuffer::of(b":status"),
                    &mut value,
                    0,
                    std::ptr::null_mut(),
                )
            };
            // SAFETY: Envoy's buffer, valid until the hook returns; copied at once.
            found.then(|| text(unsafe { value.bytes() }))
        };
        values.and_then(|v| v.parse().ok())
    }

    /// Sends a local response (the request goes no further).
    pub fn send_response(self, status: u16, headers: &[(&str, &str)], body: &str, details: &str) {
        let raw: Vec<ModuleHttpHeader> = headers.iter().map(|(k, v)| ModuleHttpHeader::of(k, v)).collect();
        // SAFETY: every buffer points into `headers`, `raw`, `body` or `details`, alive for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_ptr(),
                raw.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    fn body_chunks(self, body_type: u32, out: &mut Vec<u8>) {
        // SAFETY: a live filter pointer during a body hook.
        let n = unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body_type) };
        if n == 0 {
            return;
        }
        let mut raw = vec![EnvoyBuffer::NULL; n];
        // SAFETY: `raw` has room for the `n` chunks Envoy just counted.
        if unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks(self.0, body_type, raw.as_mut_ptr()) } {
            for chunk in raw {
                // SAFETY: Envoy's buffers, valid until the hook returns; copied at once.
                out.extend_from_slice(unsafe { chunk.bytes() });
            }
        }
    }

    /// The request body so far: what Envoy buffered for this filter, then the chunk of this hook.
    pub fn request_body(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.body_chunks(abi::BODY_BUFFERED_REQUEST, &mut out);
        self.body_chunks(abi::BODY_RECEIVED_REQUEST, &mut out);
        out
    }

    /// The size of the request body so far (buffered + this hook's chunk), without copying it.
    pub fn request_body_size(self) -> usize {
        let mut total = 0usize;
        for body_type in [abi::BODY_BUFFERED_REQUEST, abi::BODY_RECEIVED_REQUEST] {
            // SAFETY: a live filter pointer during a body hook.
            let n = unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body_type) };
            if n == 0 {
                continue;
            }
            let mut raw = vec![EnvoyBuffer::NULL; n];
            // SAFETY: `raw` has room for the `n` chunks Envoy just counted.
            if unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks(self.0, body_type, raw.as_mut_ptr()) } {
                total = raw.iter().fold(total, |t, c| t.saturating_add(c.length));
            }
        }
        total
    }

    /// The downstream peer, `ip:port` (attribute `source.address`).
    pub fn source_address(self) -> Option<String> {
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: `value` is a valid out pointer; the buffer is copied at once.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, abi::ATTRIBUTE_SOURCE_ADDRESS, &mut value)
        };
        // SAFETY: Envoy's buffer, valid until the hook returns.
        found.then(|| text(unsafe { value.bytes() })).filter(|s| !s.is_empty())
    }

    /// Resumes a request this filter stopped (after an asynchronous decision).
    pub fn continue_decoding(self) {
        // SAFETY: a live filter pointer (called from one of its event hooks).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// The index of the worker thread running this stream.
    pub fn worker_index(self) -> u32 {
        // SAFETY: a live filter pointer.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_get_worker_index(self.0) }
    }

    /// Adds `value` to counter `id` (defined on this stream's configuration).
    pub fn increment_counter(self, id: usize, value: u64) {
        // SAFETY: id came from `define_counter` on the configuration that made this stream.
        let _ = unsafe { abi::envoy_dynamic_module_callback_http_filter_increment_counter(self.0, id, std::ptr::null(), 0, value) };
    }

    /// Starts an HTTP call for this request; its id, or the init status Envoy refused it with.
    pub fn http_callout(self, cluster: &str, headers: &[(String, String)], body: &[u8], timeout_ms: u64) -> Result<u64, u32> {
        http_callout(abi::envoy_dynamic_module_callback_http_filter_http_callout, self.0, cluster, headers, body, timeout_ms)
    }
}

/// A configuration's or a stream's HTTP callout callback (the same signature).
type CalloutFn =
    unsafe extern "C" fn(*mut std::ffi::c_void, *mut u64, ModuleBuffer, *const ModuleHttpHeader, usize, ModuleBuffer, u64) -> u32;

/// Starts an HTTP call with `start` for `owner` (its configuration or stream pointer); its id, or
/// the init status Envoy refused it with.
fn http_callout(
    start: CalloutFn,
    owner: *mut std::ffi::c_void,
    cluster: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, u32> {
    let raw: Vec<ModuleHttpHeader> = headers.iter().map(|(k, v)| ModuleHttpHeader::of(k, v)).collect();
    let mut id = 0u64;
    // SAFETY: `owner` is live for the call (the caller's handle); every buffer points into
    // `headers`, `raw`, `cluster` or `body`, alive for the call.
    let status =
        unsafe { start(owner, &mut id, ModuleBuffer::of(cluster.as_bytes()), raw.as_ptr(), raw.len(), ModuleBuffer::of(body), timeout_ms) };
    if status == abi::CALLOUT_INIT_SUCCESS {
        Ok(id)
    } else {
        Err(status)
    }
}

/// Copies an HTTP answer Envoy hands to a callout-done hook.
///
/// # Safety
/// `headers`/`chunks` are Envoy's arrays of `headers_size`/`chunks_size` entries (or null), valid
/// for the current hook.
pub unsafe fn copy_answer(
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Vec<(String, String)>, Vec<u8>) {
    let mut out_headers = Vec::new();
    if !headers.is_null() {
        // SAFETY: per the function's contract.
        for h in unsafe { std::slice::from_raw_parts(headers, headers_size) } {
            // SAFETY: Envoy's buffers, valid for the hook.
            let (k, v) = unsafe {
                (
                    EnvoyBuffer { ptr: h.key_ptr, length: h.key_length }.bytes(),
                    EnvoyBuffer { ptr: h.value_ptr, length: h.value_length }.bytes(),
                )
            };
            out_headers.push((text(k), text(v)));
        }
    }
    let mut body = Vec::new();
    if !chunks.is_null() {
        // SAFETY: per the function's contract.
        for c in unsafe { std::slice::from_raw_parts(chunks, chunks_size) } {
            // SAFETY: Envoy's buffer, valid for the hook.
            body.extend_from_slice(unsafe { c.bytes() });
        }
    }
    (out_headers, body)
}
