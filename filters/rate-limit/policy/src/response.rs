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

use std::fmt::Write as _;

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

/// The 429 body: the quota-exceeded problem with the names of the limits that denied. Written
/// directly (members in the order a JSON object with sorted keys prints them): it is built on
/// every denial, and a `serde_json::Value` cost ~9,000 instructions.
pub fn problem_body(violated: &[&str]) -> String {
    let mut out = String::with_capacity(LIMITED_BODY.len() + 24 + violated.iter().map(|n| n.len() + 3).sum::<usize>());
    out.push_str(r#"{"status":429,"title":""#);
    out.push_str(QUOTA_EXCEEDED_TITLE);
    out.push_str(r#"","type":""#);
    out.push_str(QUOTA_EXCEEDED_TYPE);
    out.push_str(r#"","violated-policies":["#);
    for (i, name) in violated.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
    }
    out.push_str("]}");
    out
}

/// `s` as a JSON string (the names are validated to need no escape; escaping kept for safety).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `retry-after` in whole seconds, at least 1.
pub fn retry_after(us: u64) -> (String, String) {
    ("retry-after".to_owned(), ceil_seconds(us).max(1).to_string())
}

/// `s` as an sf-string (the names are validated to need no escape; escaping kept for safety).
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The rate-limit headers of `style` for the limits of one rule.
pub fn rate_limit_headers(style: HeaderStyle, limits: &[LimitStatus<'_>]) -> Vec<(String, String)> {
    if style == HeaderStyle::None || limits.is_empty() {
        return Vec::new();
    }
    // One buffer per header, the members written into it (no string per member, no join).
    let capacity = limits.iter().map(|l| l.name.len() + 24).sum::<usize>();
    let (mut policy, mut state) = (String::with_capacity(capacity), String::with_capacity(capacity));
    for (i, l) in limits.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        push_sf_string(&mut policy, l.name);
        let _ = write!(policy, ";q={};w={}", l.limit.rate, l.limit.period_seconds);
        push_sf_string(&mut state, l.name);
        let _ = write!(state, ";r={};t={}", l.remaining, ceil_seconds(l.reset_us));
    }
    let mut out = Vec::with_capacity(if style == HeaderStyle::IetfAndLegacy { 5 } else { 2 });
    out.push(("ratelimit-policy".to_owned(), policy));
    out.push(("ratelimit".to_owned(), state));
    if style == HeaderStyle::IetfAndLegacy {
        if let Some(l) = limits.iter().min_by_key(|l| l.remaining) {
            out.push(("x-ratelimit-limit".to_owned(), l.limit.rate.to_string()));
            out.push(("x-ratelimit-remaining".to_owned(), l.remaining.to_string()));
            out.push(("x-ratelimit-reset".to_owned(), ceil_seconds(l.reset_us).to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_problem_body_is_the_json_of_the_problem_with_sorted_members() {
        for violated in [vec![], vec!["per-second"], vec!["a", "b.c:d/e_f"], vec!["odd\"name\\\u{1}"]] {
            let want = serde_json::json!({
                "type": QUOTA_EXCEEDED_TYPE,
                "title": QUOTA_EXCEEDED_TITLE,
                "status": 429,
                "violated-policies": violated,
            });
            let body = problem_body(&violated);
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            assert_eq!(parsed, want, "{body}");
            assert!(body.starts_with(r#"{"status":429,"title":"#), "sorted members: {body}");
        }
        assert_eq!(
            problem_body(&["ten"]),
            r#"{"status":429,"title":"Request cannot be satisfied as assigned quota has been exceeded","type":"https://iana.org/assignments/http-problem-types#quota-exceeded","violated-policies":["ten"]}"#
        );
    }
}
