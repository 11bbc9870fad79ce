//! Request matching for rules: path (prefix / exact / regex), methods, hosts and headers.
//!
//! Semantics follow Envoy's route matching: `path_prefix` is a plain string prefix (`/admin`
//! matches `/administrator`; write `/admin/` to avoid that), `path_regex` must match the whole
//! path, the query string is never part of the path. All conditions of a `match` must hold; an
//! empty `match` matches every request. Host names compare case-insensitively without port;
//! `*.example.com` matches any subdomain, `*` any host.

use regex_lite::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{quote, ConfigError, FieldPath};
use crate::request::facts::{HeaderNeeds, RequestFacts};

/// Longest regex source we accept; regex-lite matches in linear time, this bounds compile cost.
const MAX_REGEX_LEN: usize = 1024;

/// The `match` block of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The path starts with this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The path equals this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// The whole path matches this regular expression (regex-lite syntax, linear time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// The method is one of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The host (without port) is one of these; `*.example.com` and `*` are wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Every one of these header conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

/// One header condition. Give exactly one of `present`, `exact`, `prefix`, `regex`
/// (none means `present: true`); `invert` negates the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    /// Header name (case-insensitive).
    pub name: String,
    /// `true`: the header is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// The header's value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The header's value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The header's whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Negate the condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Present(bool),
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    name: String,
    value: ValueMatch,
    invert: bool,
}

/// A compiled `match` block.
#[derive(Debug, Clone)]
pub struct RequestMatcher {
    path: PathMatch,
    methods: Vec<String>,
    hosts: Vec<HostPattern>,
    headers: Vec<HeaderMatch>,
}

impl RequestMatcher {
    /// Compiles `spec`, found at `path` in the document.
    pub fn compile(spec: &MatchSpec, path: &FieldPath) -> Result<Self, ConfigError> {
        let given = [spec.path_prefix.is_some(), spec.path_exact.is_some(), spec.path_regex.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(path.error("give at most one of path_prefix, path_exact, path_regex"));
        }
        let path_match = if let Some(p) = &spec.path_prefix {
            PathMatch::Prefix(check_path(p, &path.field("path_prefix"))?)
        } else if let Some(p) = &spec.path_exact {
            PathMatch::Exact(check_path(p, &path.field("path_exact"))?)
        } else if let Some(r) = &spec.path_regex {
            PathMatch::Regex(compile_regex(r, &path.field("path_regex"))?)
        } else {
            PathMatch::Any
        };

        let mut methods = Vec::with_capacity(spec.methods.len());
        for (i, m) in spec.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') {
                return Err(path.field("methods").index(i).error(format!("invalid method {}", quote(m))));
            }
            methods.push(m.to_ascii_uppercase());
        }

        let mut hosts = Vec::with_capacity(spec.hosts.len());
        for (i, h) in spec.hosts.iter().enumerate() {
            hosts.push(compile_host(h, &path.field("hosts").index(i))?);
        }

        let mut headers = Vec::with_capacity(spec.headers.len());
        for (i, h) in spec.headers.iter().enumerate() {
            headers.push(compile_header(h, &path.field("headers").index(i))?);
        }

        Ok(Self { path: path_match, methods, hosts, headers })
    }

    /// Adds the headers `matches` reads.
    pub fn add_needs(&self, needs: &mut HeaderNeeds) {
        if !matches!(self.path, PathMatch::Any) {
            needs.add(":path");
        }
        if !self.methods.is_empty() {
            needs.add(":method");
        }
        if !self.hosts.is_empty() {
            needs.add(":authority");
        }
        for h in &self.headers {
            needs.add(&h.name);
        }
    }

    /// Whether every condition holds for `facts`.
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => facts.path().starts_with(p.as_str()),
            PathMatch::Exact(p) => facts.path() == p,
            PathMatch::Regex(r) => r.is_match(facts.path()),
        };
        if !path_ok {
            return false;
        }
        if !self.methods.is_empty() {
            let method = facts.method();
            if !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                return false;
            }
        }
        if !self.hosts.is_empty() {
            let host = facts.host();
            if !self.hosts.iter().any(|p| host_matches(p, host)) {
                return false;
            }
        }
        self.headers.iter().all(|h| header_matches(h, facts))
    }
}

