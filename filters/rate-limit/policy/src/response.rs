//! Response pieces: the 429 problem body (RFC 9457), `Retry-After`, the IETF rate-limit headers
//! (draft-ietf-httpapi-ratelimit-headers-10) and the legacy `X-RateLimit-*` headers. Pure
//! functions returning header lists (lowercase names, as both hosts send them).
//!
//! The IETF fields are Structured Field lists (RFC 9651), one member per limit of the rule:
//! - `ratelimit-policy: "per-second";q=10;w=1, "hourly";q=1000;w=3600`: each limit's name as
//!   an sf-string, `q` its quota (`rate`) and `w` its window (the period, seconds).
//! - `ratelimit: "per-second";r=4;t=1, "hourly";r=990;t=36`: `r` the units left now (0 to
//!   `burst`), `t` the seconds until the bucket is full again (rounded up).
//!
//! The legacy headers describe the most constraining limit (fewest units left):
//! `x-ratelimit-limit` (its rate), `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds).

use crate::config::HeaderStyle;
use crate::gcra::{Limit, US_PER_SECOND};

/// The problem type of RFC 9457's registry for an exceeded quota.
pub const QUOTA_EXCEEDED_TYPE: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
/// Its registered title.
pub const QUOTA_EXCEEDED_TITLE: &str = "Request cannot be satisfied as assigned quota has been exceeded";
/// The media type of the 429 body.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The body when no policy names are known (the `Denial`'s fixed body).
pub const LIMITED_BODY: &str = r#"{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Request cannot be satisfied as assigned quota has been exceeded","status":429}"#;

/// One limit's state for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus<'a> {
    pub name: &'a str,
    pub limit: &'a Limit,
    /// Units left now.
    pub remaining: u64,
    /// µs until the bucket is full.
    pub reset_us: u64,
}

/// Whole seconds, rounded up.
pub fn ceil_seconds(us: u64) -> u64 {
    us.div_ceil(US_PER_SECOND)
}

/// The 429 body: the quota-exceeded problem with the names of the limits that denied.
pub fn problem_body(violated: &[&str]) -> String {
    serde_json::json!({
        "type": QUOTA_EXCEEDED_TYPE,
        "title": QUOTA_EXCEEDED_TITLE,
        "status": 429,
        "violated-policies": violated,
    })
    .to_string()
}

/// `retry-after` in whole seconds, at least 1.
pub fn retry_after(us: u64) -> (String, String) {
    ("retry-after".to_owned(), ceil_seconds(us).max(1).to_string())
}

/// An sf-string (the names are validated to need no escape; escaping kept for safety).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The rate-limit headers of `style` for the limits of one rule.
pub fn rate_limit_headers(style: HeaderStyle, limits: &[LimitStatus<'_>]) -> Vec<(String, String)> {
    if style == HeaderStyle::None || limits.is_empty() {
        return Vec::new();
    }
    let join = |f: &dyn Fn(&LimitStatus<'_>) -> String| limits.iter().map(f).collect::<Vec<_>>().join(", ");
    let mut out = vec![
        ("ratelimit-policy".to_owned(), join(&|l| format!("{};q={};w={}", sf_string(l.name), l.limit.rate, l.limit.period_seconds))),
        ("ratelimit".to_owned(), join(&|l| format!("{};r={};t={}", sf_string(l.name), l.remaining, ceil_seconds(l.reset_us)))),
    ];
    if style == HeaderStyle::IetfAndLegacy {
        if let Some(l) = limits.iter().min_by_key(|l| l.remaining) {
            out.push(("x-ratelimit-limit".to_owned(), l.limit.rate.to_string()));
            out.push(("x-ratelimit-remaining".to_owned(), l.remaining.to_string()));
            out.push(("x-ratelimit-reset".to_owned(), ceil_seconds(l.reset_us).to_string()));
        }
    }
    out
}
