//! A test-only filter that waits: it proves the glue's request pipeline (`gatewarden_glue::pipeline`)
//! on the Wasm test host and on the real hosts. Not a product: its decisions are made up.
//!
//! ```json
//! {"policy_version": "1", "failure_mode": "deny",
//!  "rules": [{"name": "body", "match": {"path_prefix": "/body"}, "body": {"max_bytes": 64}},
//!            {"name": "http", "match": {"path_prefix": "/http"},
//!             "http": {"upstream": "authz", "path": "/check", "timeout_ms": 500}},
//!            {"name": "grpc", "match": {"path_prefix": "/grpc"},
//!             "grpc": {"upstream": "authz_grpc", "service": "test.Authz", "method": "Check"}}]}
//! ```
//! A rule's steps run in order: `body` (read it; "deny" in it denies 403 `body_denied`; past
//! `max_bytes` denies 413 `body_too_large`), then `http` (POST the body, or the request path when
//! no body was read; answer 200 allows, 403 or "deny" in the answer denies `callout_denied`, any
//! other status or no answer goes by `failure_mode`), then `grpc` (the same bytes as the message;
//! status 0 allows and echoes the answer in `x-pipeline-grpc`, "deny" in it denies `grpc_denied`,
//! another status or no answer goes by `failure_mode`). An allowed request carries
//! `x-pipeline: body=<bytes>;http=<status>;grpc=<bytes>` upstream. `failure_mode: allow` lets a
//! failed step through with `x-pipeline-failure: <reason>`. A request whose body was read
//! carries none of these headers: its headers went on before the body (see the glue's
//! `pipeline::Step`).

use std::sync::Arc;
use std::time::Duration;

use gatewarden_glue::pipeline::{Callout, GrpcCallout, HostCaps, HttpCallout, Pending, Resumed, Step};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_policy::decision::{FORBIDDEN_BODY, UNAVAILABLE_BODY};
use gatewarden_policy::document::Header;
use gatewarden_policy::error::FieldPath;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::rules::{RuleSet, RuleSpec};
use gatewarden_policy::{ConfigError, Decision, Denial, FailureMode, FilterPolicy, RequestFacts};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const TOO_LARGE_BODY: &str = r#"{"error":"payload_too_large","message":"request body too large"}"#;

policy_document! {
    /// The test pipeline filter's policy document.
    pub struct PipelineDocument for PipelineRule {}
}

/// One rule: the steps it waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcStep>,
    /// Test only: set `x-pipeline` even after the body (the glue must refuse that decision).
    #[serde(default)]
    pub always_set_header: bool,
}

