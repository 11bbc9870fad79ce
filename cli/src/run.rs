//! One request through a built filter module in the Wasm test host: the engine of
//! `gatewarden test` and `gatewarden eval`.
//!
//! Each request gets a fresh host and VM (cases never see each other's state): the policy is
//! configured exactly as a proxy would pass it, the callouts the filter makes after accepting it
//! (geo database, JWKS) are answered from fixtures, then the request runs and what the client,
//! the upstream and the log saw is collected as an [`Actual`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use gatewarden_wasm_host::{Host, HttpResponse, LogLevel, Module, Outcome, Profile, Request, VmOptions};
use serde::{Deserialize, Serialize};

use crate::policy_file::Filter;
use crate::timefmt;

/// The host's clock when neither the file nor the case sets one: 2026-01-01T00:00:00Z.
pub const DEFAULT_TIME: u64 = gatewarden_wasm_host::DEFAULT_TIME_UNIX_SECONDS;

/// Rounds of tick + deliver after configuring, for the fetches that start after `on_configure`.
const WARMUP_ROUNDS: usize = 10;

/// A time in a test file: `2026-01-01T00:00:00Z` or Unix seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeSpec {
    Secs(u64),
    Text(String),
}

impl TimeSpec {
    pub fn secs(&self) -> Result<u64, String> {
        match self {
            TimeSpec::Secs(s) => Ok(*s),
            TimeSpec::Text(t) => timefmt::parse(t),
        }
    }
}

/// One header value or several (repeated header).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// The request of a case (or of `eval`), as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path with query string; default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// `:authority`; default `example.com`.
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// The peer address `ip:port` (or an IP: port 40000 is added); default `192.0.2.10:40000`.
    #[serde(default)]
    pub peer: Option<String>,
    /// The body: text as written, or any other YAML/JSON value (a mapping, a list, a number),
    /// sent as its compact JSON. `content-length` is added as an HTTP/1.1 client sends it, unless
    /// `headers` has `content-length` or `transfer-encoding` (then the body goes as written, e.g.
    /// chunked without a length); `content-type` is never added.
    #[serde(default)]
    pub body: Option<BodySpec>,
    /// Instead of `body`: a body of this many bytes (`x` repeated, at most 64 MiB), e.g. to pass
    /// a `max_body_bytes`.
    #[serde(default)]
    pub body_size: Option<usize>,
    /// Envoy profile: the body reaches the filter in chunks of this many bytes (default 1024).
    /// Kong's engine hands the whole body over in one call.
    #[serde(default)]
    pub body_chunk_size: Option<usize>,
    /// Kong profile: nginx spilled the body to a temp file (a body larger than
    /// `client_body_buffer_size`): the filter learns its size but cannot read it.
    #[serde(default)]
    pub body_spilled: bool,
    /// The host's clock during this request (overrides the file's `time`).
    #[serde(default)]
    pub time: Option<TimeSpec>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: default_method(),
            path: default_path(),
            authority: None,
            headers: BTreeMap::new(),
            peer: None,
            body: None,
            body_size: None,
            body_chunk_size: None,
            body_spilled: false,
            time: None,
        }
    }
}

/// A request body as written: text, or a value sent as compact JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BodySpec {
    Text(String),
    Json(serde_json::Value),
}

/// The most bytes `body_size` may ask for.
pub const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;

impl RequestSpec {
    /// The body bytes the client sends (`None`: no body), or why the spec is wrong.
    pub fn body_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        match (&self.body, self.body_size) {
            (Some(_), Some(_)) => Err("request: body and body_size are exclusive".into()),
            (Some(BodySpec::Text(t)), None) => Ok(Some(t.clone().into_bytes())),
            (Some(BodySpec::Json(v)), None) => serde_json::to_vec(v).map(Some).map_err(|e| format!("request.body: {e}")),
            (None, Some(n)) if n > MAX_BODY_SIZE => Err(format!("request.body_size: {n} is more than {MAX_BODY_SIZE}")),
            (None, Some(n)) => Ok(Some(vec![b'x'; n])),
            (None, None) => Ok(None),
        }
    }
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

/// The default peer address.
pub const DEFAULT_PEER: &str = "192.0.2.10:40000";

/// A scripted answer to the filter's `dispatch_http_call`s to `upstream` + `path`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureSpec {
    /// The callout target: an Envoy cluster name (or `host:port` with `profile: kong`).
    pub upstream: String,
    /// The request path to answer (`*`: any); default `*`.
    #[serde(default = "any_path")]
    pub path: String,
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body text.
    #[serde(default)]
    pub body: Option<String>,
    /// Body from a file, relative to the file that names it.
    #[serde(default)]
    pub file: Option<String>,
    /// Answer with a failed call (connection failure) instead of a response.
    #[serde(default)]
    pub fail: bool,
}

