//! Gatewarden's second host: Envoy's native dynamic modules (`envoy.filters.http.dynamic_modules`).
//!
//! The same filters as the Proxy-Wasm modules — the glue's [`gatewarden_glue::Enforcer`]s over the
//! same policy crates and the same [`gatewarden_glue::pipeline`] steps — driven by Envoy's C ABI
//! instead of Proxy-Wasm: [`abi`] (our declarations, pinned to Envoy 1.40.0), [`envoy`] (safe
//! wrappers: every `unsafe` call), [`runtime`] (configuration, decisions, body and callouts),
//! and the exported event hooks below. A module crate names its filters with [`export_native!`].
//!
//! Panics: the module is built with `panic = "abort"` (a panic across the C ABI would be
//! undefined behaviour); the workspace lints deny unwrap/expect/panic, and the hook logs a panic's
//! message at critical level before the abort, so an operator sees why Envoy stopped.

pub mod abi;
pub mod envoy;
pub mod remote;
pub mod runtime;

use std::ffi::c_char;

use abi::{ConfigEnvoyPtr, ConfigModulePtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, FilterModulePtr};
use envoy::{Level, Stream};

pub use runtime::{new_config, AnyConfig, NativeFilter};

/// Defines `envoy_dynamic_module_on_http_filter_config_new` for the filters of a module:
/// `export_native!("ip_geo" => IpGeo, "jwt" => Jwt);` — Envoy's `filter_name` picks the filter.
#[macro_export]
macro_rules! export_native {
    ($($name:literal => $filter:ty),* $(,)?) => {
        /// Envoy's `filter_name` selects the filter; `filter_config` is its policy document.
        ///
        /// # Safety
        /// Called by Envoy on the main thread with its own buffers.
        #[no_mangle]
        pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
            config_envoy: $crate::abi::ConfigEnvoyPtr,
            name: $crate::abi::EnvoyBuffer,
            config: $crate::abi::EnvoyBuffer,
        ) -> $crate::abi::ConfigModulePtr {
            $crate::install_panic_hook();
            // SAFETY: Envoy's buffers, valid during this hook.
            let (name, config) = unsafe { (name.bytes(), config.bytes()) };
            let handle = $crate::envoy::ConfigHandle::from_raw(config_envoy);
            match name {
                $(
                    n if n == $name.as_bytes() => match $crate::new_config::<$filter>(handle, config) {
                        Some(c) => $crate::runtime::config_into_raw(Box::new(c)),
                        None => std::ptr::null(),
                    },
                )*
                b"floor" => $crate::runtime::config_into_raw(Box::new($crate::runtime::Floor)),
                other => {
                    $crate::envoy::log(
                        $crate::envoy::Level::Error,
                        format_args!("gatewarden: unknown filter_name {:?} (this module serves: {})",
                            String::from_utf8_lossy(other), [$($name,)* "floor"].join(", ")),
                    );
                    std::ptr::null()
                }
            }
        }
    };
}

/// Logs a panic's message at critical level (the module then aborts: `panic = "abort"`).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            envoy::log(Level::Critical, format_args!("gatewarden (native module): panic: {info}"));
        }));
    });
}

/// The ABI version this module was written against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    abi::ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Envoy passes a pointer it got from `on_http_filter_config_new`, once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModulePtr) {
    // SAFETY: per the contract.
    unsafe { runtime::config_drop(config) }
}

/// # Safety
/// Envoy passes a live configuration pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(config: ConfigModulePtr, _filter: FilterEnvoyPtr) -> FilterModulePtr {
    // SAFETY: per the contract.
    match unsafe { runtime::config_ref(config) } {
        Some(c) => c.new_request(),
        None => std::ptr::null(),
    }
}

/// # Safety
/// Envoy passes a pointer it got from `on_http_filter_new`, once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    // SAFETY: per the contract.
    unsafe { runtime::request_drop(filter) }
}

/// # Safety
/// Envoy passes the stream's live pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy_filter: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: per the contract.
    match unsafe { runtime::request_ref(filter) } {
        Some(r) => r.on_request_headers(Stream(envoy_filter), end_of_stream),
        None => abi::HEADERS_CONTINUE,
    }
}

/// # Safety
/// Envoy passes the stream's live pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy_filter: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: per the contract.
    match unsafe { runtime::request_ref(filter) } {
        Some(r) => r.on_request_body(Stream(envoy_filter), end_of_stream),
        None => abi::BODY_CONTINUE,
    }
}

