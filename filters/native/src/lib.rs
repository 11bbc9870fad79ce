//! Gatewarden's four filters as one native Envoy dynamic module, `libgatewarden.so`: the same
//! policy crates as the `.wasm` modules, served by the native runtime (`gatewarden_native`).
//! Envoy's `filter_name` selects the filter; its `filter_config` is the policy document.
//!
//! One shared object for the four filters (not one each): Envoy loads a module once per process
//! (`dlopen`), so the four share one copy of the common code and the allocator, and one artifact
//! is pinned to the Envoy version; a filter costs nothing until a configuration names it.
//!
//! Each filter's adapter is the native twin of its Wasm crate's `Enforcer`: the same policy calls
//! and the same outcome; what differs is where state lives (process-wide, shared by workers:
//! the rate limiter's key table; per worker: JWT's verified-token cache) and that remote
//! resources (geo database, remote JWKS, fetched OpenAPI documents) and fleet limits are not
//! loaded by this module yet: a policy that needs one is refused at configure time.

/// mimalloc for the module's own allocations (see Cargo.toml): every request allocates a few
/// times (its filter, strings of the outcome), and glibc's malloc and free cost ~240
/// instructions a pair under Envoy's workers.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// mimalloc as Rust's allocator: its plain entry points for the alignments every block has
/// (8 bytes), its aligned ones above (the `mimalloc` crate calls the aligned ones always: ~2×
/// the instructions).
struct MiMalloc;

/// Every mimalloc block is aligned to 8 bytes at least.
const MI_MIN_ALIGN: usize = 8;

// SAFETY: mimalloc returns blocks of at least the size asked, aligned as asked (the plain entry
// points only for alignments every block has), and frees or resizes only its own blocks.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: plain calls into mimalloc.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                libmimalloc_sys::mi_malloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                libmimalloc_sys::mi_zalloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`'s alignment.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

mod ip_geo;
mod jwt;
mod rate_limit;
mod validate;

gatewarden_native::export_native!(
    "ip_geo" => ip_geo::IpGeo,
    "jwt" => jwt::Jwt,
    "rate_limit" => rate_limit::RateLimit,
    "validate" => validate::Validate,
);