fn any_path() -> String {
    "*".into()
}
fn ok_status() -> u16 {
    200
}

/// A fixture ready to script: `response` `None` is a failed call.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub upstream: String,
    pub path: String,
    pub response: Option<HttpResponse>,
}

impl FixtureSpec {
    /// Reads the body file (relative to `base`).
    pub fn resolve(&self, base: &Path) -> Result<Fixture, String> {
        let response = if self.fail {
            None
        } else {
            let body = match (&self.body, &self.file) {
                (Some(_), Some(_)) => return Err(format!("fixture {}{}: body and file are exclusive", self.upstream, self.path)),
                (Some(b), None) => b.clone().into_bytes(),
                (None, Some(f)) => {
                    let p = base.join(f);
                    std::fs::read(&p).map_err(|e| format!("fixture file {}: {e}", p.display()))?
                }
                (None, None) => Vec::new(),
            };
            let mut r = HttpResponse::new(self.status).body(body);
            for (k, v) in &self.headers {
                r = r.header(k, v);
            }
            Some(r)
        };
        Ok(Fixture { upstream: self.upstream.clone(), path: self.path.clone(), response })
    }
}

/// A test file's or eval's `profile`: the host the Wasm host plays (default envoy).
pub fn parse_profile(name: Option<&str>) -> Result<Profile, String> {
    match name {
        None | Some("envoy") => Ok(Profile::Envoy),
        Some("kong") => Ok(Profile::Kong),
        Some(other) => Err(format!("profile: {other:?} is not envoy or kong")),
    }
}

/// Where and how a request runs.
pub struct Setup<'a> {
    pub module: &'a Module,
    pub filter: Filter,
    /// The policy JSON the proxy passes to `on_configure`.
    pub policy_json: &'a str,
    pub fixtures: &'a [Fixture],
    pub profile: Profile,
    /// Unix seconds.
    pub time: u64,
}

/// What happened to a request, as the client, the upstream and the log saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Actual {
    #[serde(skip)]
    pub status: u16,
    /// `allow`, `deny`, `dry_run_deny` (from the decision log line), or `error` (the filter failed).
    #[serde(skip)]
    pub decision: String,
    #[serde(skip)]
    pub reason: Option<String>,
    #[serde(skip)]
    pub rule: Option<String>,
    /// Request headers the upstream received that the client did not send (or with another value).
    pub upstream_headers: BTreeMap<String, String>,
    /// Request headers the client sent that the upstream did not receive.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed_headers: Vec<String>,
    /// Response headers the client received.
    pub response_headers: BTreeMap<String, String>,
    /// The body of a local response (a denial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The decision log line (JSON), when the filter wrote one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<serde_json::Value>,
    /// Why the filter did not run normally (trap, failed VM, refused config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Warnings and errors the module logged during the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Every request header the upstream received (`None`: the request did not reach it).
    #[serde(skip)]
    pub upstream_received: Option<BTreeMap<String, String>>,
}

/// Splits `ip:port`, `[v6]:port` or a bare IP into a peer address the host accepts.
fn peer_address(peer: &str) -> String {
    let looks_bare = peer.parse::<std::net::IpAddr>().is_ok();
    if looks_bare {
        if peer.contains(':') {
            format!("[{peer}]:40000")
        } else {
            format!("{peer}:40000")
        }
    } else {
        peer.to_string()
    }
}