fn check_path(p: &str, path: &FieldPath) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(path.error(format!("path must start with \"/\", got {}", quote(p))));
    }
    Ok(p.to_owned())
}

fn compile_regex(source: &str, path: &FieldPath) -> Result<Regex, ConfigError> {
    if source.len() > MAX_REGEX_LEN {
        return Err(path.error(format!("regex longer than {MAX_REGEX_LEN} characters: {}", quote(source))));
    }
    // Anchored: like Envoy's safe_regex, the pattern must match the whole value.
    Regex::new(&format!("^(?:{source})$"))
        .map_err(|e| path.error(format!("invalid regex {}: {}", quote(source), first_line(&e.to_string()))))
}

fn first_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

fn compile_host(h: &str, path: &FieldPath) -> Result<HostPattern, ConfigError> {
    let lower = h.to_ascii_lowercase();
    let valid_name = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
    if lower == "*" {
        Ok(HostPattern::Any)
    } else if let Some(suffix) = lower.strip_prefix("*.") {
        if !valid_name(suffix) {
            return Err(path.error(format!("invalid host pattern {}", quote(h))));
        }
        Ok(HostPattern::Suffix(format!(".{suffix}")))
    } else if valid_name(&lower) {
        Ok(HostPattern::Exact(lower))
    } else {
        Err(path.error(format!("invalid host pattern {}: use a name, \"*.suffix\" or \"*\"", quote(h))))
    }
}

fn host_matches(p: &HostPattern, host: &str) -> bool {
    match p {
        HostPattern::Any => true,
        HostPattern::Exact(e) => host.eq_ignore_ascii_case(e),
        HostPattern::Suffix(s) => host.len() > s.len() && host.get(host.len() - s.len()..).is_some_and(|tail| tail.eq_ignore_ascii_case(s)),
    }
}

fn compile_header(h: &HeaderMatchSpec, path: &FieldPath) -> Result<HeaderMatch, ConfigError> {
    let name_ok = !h.name.is_empty() && h.name.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if !name_ok {
        return Err(path.field("name").error(format!("invalid header name {}", quote(&h.name))));
    }
    let given = [h.present.is_some(), h.exact.is_some(), h.prefix.is_some(), h.regex.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(path.error("give at most one of present, exact, prefix, regex"));
    }
    let value = if let Some(e) = &h.exact {
        ValueMatch::Exact(e.clone())
    } else if let Some(p) = &h.prefix {
        ValueMatch::Prefix(p.clone())
    } else if let Some(r) = &h.regex {
        ValueMatch::Regex(compile_regex(r, &path.field("regex"))?)
    } else {
        ValueMatch::Present(h.present.unwrap_or(true))
    };
    Ok(HeaderMatch { name: h.name.to_ascii_lowercase(), value, invert: h.invert })
}

