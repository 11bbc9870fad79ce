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
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