/// The stream ended: a request still waiting was abandoned by its client.
///
/// # Safety
/// Envoy passes the stream's live pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(envoy_filter: FilterEnvoyPtr, filter: FilterModulePtr) {
    // SAFETY: per the contract.
    if let Some(r) = unsafe { runtime::request_ref(filter) } {
        r.on_stream_complete(Stream(envoy_filter));
    }
}

/// Trailers end a request whose body a filter waits for: it is decided here.
///
/// # Safety
/// Envoy passes the stream's live pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy_filter: FilterEnvoyPtr,
    filter: FilterModulePtr,
) -> u32 {
    // SAFETY: per the contract.
    match unsafe { runtime::request_ref(filter) } {
        Some(r) => r.on_request_trailers(Stream(envoy_filter)),
        None => abi::TRAILERS_CONTINUE,
    }
}

/// # Safety
/// Envoy passes the stream's live pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy_filter: FilterEnvoyPtr,
    filter: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: per the contract.
    match unsafe { runtime::request_ref(filter) } {
        Some(r) => r.on_response_headers(Stream(envoy_filter)),
        None => abi::HEADERS_CONTINUE,
    }
}

/// # Safety
/// Envoy passes the stream's live pointers and its answer, valid during the hook.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy_filter: FilterEnvoyPtr,
    filter: FilterModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: per the contract.
    let Some(r) = (unsafe { runtime::request_ref(filter) }) else { return };
    // SAFETY: Envoy's arrays, valid during this hook.
    let (headers, body) = unsafe { envoy::copy_answer(headers, headers_size, chunks, chunks_size) };
    r.on_callout_done(Stream(envoy_filter), callout_id, result, &headers, &body);
}

/// The configuration's tick (its fetch ticker posted it), on the main thread.
///
/// # Safety
/// Envoy passes a live configuration pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    _event: u64,
) {
    // SAFETY: per the contract.
    if let Some(c) = unsafe { runtime::config_ref(config) } {
        c.on_scheduled(envoy::ConfigHandle::from_raw(config_envoy));
    }
}

/// A configuration callout (a fetch) finished, on the main thread.
///
/// # Safety
/// Envoy passes a live configuration pointer and its answer, valid during the hook.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: per the contract.
    let Some(c) = (unsafe { runtime::config_ref(config) }) else { return };
    // SAFETY: Envoy's arrays, valid during this hook.
    let (headers, body) = unsafe { envoy::copy_answer(headers, headers_size, chunks, chunks_size) };
    c.on_callout_done(callout_id, result == abi::CALLOUT_SUCCESS, &headers, &body);
}

// ---- Hooks Envoy resolves that Gatewarden does not use: they do nothing. ----

/// Per-route configuration is not used: policies are whole documents per filter configuration.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(_name: EnvoyBuffer, _config: EnvoyBuffer) -> ConfigModulePtr {
    std::ptr::null()
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: ConfigModulePtr) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_e: FilterEnvoyPtr, _f: FilterModulePtr, _eos: bool) -> u32 {
    abi::BODY_CONTINUE
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_e: FilterEnvoyPtr, _f: FilterModulePtr) -> u32 {
    abi::TRAILERS_CONTINUE
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _e: FilterEnvoyPtr,
    _f: FilterModulePtr,
    _id: u64,
    _h: *const EnvoyHttpHeader,
    _n: usize,
    _eos: bool,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _e: FilterEnvoyPtr,
    _f: FilterModulePtr,
    _id: u64,
    _d: *const EnvoyBuffer,
    _n: usize,
    _eos: bool,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _e: FilterEnvoyPtr,
    _f: FilterModulePtr,
    _id: u64,
    _h: *const EnvoyHttpHeader,
    _n: usize,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_e: FilterEnvoyPtr, _f: FilterModulePtr, _id: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_e: FilterEnvoyPtr, _f: FilterModulePtr, _id: u64, _reason: u32) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_e: FilterEnvoyPtr, _f: FilterModulePtr, _event: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _id: u64,
    _h: *const EnvoyHttpHeader,
    _n: usize,
    _eos: bool,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _id: u64,
    _d: *const EnvoyBuffer,
    _n: usize,
    _eos: bool,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _id: u64,
    _h: *const EnvoyHttpHeader,
    _n: usize,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(_c: ConfigEnvoyPtr, _m: ConfigModulePtr, _id: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _c: ConfigEnvoyPtr,
    _m: ConfigModulePtr,
    _id: u64,
    _reason: u32,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _e: FilterEnvoyPtr,
    _f: FilterModulePtr,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(_e: FilterEnvoyPtr, _f: FilterModulePtr) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _e: FilterEnvoyPtr,
    _f: FilterModulePtr,
    _status: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    abi::LOCAL_REPLY_CONTINUE
}