fn header_matches(h: &HeaderMatch, facts: &RequestFacts<'_>) -> bool {
    let value = facts.header(&h.name);
    let hit = match (&h.value, value) {
        (ValueMatch::Present(want), v) => v.is_some() == *want,
        (_, None) => false,
        (ValueMatch::Exact(e), Some(v)) => v == e,
        (ValueMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
        (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
    };
    hit != h.invert
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> MatchSpec {
        serde_json::from_str(json).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn matches(m: &str, req: &[(&str, &str)]) -> bool {
        let m = RequestMatcher::compile(&spec(m), &FieldPath::root().field("match")).unwrap();
        let h = headers(req);
        m.matches(&RequestFacts::new(&h, None))
    }

    #[test]
    fn table_of_matches() {
        let get = |path: &'static str| vec![(":method", "GET"), (":path", path), (":authority", "api.example.com:8080")];
        let cases: Vec<(&str, Vec<(&str, &str)>, bool)> = vec![
            (r#"{}"#, get("/anything"), true),
            (r#"{"path_prefix":"/admin"}"#, get("/admin/users?x=1"), true),
            (r#"{"path_prefix":"/admin"}"#, get("/administrator"), true),
            (r#"{"path_prefix":"/admin/"}"#, get("/administrator"), false),
            (r#"{"path_exact":"/login"}"#, get("/login?next=/"), true),
            (r#"{"path_exact":"/login"}"#, get("/login/"), false),
            (r#"{"path_regex":"/v[0-9]+/users"}"#, get("/v2/users"), true),
            (r#"{"path_regex":"/v[0-9]+/users"}"#, get("/v2/users/7"), false),
            (r#"{"methods":["post","PUT"]}"#, get("/"), false),
            (r#"{"methods":["get"]}"#, get("/"), true),
            (r#"{"hosts":["api.example.com"]}"#, get("/"), true),
            (r#"{"hosts":["*.example.com"]}"#, get("/"), true),
            (r#"{"hosts":["*.api.example.com"]}"#, get("/"), false),
            (r#"{"hosts":["other.com","*"]}"#, get("/"), true),
            (r#"{"headers":[{"name":"x-tenant-id","exact":"acme"}]}"#, [get("/"), vec![("x-tenant-id", "acme")]].concat(), true),
            (r#"{"headers":[{"name":"X-Tenant-Id","exact":"acme"}]}"#, [get("/"), vec![("x-tenant-id", "acme2")]].concat(), false),
            (r#"{"headers":[{"name":"x-tenant-id"}]}"#, get("/"), false),
            (r#"{"headers":[{"name":"x-tenant-id","present":false}]}"#, get("/"), true),
            (r#"{"headers":[{"name":"x-tenant-id","prefix":"ac"}]}"#, [get("/"), vec![("x-tenant-id", "acme")]].concat(), true),
            (r#"{"headers":[{"name":"x-tenant-id","regex":"a.*e"}]}"#, [get("/"), vec![("x-tenant-id", "acme")]].concat(), true),
            (
                r#"{"headers":[{"name":"x-tenant-id","regex":"a.*e","invert":true}]}"#,
                [get("/"), vec![("x-tenant-id", "acme")]].concat(),
                false,
            ),
        ];
        for (m, req, want) in cases {
            assert_eq!(matches(m, &req), want, "match {m} on {req:?}");
        }
    }

    #[test]
    fn config_errors_name_the_field_and_quote_the_value() {
        let cases = [
            (r#"{"path_regex":"("}"#, "match.path_regex: invalid regex \"(\""),
            (r#"{"path_prefix":"admin"}"#, "match.path_prefix: path must start with \"/\", got \"admin\""),
            (r#"{"path_prefix":"/a","path_exact":"/b"}"#, "match: give at most one of path_prefix, path_exact, path_regex"),
            (r#"{"methods":["GET","P OST"]}"#, "match.methods[1]: invalid method \"P OST\""),
            (r#"{"hosts":["bad host"]}"#, "match.hosts[0]: invalid host pattern \"bad host\""),
            (
                r#"{"headers":[{"name":"x","exact":"a","prefix":"b"}]}"#,
                "match.headers[0]: give at most one of present, exact, prefix, regex",
            ),
            (r#"{"headers":[{"name":"x","regex":"[z"}]}"#, "match.headers[0].regex: invalid regex \"[z\""),
        ];
        for (m, want) in cases {
            let err = RequestMatcher::compile(&spec(m), &FieldPath::root().field("match")).unwrap_err().to_string();
            assert!(err.starts_with(want), "config {m}: expected error starting {want:?}, got {err:?}");
        }
    }
}
