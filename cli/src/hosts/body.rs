//! What a host must buffer for the validation filter: the largest request body its policy
//! reads, and the host settings that follow from it.
//!
//! - nginx / Kong (ngx_wasm_module): the filter gets a body only if nginx kept it in memory; a
//!   body larger than `client_body_buffer_size` goes to a temp file and cannot be read, and a
//!   `content-length` over `client_max_body_size` is answered by nginx itself (413, its own page)
//!   before any filter runs. So `client_body_buffer_size` ≥ the largest `max_body_bytes`, and
//!   `client_max_body_size` ≥ it (we never lower nginx's default 1m).
//! - Envoy: a body the filter waits for is buffered in the stream, up to the listener's
//!   `per_connection_buffer_limit_bytes` (default 1 MiB). Past it Envoy answers 413 itself (its
//!   own body, counted `body_too_large` by the glue), so a body between the limit and
//!   `max_body_bytes` is refused, never validated (measured on Envoy 1.40 with max_body_bytes 4 MiB:
//!   a 1,048,576-byte body validated, 1,049,000 bytes Envoy's 413). With max_body_bytes at most the limit the filter refuses
//!   larger bodies itself (413) before Envoy's limit is reached. The ECDS resource cannot set the
//!   listener's limit, so `render` warns instead.

use gatewarden_validate_policy::DEFAULT_MAX_BODY_BYTES;
use serde_json::Value;

use crate::policy_file::{Filter, LoadedPolicy};

/// Envoy's default `per_connection_buffer_limit_bytes` (listener and cluster): 1 MiB.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: u64 = 1024 * 1024;
/// nginx's default `client_max_body_size`: 1m.
pub const NGINX_DEFAULT_MAX_BODY_SIZE: u64 = 1024 * 1024;

/// The largest `max_body_bytes` of the rules of a validation policy that read bodies (a
/// `body_schema` or an `openapi` document; in `rules`, `default` and the rollout candidate; a rule
/// without `max_body_bytes` reads up to the default, 512 KiB). `None` for other filters and for
/// a policy that reads no body.
pub fn largest_body(policy: &LoadedPolicy) -> Option<u64> {
    if policy.filter != Filter::Validate {
        return None;
    }
    let doc: Value = serde_json::from_str(&policy.json).ok()?;
    let candidate = doc.get("rollout").and_then(|r| r.get("candidate"));
    [Some(&doc), candidate]
        .into_iter()
        .flatten()
        .flat_map(|p| p.get("rules").and_then(Value::as_array).into_iter().flatten().chain(p.get("default")))
        .filter(|rule| rule.get("body_schema").is_some() || rule.get("openapi").is_some())
        .map(|rule| rule.get("max_body_bytes").and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_BODY_BYTES))
        .max()
}

/// The nginx directives (with their comment) for a location running the validation filter of
/// `policy`; empty for other filters.
pub fn nginx_directives(policy: &LoadedPolicy) -> String {
    let Some(n) = largest_body(policy) else { return String::new() };
    let max_size = n.max(NGINX_DEFAULT_MAX_BODY_SIZE);
    format!(
        "# The validation filter reads request bodies of up to {n} bytes (the policy's largest\n\
         # max_body_bytes). ngx_wasm_module hands it only a body nginx kept in memory: a body larger\n\
         # than client_body_buffer_size goes to a temp file the filter cannot read. A content-length\n\
         # over client_max_body_size gets nginx's own 413 page before the filter runs (not counted by\n\
         # it). Keep a larger client_max_body_size if the location takes bigger bodies the policy does\n\
         # not read; nginx refuses a directive given twice in one location.\n\
         client_body_buffer_size {n};\n\
         client_max_body_size {max_size};\n"
    )
}

/// Kong's kong.conf settings for the validation filter of `policy` (comment lines); empty for
/// other filters.
pub fn kong_note(policy: &LoadedPolicy) -> String {
    let Some(n) = largest_body(policy) else { return String::new() };
    format!(
        "# The validation filter reads request bodies of up to {n} bytes: in kong.conf set\n\
         #   nginx_http_client_body_buffer_size = {n}   # Kong's default 8k: a larger body goes to a temp\n\
         #                                              # file the filter cannot read\n\
         #   nginx_http_client_max_body_size = 0 or at least {n}   # Kong's default 0 (no limit)\n"
    )
}

/// The warning for Envoy targets when the policy may buffer more than Envoy's default limit.
pub fn envoy_warning(policy: &LoadedPolicy) -> Option<String> {
    let n = largest_body(policy)?;
    (n > ENVOY_DEFAULT_BUFFER_LIMIT).then(|| {
        format!(
            "gatewarden: warning: the policy reads request bodies of up to {n} bytes: Envoy buffers a body the filter \
             waits for up to the listener's per_connection_buffer_limit_bytes (default {ENVOY_DEFAULT_BUFFER_LIMIT}), and \
             a larger one ends in a 503 instead of being validated; set per_connection_buffer_limit_bytes on the listener \
             to at least {n} (docs/filters/validate.md)"
        )
    })
}