impl RuleSpec for PipelineRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matcher(&self) -> Option<&MatchSpec> {
        self.matcher.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyStep {
    pub max_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// Envoy cluster, or `host:port` on Kong.
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    pub path: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcStep {
    /// Envoy cluster (gRPC has no Kong form).
    pub upstream: String,
    pub service: String,
    pub method: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_max_response() -> usize {
    4096
}

/// A compiled rule's steps, with the field path of its `grpc` (for `check_host`).
#[derive(Debug)]
pub struct Steps {
    body: Option<BodyStep>,
    http: Option<HttpStep>,
    grpc: Option<(GrpcStep, String)>,
    always_set_header: bool,
}

pub struct PipelinePolicy {
    header: Header,
    rules: RuleSet<Arc<Steps>>,
}

impl FilterPolicy for PipelinePolicy {
    const NAME: &'static str = "test_pipeline";
    type Document = PipelineDocument;

    fn compile(doc: PipelineDocument) -> Result<Self, ConfigError> {
        let header = Header::compile(&doc, Self::NAME)?;
        let rules = RuleSet::compile(&doc.rules, &doc.default, |rule, path: &FieldPath| {
            if let Some(b) = &rule.body {
                if b.max_bytes == 0 {
                    return Err(path.field("body").field("max_bytes").error("must be at least 1"));
                }
            }
            let grpc = rule.grpc.clone().map(|g| (g, path.field("grpc").as_str().to_owned()));
            Ok(Arc::new(Steps { body: rule.body.clone(), http: rule.http.clone(), grpc, always_set_header: rule.always_set_header }))
        })?;
        Ok(Self { header, rules })
    }

    fn header(&self) -> &Header {
        &self.header
    }
}

/// Denial reasons (counters `gatewarden_test_pipeline_denied_<reason>`).
const REASONS: &[&str] =
    &["body_denied", "body_too_large", "body_unavailable", "callout_denied", "callout_failed", "grpc_denied", "grpc_failed"];

/// What a request carries while it waits.
struct Progress {
    rule: Arc<str>,
    steps: Arc<Steps>,
    stage: Stage,
    /// The bytes sent to the services: the body when read, else the request path.
    payload: Vec<u8>,
    body_len: Option<usize>,
    http_status: Option<u16>,
    /// The request headers went on to let a body come: the decision may not change them.
    headers_gone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Body,
    Http,
    Grpc,
}

struct PipelineFilter;

impl Enforcer for PipelineFilter {
    type Policy = PipelinePolicy;
    type PolicyState = ();
    const WAITS: bool = true;

    fn reasons() -> Vec<&'static str> {
        REASONS.to_vec()
    }

    fn new(_root_context_id: u32) -> Self {
        PipelineFilter
    }

    fn on_policy(&mut self, _policy: &PipelinePolicy) -> Option<Duration> {
        None
    }

    fn header_needs(policy: &PipelinePolicy) -> HeaderNeeds {
        let mut needs = HeaderNeeds::default();
        needs.add(":path");
        policy.rules.add_needs(&mut needs);
        needs
    }

    fn policy_state(_policy: &PipelinePolicy) {}

    fn check_host(policy: &PipelinePolicy, host: &HostCaps) -> Result<(), String> {
        for rule in policy.rules.iter() {
            if let (Some((_, path)), false) = (&rule.action.grpc, host.grpc) {
                return Err(format!("{path}: gRPC callouts are not available on {}", host.name));
            }
        }
        Ok(())
    }

    fn decide(policy: &PipelinePolicy, _state: &(), facts: &RequestFacts<'_>) -> Outcome {
        let rule = policy.rules.select(facts);
        Outcome::new(Decision::allow(&rule.name), None, String::new())
    }

    fn start(policy: &PipelinePolicy, _state: &(), facts: &RequestFacts<'_>) -> Step {
        let rule = policy.rules.select(facts);
        let progress = Progress {
            rule: Arc::clone(&rule.name),
            steps: Arc::clone(&rule.action),
            stage: Stage::Body,
            payload: facts.path().as_bytes().to_vec(),
            body_len: None,
            http_status: None,
            headers_gone: false,
        };
        next(policy, progress)
    }

    fn resume(policy: &PipelinePolicy, _state: &(), pending: Pending, input: Resumed<'_>) -> Step {
        let Some(mut p) = pending.into_inner::<Progress>() else {
            return Step::Unavailable("test_pipeline: pending state of another type");
        };
        let failure_mode = policy.header.failure_mode;
        match (p.stage, input) {
            (Stage::Body, Resumed::NoBody) => {
                p.body_len = Some(0);
                p.stage = Stage::Http;
                next(policy, p)
            }
            (Stage::Body, Resumed::Body(body)) => {
                p.headers_gone = true;
                if contains(body, b"deny") {
                    return Step::Done(deny(&p.rule, 403, FORBIDDEN_BODY, "body_denied"));
                }
                p.payload = body.to_vec();
                p.body_len = Some(body.len());
                p.stage = Stage::Http;
                next(policy, p)
            }
            (Stage::Body, Resumed::BodyTooLarge { seen }) => {
                Step::Done(deny(&p.rule, 413, TOO_LARGE_BODY, "body_too_large").detail(format!("seen={seen}")))
            }
            (Stage::Body, Resumed::BodyUnavailable) => {
                p.headers_gone = true;
                failed(failure_mode, p, 503, "body_unavailable")
            }
            (Stage::Http, Resumed::Http { status, body, .. }) => {
                if status == 403 || (status == 200 && contains(body, b"deny")) {
                    return Step::Done(deny(&p.rule, 403, FORBIDDEN_BODY, "callout_denied"));
                }
                if status != 200 {
                    return failed(failure_mode, p, 503, "callout_failed");
                }
                p.http_status = Some(status);
                p.stage = Stage::Grpc;
                next(policy, p)
            }
            (Stage::Http, Resumed::Failed(_)) => failed(failure_mode, p, 503, "callout_failed"),
            (Stage::Grpc, Resumed::Grpc { status: 0, message }) => {
                if contains(message, b"deny") {
                    return Step::Done(deny(&p.rule, 403, FORBIDDEN_BODY, "grpc_denied"));
                }
                let mut eval = allow(&p, &summary(&p, Some(message.len())), None);
                if !p.headers_gone {
                    eval.set_headers.push(("x-pipeline-grpc".to_owned(), String::from_utf8_lossy(message).into_owned()));
                }
                Step::Done(eval)
            }
            (Stage::Grpc, Resumed::Grpc { .. }) => failed(failure_mode, p, 503, "grpc_failed"),
            (Stage::Grpc, Resumed::Failed(_)) => failed(failure_mode, p, 503, "grpc_failed"),
            // An answer that does not fit the stage: a glue bug, fail closed.
            _ => Step::Unavailable("test_pipeline: resumed with an input its stage does not expect"),
        }
    }
}

/// The next step from `p.stage` on, skipping steps the rule does not have.
fn next(_policy: &PipelinePolicy, mut p: Progress) -> Step {
    loop {
        match p.stage {
            Stage::Body => match &p.steps.body {
                Some(b) => return Step::NeedBody { max_bytes: b.max_bytes, pending: Pending::new(p) },
                None => p.stage = Stage::Http,
            },
            Stage::Http => match p.steps.http.clone() {
                Some(h) => {
                    let headers = vec![
                        (":method".to_owned(), "POST".to_owned()),
                        (":path".to_owned(), h.path.clone()),
                        (":authority".to_owned(), h.authority.clone().unwrap_or_else(|| h.upstream.clone())),
                        ("content-type".to_owned(), "application/octet-stream".to_owned()),
                    ];
                    let call = Callout::Http(HttpCallout {
                        upstream: h.upstream,
                        headers,
                        body: p.payload.clone(),
                        timeout: Duration::from_millis(h.timeout_ms),
                        max_response_bytes: h.max_response_bytes,
                    });
                    return Step::Call { call, pending: Pending::new(p) };
                }
                None => p.stage = Stage::Grpc,
            },
            Stage::Grpc => match p.steps.grpc.clone() {
                Some((g, _)) => {
                    let call = Callout::Grpc(GrpcCallout {
                        upstream: g.upstream,
                        service: g.service,
                        method: g.method,
                        metadata: vec![("x-pipeline-test".to_owned(), "1".to_owned())],
                        message: p.payload.clone(),
                        timeout: Duration::from_millis(g.timeout_ms),
                        max_response_bytes: g.max_response_bytes,
                    });
                    return Step::Call { call, pending: Pending::new(p) };
                }
                None => return Step::Done(allow(&p, &summary(&p, None), None)),
            },
        }
    }
}

fn summary(p: &Progress, grpc: Option<usize>) -> String {
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    format!(
        "body={};http={};grpc={}",
        show(p.body_len.map(|n| n.to_string())),
        show(p.http_status.map(|s| s.to_string())),
        show(grpc.map(|n| n.to_string()))
    )
}

/// Allows; the request carries `x-pipeline: <summary>` (and `x-pipeline-failure`) upstream
/// unless its headers went on before the body (then no header can change: see the glue's
/// `pipeline::Step`).
fn allow(p: &Progress, summary: &str, failure: Option<&str>) -> Outcome {
    let mut eval = Outcome::new(Decision::allow(&p.rule), None, String::new());
    if p.headers_gone && !p.steps.always_set_header {
        return eval;
    }
    if !summary.is_empty() {
        eval.set_headers.push(("x-pipeline".to_owned(), summary.to_owned()));
    }
    if let Some(f) = failure {
        eval.set_headers.push(("x-pipeline-failure".to_owned(), f.to_owned()));
    }
    eval
}

trait Detail {
    fn detail(self, detail: String) -> Self;
}

impl Detail for Outcome {
    fn detail(mut self, detail: String) -> Self {
        self.detail = detail;
        self
    }
}

fn deny(rule: &Arc<str>, status: u16, body: &'static str, reason: &'static str) -> Outcome {
    Outcome::new(Decision::deny(rule, Denial { status, body, reason }), None, String::new())
}

/// A step that failed: denied (503) or let through, by the policy's `failure_mode`.
fn failed(mode: FailureMode, p: Progress, status: u16, reason: &'static str) -> Step {
    match mode {
        FailureMode::Deny => Step::Done(deny(&p.rule, status, UNAVAILABLE_BODY, reason)),
        FailureMode::Allow => Step::Done(allow(&p, &summary(&p, None), Some(reason))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

export_filter!(PipelineFilter, waits);

/// For the Wasm-host tests: requests parked, callout tokens pending and abandoned tokens
/// remembered in this VM, as `parked << 20 | tokens << 10 | abandoned` (each at most 1023).
#[no_mangle]
pub extern "C" fn gatewarden_test_waiting() -> u32 {
    gatewarden_runtime(|rt| {
        let (parked, tokens, abandoned) = rt.waiting_counts();
        let field = |n: usize| u32::try_from(n).unwrap_or(1023).min(1023);
        (field(parked) << 20) | (field(tokens) << 10) | field(abandoned)
    })
    .unwrap_or(u32::MAX)
}