/// The request as the host runs it, and the headers the module first saw (for the diff).
fn build_request(spec: &RequestSpec, body: Option<&[u8]>) -> (Request, Vec<(String, String)>) {
    let mut r = Request::new(&spec.method, &spec.path).source(&peer_address(spec.peer.as_deref().unwrap_or(DEFAULT_PEER)));
    if let Some(a) = &spec.authority {
        r = r.authority(a);
    }
    let mut sent = vec![
        (":method".to_string(), r.method.clone()),
        (":path".to_string(), r.path.clone()),
        (":authority".to_string(), r.authority.clone()),
        (":scheme".to_string(), r.scheme.clone()),
    ];
    for (name, values) in &spec.headers {
        let name = name.to_ascii_lowercase();
        let values = match values {
            HeaderValues::One(v) => vec![v.clone()],
            HeaderValues::Many(v) => v.clone(),
        };
        for v in values {
            r = r.header(&name, &v);
            sent.push((name.clone(), v));
        }
    }
    if let Some(b) = body {
        // What an HTTP/1.1 client sends with a body, unless the case says how it is framed.
        let framed = spec.headers.keys().any(|k| k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding"));
        if !framed {
            let length = b.len().to_string();
            r = r.header("content-length", &length);
            sent.push(("content-length".to_string(), length));
        }
        r = r.body(b.to_vec());
    }
    if let Some(size) = spec.body_chunk_size {
        r = r.chunked(size);
    }
    if spec.body_spilled {
        r = r.spilled();
    }
    (r, sent)
}

/// Joins repeated headers with `,` (as the upstream would see them folded).
fn folded(headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        out.entry(k.to_ascii_lowercase())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    out
}

/// The JSON decision line in a log message (`{"gatewarden":"decision",...}`), if any.
fn decision_line(message: &str) -> Option<serde_json::Value> {
    let start = message.find("{\"gatewarden\"")?;
    serde_json::from_str(message.get(start..)?).ok()
}

/// The most requests one case may send (`repeat`): a test, not a load generator.
pub const MAX_REPEAT: u32 = 100_000;

/// Runs `spec` through a fresh VM of `setup.module` configured with the policy.
/// `Err` when the request could not run at all (the module failed to start or refused the policy).
pub fn run_request(setup: &Setup<'_>, spec: &RequestSpec) -> Result<Actual, String> {
    let mut all = run_requests(setup, spec, 1, Duration::ZERO)?;
    all.pop().ok_or_else(|| "no request ran".to_string())
}

/// Runs `spec` `times` times, one after the other, through **one** fresh VM (the state a filter
/// keeps between requests, such as rate-limit buckets in shared data, carries over); the host's
/// clock starts at `setup.time` and advances by `every` before each later request. What each
/// request met, in order.
pub fn run_requests(setup: &Setup<'_>, spec: &RequestSpec, times: u32, every: Duration) -> Result<Vec<Actual>, String> {
    if times == 0 || times > MAX_REPEAT {
        return Err(format!("repeat: {times} is not between 1 and {MAX_REPEAT}"));
    }
    let body = spec.body_bytes()?;
    let host = Host::new(setup.profile);
    host.set_log_level(LogLevel::Info);
    host.set_time(UNIX_EPOCH + Duration::from_secs(setup.time));
    for f in setup.fixtures {
        if setup.profile == Profile::Envoy {
            host.add_cluster(&f.upstream);
        }
        match &f.response {
            Some(r) => host.script_http_response(&f.upstream, &f.path, r.clone()),
            None => host.script_http_failure(&f.upstream, &f.path),
        }
    }
    let id = setup.filter.root_id();
    let mut vm = host.load_vm(setup.module, VmOptions::new(&id).vm_id(&id)).map_err(|e| format!("module: {e}"))?;
    let accepted = vm.configure(setup.policy_json.as_bytes()).map_err(|e| format!("on_configure: {e}"))?;
    if !accepted {
        let why: Vec<String> = host.logs_at_least(LogLevel::Warn).into_iter().map(|l| l.message).collect();
        return Err(format!("the module refused the policy: {}", why.join("; ")));
    }
    for _ in 0..WARMUP_ROUNDS {
        host.tick().map_err(|e| format!("on_tick: {e}"))?;
        let delivered = host.deliver_pending_calls().map_err(|e| format!("callout: {e}"))?;
        if delivered.is_empty() {
            break;
        }
    }
    let start = UNIX_EPOCH + Duration::from_secs(setup.time);
    let mut out = Vec::new();
    for i in 0..times {
        host.set_time(start + every.saturating_mul(i));
        host.clear_logs();
        let (request, sent) = build_request(spec, body.as_deref());
        let outcome = vm.http_request(request).map_err(|e| format!("request {}: {e}", i + 1))?;
        let logs = host.logs();
        let log = logs.iter().rev().find_map(|l| decision_line(&l.message));
        let warnings =
            logs.iter().filter(|l| l.level >= LogLevel::Warn && decision_line(&l.message).is_none()).map(|l| l.message.clone()).collect();
        out.push(actual(setup.filter, &outcome, &sent, log, warnings));
    }
    Ok(out)
}

fn actual(filter: Filter, out: &Outcome, sent: &[(String, String)], log: Option<serde_json::Value>, warnings: Vec<String>) -> Actual {
    let field = |k: &str| log.as_ref().and_then(|l| l.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    let sent = folded(sent);
    let mut a = Actual { status: out.status, log: log.clone(), warnings, ..Actual::default() };
    if let Some(up) = &out.upstream_request {
        let received = folded(&up.headers);
        a.upstream_headers = received.iter().filter(|(k, v)| sent.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        a.removed_headers = sent.keys().filter(|k| !received.contains_key(*k)).cloned().collect();
        a.upstream_received = Some(received);
    }
    a.response_headers = folded(&out.response_headers);
    if let Some(local) = &out.local_response {
        a.body = Some(String::from_utf8_lossy(&local.body).into_owned());
    }
    a.failure = out.failure.as_ref().map(|f| format!("{f:?}"));
    a.decision = match (&a.failure, field("decision")) {
        (Some(_), _) => "error".into(),
        (None, Some(d)) => d,
        (None, None) if out.local_response.is_some() => "deny".into(),
        (None, None) => "allow".into(),
    };
    a.reason = field("reason");
    a.rule = field("rule").or_else(|| {
        // An allowed request names its rule in the decision header: `allow; rule=R; version=V`.
        let header = a.upstream_headers.get(&filter.decision_header())?;
        header.split("; ").find_map(|part| part.strip_prefix("rule=")).map(str::to_string)
    });
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_ips_get_a_port() {
        assert_eq!(peer_address("203.0.113.5"), "203.0.113.5:40000");
        assert_eq!(peer_address("2001:db8::1"), "[2001:db8::1]:40000");
        assert_eq!(peer_address("203.0.113.5:1234"), "203.0.113.5:1234");
        assert_eq!(peer_address("[2001:db8::1]:1"), "[2001:db8::1]:1");
    }

    #[test]
    fn a_body_is_text_a_json_value_or_a_size() {
        let spec = |yaml: &str| serde_norway::from_str::<RequestSpec>(yaml).map_err(|e| e.to_string()).and_then(|r| r.body_bytes());
        assert_eq!(spec("body: 'not {json'\n"), Ok(Some(b"not {json".to_vec())));
        assert_eq!(spec("body: { name: Rex, tags: [a, 1] }\n"), Ok(Some(br#"{"name":"Rex","tags":["a",1]}"#.to_vec())));
        assert_eq!(spec("body: [1, 2]\n"), Ok(Some(b"[1,2]".to_vec())));
        assert_eq!(spec("body: 42\n"), Ok(Some(b"42".to_vec())));
        assert_eq!(spec("body_size: 3\n"), Ok(Some(b"xxx".to_vec())));
        assert_eq!(spec("path: /\n"), Ok(None));
        assert_eq!(spec("body: a\nbody_size: 3\n"), Err("request: body and body_size are exclusive".to_string()));
        assert_eq!(spec("body_size: 67108865\n"), Err("request.body_size: 67108865 is more than 67108864".to_string()));
    }

    #[test]
    fn a_body_gets_a_content_length_unless_the_case_frames_it() {
        let length = |yaml: &str| {
            let spec: RequestSpec = serde_norway::from_str(yaml).unwrap_or_default();
            let body = spec.body_bytes().unwrap_or_default();
            let (r, sent) = build_request(&spec, body.as_deref());
            let sent_length = sent.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.clone());
            let host_length = r.headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.clone());
            assert_eq!(sent_length, host_length, "{yaml}");
            host_length
        };
        assert_eq!(length("body: { a: 1 }\n"), Some("7".into()));
        assert_eq!(length("body_size: 20000\n"), Some("20000".into()));
        assert_eq!(length("path: /\n"), None);
        assert_eq!(length("body: abc\nheaders: { transfer-encoding: chunked }\n"), None);
        assert_eq!(length("body: abc\nheaders: { Content-Length: '99' }\n"), Some("99".into()));
    }

    #[test]
    fn decision_line_is_found_after_a_prefix() {
        let v = decision_line(r#"gatewarden_ip_geo: {"gatewarden":"decision","reason":"ip_denied"}"#);
        assert_eq!(v.and_then(|v| v["reason"].as_str().map(str::to_string)).as_deref(), Some("ip_denied"));
        assert!(decision_line("just text").is_none());
    }

    #[test]
    fn headers_added_changed_and_removed_are_told_apart() {
        let out = Outcome {
            status: 200,
            local_response: None,
            upstream_request: Some(gatewarden_wasm_host::UpstreamRequest {
                headers: vec![
                    (":path".into(), "/a".into()),
                    ("x-user".into(), "u1".into()),
                    ("x-gatewarden-jwt".into(), "allow; rule=api; version=v1".into()),
                    ("x-keep".into(), "new".into()),
                ],
                body: None,
                trailers: vec![],
            }),
            response_headers: vec![],
            response_body: vec![],
            paused: None,
            failure: None,
            context_id: 2,
        };
        let sent = vec![
            (":path".to_string(), "/a".to_string()),
            ("x-keep".to_string(), "old".to_string()),
            ("authorization".to_string(), "Bearer t".to_string()),
        ];
        let a = actual(Filter::Jwt, &out, &sent, None, vec![]);
        assert_eq!(a.decision, "allow");
        assert_eq!(a.rule.as_deref(), Some("api"));
        assert_eq!(a.upstream_headers.get("x-user").map(String::as_str), Some("u1"));
        assert_eq!(a.upstream_headers.get("x-keep").map(String::as_str), Some("new"));
        assert!(!a.upstream_headers.contains_key(":path"));
        assert_eq!(a.removed_headers, vec!["authorization".to_string()]);
    }
}
