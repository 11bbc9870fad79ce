//! The compiled validation policy and its decision (semantics in the crate docs).

use std::sync::Arc;

use serde_json::{json, Value};

use gatewarden_policy::decision::{Decision, Denial};
use gatewarden_policy::document::{FilterPolicy, Header};
use gatewarden_policy::error::{ConfigError, FieldPath};
use gatewarden_policy::facts::{HeaderNeeds, RequestFacts};
use gatewarden_policy::rules::RuleSet;

use crate::config::{ValidateDocument, ValidateRule};
use crate::openapi::{OpenApi, OpenApiOptions, OpenApiRule, RemoteDocument};
use crate::plain::PlainRule;
use crate::schema::{BodyError, BodySchema};

/// Errors listed in a 400 when `max_errors` is not given.
pub const DEFAULT_MAX_ERRORS: u32 = 10;
/// The most `max_errors` may be.
pub const MAX_MAX_ERRORS: u32 = 100;
/// `max_body_bytes` when not given: 512 KiB, below Envoy's default 1 MiB connection buffer.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 512 * 1024;
/// The most `max_body_bytes` may be.
pub const MAX_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// The media type of every denial body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The 400 body when the body is not JSON.
pub const INVALID_JSON_BODY: &str =
    r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"the request body is not valid JSON"}"#;
/// The 400 body when the body violates the schema and the rule is not `verbose` (and the fixed
/// body of [`ValidateReason::SchemaViolation`]; the verbose body is [`ValidateOutcome::body`]).
pub const SCHEMA_VIOLATION_BODY: &str =
    r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"the request body does not match the schema"}"#;

/// Why the validation filter denied a request. Each is a counter `gatewarden_validate_denied_<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateReason {
    /// The body is not JSON (or nests deeper than 128 levels, or holds a number beyond f64) (400).
    InvalidJson,
    /// The body is JSON that does not satisfy the schema (400).
    SchemaViolation,
    /// A path, query, header or cookie parameter is missing or does not satisfy its schema (400).
    InvalidParameter,
    /// The rule (or operation) requires a body and the request has none (400).
    BodyMissing,
    /// `content-length`, or the bytes received, exceed `max_body_bytes` (413).
    BodyTooLarge,
    /// The content type is missing or not allowed (415).
    UnsupportedMediaType,
    /// No path of the OpenAPI document (or the rule's `path_template`) matches (404).
    UnknownPath,
    /// The path is known but not with this method (405).
    MethodNotAllowed,
    /// The host cannot hand the body over (Kong: nginx spilled it to a file, or its length is
    /// unknown) and `failure_mode` is `deny` (503).
    BodyUnavailable,
    /// The rule's OpenAPI document is fetched and no copy is loaded yet, `failure_mode` `deny` (503).
    DocumentUnavailable,
}

impl ValidateReason {
    pub const ALL: [ValidateReason; 10] = [
        Self::InvalidJson,
        Self::SchemaViolation,
        Self::InvalidParameter,
        Self::BodyMissing,
        Self::BodyTooLarge,
        Self::UnsupportedMediaType,
        Self::UnknownPath,
        Self::MethodNotAllowed,
        Self::BodyUnavailable,
        Self::DocumentUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::SchemaViolation => "schema_violation",
            Self::InvalidParameter => "invalid_parameter",
            Self::BodyMissing => "body_missing",
            Self::BodyTooLarge => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnknownPath => "unknown_path",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyUnavailable => "body_unavailable",
            Self::DocumentUnavailable => "document_unavailable",
        }
    }

    /// The status and fixed body.
    pub const fn denial(self) -> Denial {
        let (status, body) = match self {
            Self::InvalidJson => (400, INVALID_JSON_BODY),
            Self::SchemaViolation => (400, SCHEMA_VIOLATION_BODY),
            Self::InvalidParameter => (400, INVALID_PARAMETER_BODY),
            Self::BodyMissing => (400, BODY_MISSING_BODY),
            Self::BodyTooLarge => (413, BODY_TOO_LARGE_BODY),
            Self::UnsupportedMediaType => (415, UNSUPPORTED_MEDIA_TYPE_BODY),
            Self::UnknownPath => (404, UNKNOWN_PATH_BODY),
            Self::MethodNotAllowed => (405, METHOD_NOT_ALLOWED_BODY),
            Self::BodyUnavailable => (503, BODY_UNAVAILABLE_BODY),
            Self::DocumentUnavailable => (503, DOCUMENT_UNAVAILABLE_BODY),
        };
        Denial { status, body, reason: self.as_str() }
    }
}

/// The 400 body when a parameter is invalid and the rule is not `verbose`.
pub const INVALID_PARAMETER_BODY: &str =
    r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"a request parameter is missing or invalid"}"#;
/// The 400 body when a required body is missing.
pub const BODY_MISSING_BODY: &str = r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"the request body is required"}"#;
/// The 413 body.
pub const BODY_TOO_LARGE_BODY: &str =
    r#"{"type":"about:blank","title":"Content Too Large","status":413,"detail":"the request body is larger than allowed"}"#;
/// The 415 body.
pub const UNSUPPORTED_MEDIA_TYPE_BODY: &str =
    r#"{"type":"about:blank","title":"Unsupported Media Type","status":415,"detail":"the request content type is not allowed"}"#;
/// The 404 body.
pub const UNKNOWN_PATH_BODY: &str = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no operation has this path"}"#;
/// The 405 body.
pub const METHOD_NOT_ALLOWED_BODY: &str =
    r#"{"type":"about:blank","title":"Method Not Allowed","status":405,"detail":"the path has no operation for this method"}"#;
/// The 503 body when the host cannot hand the body over.
pub const BODY_UNAVAILABLE_BODY: &str =
    r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the request body cannot be validated"}"#;
/// The 503 body when the OpenAPI document is not loaded.
pub const DOCUMENT_UNAVAILABLE_BODY: &str =
    r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the API description is not loaded"}"#;

/// What the filter does after the request headers.
#[derive(Debug)]
pub enum Start {
    /// Decided on the headers (allowed, or denied: 404, 405, 413 by `content-length`, 415, 400
    /// for a parameter or a missing body).
    Done(ValidateOutcome),
    /// Read the body, at most `max_bytes`, then call [`ValidatePolicy::finish`] with the plan.
    NeedBody(BodyPlan),
}

/// What the request headers said about the content type, kept for the body's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentTypeCheck {
    Allowed,
    NotAllowed,
    Missing,
}

/// What to check once the body is in (owned: it waits with the request).
#[derive(Debug, Clone)]
pub struct BodyPlan {
    /// Read at most this many bytes: more is `body_too_large`.
    pub max_bytes: usize,
    rule: Arc<str>,
    /// `None`: the body is not parsed (a media type without a schema), only its presence counts.
    schema: Option<Arc<BodySchema>>,
    /// An absent or empty body is `body_missing`.
    required: bool,
    /// A non-empty body is `unsupported_media_type` unless `Allowed`.
    content_type: ContentTypeCheck,
    max_errors: usize,
    verbose: bool,
}

impl BodyPlan {
    pub(crate) fn new(
        rule: &Arc<str>,
        schema: Option<Arc<BodySchema>>,
        limits: &Limits,
        required: bool,
        content_type: ContentTypeCheck,
    ) -> Self {
        Self {
            // max_body_bytes is at most MAX_MAX_BODY_BYTES (16 MiB): it fits a 32-bit usize.
            max_bytes: usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
            rule: rule.clone(),
            schema,
            required,
            content_type,
            max_errors: limits.max_errors,
            verbose: limits.verbose,
        }
    }
}

/// What the host gave for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyInput<'a> {
    /// The whole body.
    Whole(&'a [u8]),
    /// The request has no body.
    Absent,
    /// It grew past `max_bytes`: `seen` bytes had arrived.
    TooLarge { seen: usize },
    /// The host cannot hand it over.
    Unavailable,
}

/// What every rule shares, whichever form it takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_errors: usize,
    pub(crate) verbose: bool,
    pub(crate) max_body_bytes: u64,
    pub(crate) format_assertions: bool,
}

#[derive(Debug, Clone)]
struct ValidateAction {
    limits: Limits,
    check: RuleCheck,
}

/// What a rule checks: the plain fields or an OpenAPI document.
#[derive(Debug, Clone)]
enum RuleCheck {
    Plain(PlainRule),
    OpenApi(OpenApiRule),
}

/// What the validation policy decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateOutcome {
    pub decision: Decision,
    /// The denial reason as an enum, `None` when allowed.
    pub reason: Option<ValidateReason>,
    /// At most `max_errors` errors of a schema violation or of invalid parameters (also when
    /// not `verbose`: for the log).
    pub errors: Vec<BodyError>,
    /// The problem body listing `errors` for a `verbose` rule (`None`: the denial's fixed body).
    pub body: Option<String>,
    /// The `Allow` header of a 405 `method_not_allowed`: the path's methods (`GET, POST`).
    pub allow: Option<Arc<str>>,
    /// Allowed without validation, and why (log and count it as unvalidated): `unknown_path` /
    /// `method_not_allowed` with `pass`, `document_unavailable` with failure mode `allow`.
    pub unvalidated: Option<ValidateReason>,
}

impl ValidateOutcome {
    pub(crate) fn allow(rule: &Arc<str>) -> Self {
        Self { decision: Decision::allow(rule), reason: None, errors: Vec::new(), body: None, allow: None, unvalidated: None }
    }

    /// Allowed without validation because of `why`.
    pub(crate) fn unvalidated(rule: &Arc<str>, why: ValidateReason) -> Self {
        Self { unvalidated: Some(why), ..Self::allow(rule) }
    }

    pub(crate) fn deny(rule: &Arc<str>, reason: ValidateReason) -> Self {
        Self { decision: Decision::deny(rule, reason.denial()), reason: Some(reason), ..Self::allow(rule) }
    }

    /// A 400 `invalid_parameter` listing `errors` (the problem body only when `verbose`).
    pub(crate) fn invalid_parameters(rule: &Arc<str>, errors: Vec<BodyError>, verbose: bool) -> Self {
        let body = verbose.then(|| parameter_problem_body(&errors));
        Self { errors, body, ..Self::deny(rule, ValidateReason::InvalidParameter) }
    }
}

/// The compiled validation policy: every schema compiled once.
#[derive(Debug, Clone)]
pub struct ValidatePolicy {
    header: Header,
    rules: RuleSet<ValidateAction>,
}

impl FilterPolicy for ValidatePolicy {
    const NAME: &'static str = "validate";
    type Document = ValidateDocument;

    fn compile(doc: ValidateDocument) -> Result<Self, ConfigError> {
        let header = Header::compile(&doc, Self::NAME)?;
        let mut index = 0;
        let rules = RuleSet::compile(&doc.rules, &doc.default, |rule, path| {
            index += 1;
            compile_action(rule, index - 1, path)
        })?;
        Ok(Self { header, rules })
    }

    fn header(&self) -> &Header {
        &self.header
    }

    /// Fetched OpenAPI documents are fetched for the active policy: a candidate's must be the
    /// active one's, rule for rule (same place, same compile options).
    fn check_candidate(&self, candidate: &Self) -> Result<(), ConfigError> {
        let active = self.remote_documents();
        for doc in candidate.remote_documents() {
            let served = active.iter().any(|a| a.rule == doc.rule && a.source.same_origin(doc.source) && a.options == doc.options);
            if !served {
                let rule = if doc.rule + 1 == candidate.rules.iter().count() {
                    FieldPath::root().field("default")
                } else {
                    FieldPath::root().field("rules").index(doc.rule)
                };
                return Err(rule.field("openapi").field("source").error(
                    "a candidate's openapi.source must be the active policy's for the same rule (same place, base_path and format_assertions): documents are fetched for the active policy; change them in a policy without rollout",
                ));
            }
        }
        Ok(())
    }
}

/// The plain fields, exclusive with `openapi`.
const PLAIN_FIELDS: [&str; 5] = ["body_schema", "body_required", "allowed_content_types", "path_template", "parameters"];

/// Compiles the rule numbered `index` (`rules[i]` is `i`, the default `rules.len()`).
fn compile_action(rule: &ValidateRule, index: usize, path: &FieldPath) -> Result<ValidateAction, ConfigError> {
    let max_errors = rule.max_errors.unwrap_or(DEFAULT_MAX_ERRORS);
    if !(1..=MAX_MAX_ERRORS).contains(&max_errors) {
        return Err(path.field("max_errors").error(format!("{max_errors} is not between 1 and {MAX_MAX_ERRORS}")));
    }
    let max_body_bytes = rule.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(1..=MAX_MAX_BODY_BYTES).contains(&max_body_bytes) {
        return Err(path.field("max_body_bytes").error(format!("{max_body_bytes} is not between 1 and {MAX_MAX_BODY_BYTES}")));
    }
    let limits = Limits {
        max_errors: max_errors as usize,
        verbose: rule.verbose.unwrap_or(true),
        max_body_bytes,
        format_assertions: rule.format_assertions.unwrap_or(true),
    };
    if rule.openapi.is_some() {
        let given = [
            rule.body_schema.is_some(),
            rule.body_required.is_some(),
            rule.allowed_content_types.is_some(),
            rule.path_template.is_some(),
            !rule.parameters.is_empty(),
        ];
        if let Some((field, _)) = PLAIN_FIELDS.iter().zip(given).find(|(_, g)| *g) {
            return Err(path.field(field).error(format!("openapi and the plain fields ({}) exclude each other", PLAIN_FIELDS.join(", "))));
        }
    }
    let check = match &rule.openapi {
        Some(spec) => RuleCheck::OpenApi(OpenApiRule::compile(spec, index, &limits, &path.field("openapi"))?),
        None => RuleCheck::Plain(PlainRule::compile(rule, &limits, path)?),
    };
    Ok(ValidateAction { limits, check })
}

impl ValidatePolicy {
    /// The request headers the policy reads (rule matchers, the client address, `:path` for
    /// templates and query parameters, content type, length and transfer encoding, header and
    /// cookie parameters).
    pub fn header_needs(&self) -> HeaderNeeds {
        let mut needs = HeaderNeeds::default();
        self.rules.add_needs(&mut needs);
        self.header.client_address.add_needs(&mut needs);
        for rule in self.rules.iter() {
            match &rule.action.check {
                RuleCheck::Plain(plain) => plain.add_needs(&mut needs),
                RuleCheck::OpenApi(api) => api.add_needs(&mut needs),
            }
        }
        needs
    }

    /// Decides what the request headers allow: done, or read the body.
    pub fn start(&self, facts: &RequestFacts<'_>) -> Start {
        self.start_with(facts, &|_| None)
    }

    /// [`Self::start`] with the loaded copies of fetched OpenAPI documents: `documents(i)` is
    /// the copy for the rule numbered `i` ([`Self::remote_documents`]), `None` while none is
    /// loaded (`document_unavailable` by the failure mode).
    pub fn start_with(&self, facts: &RequestFacts<'_>, documents: &dyn Fn(usize) -> Option<Arc<OpenApi>>) -> Start {
        let rule = self.rules.select(facts);
        let a = &rule.action;
        match &a.check {
            RuleCheck::Plain(plain) => plain.start(&rule.name, &a.limits, facts),
            RuleCheck::OpenApi(api) => api.start(&rule.name, &a.limits, facts, documents, self.header.failure_mode),
        }
    }

    /// The OpenAPI documents the glue must fetch, one per rule with `openapi.source`.
    pub fn remote_documents(&self) -> Vec<RemoteDocument<'_>> {
        self.rules
            .iter()
            .filter_map(|r| match &r.action.check {
                RuleCheck::OpenApi(api) => api.remote(),
                RuleCheck::Plain(_) => None,
            })
            .collect()
    }

    /// Compiles fetched document text for the rule numbered `rule` (with its options); the
    /// error names `rules[i].openapi.source`.
    pub fn compile_document(&self, rule: usize, bytes: &[u8]) -> Result<OpenApi, ConfigError> {
        let default = OpenApiOptions::default();
        let options = self.remote_documents().into_iter().find(|d| d.rule == rule).map(|d| d.options.clone()).unwrap_or(default);
        let path = match self.rules.iter().count().checked_sub(1) {
            Some(last) if rule == last => FieldPath::root().field("default"),
            _ => FieldPath::root().field("rules").index(rule),
        };
        OpenApi::from_bytes(bytes, &options, &path.field("openapi").field("source"))
    }

    /// Whether a decision may read any request header: a fetched OpenAPI document's header
    /// and cookie parameters are known only once it is loaded.
    pub fn reads_all_headers(&self) -> bool {
        self.rules.iter().any(|r| matches!(&r.action.check, RuleCheck::OpenApi(api) if api.reads_all_headers()))
    }

    /// Decides on the body of a request [`Self::start`] asked it for.
    pub fn finish(&self, plan: BodyPlan, body: BodyInput<'_>) -> ValidateOutcome {
        let deny = |reason| ValidateOutcome::deny(&plan.rule, reason);
        let absent = || if plan.required { deny(ValidateReason::BodyMissing) } else { ValidateOutcome::allow(&plan.rule) };
        match body {
            BodyInput::Absent => absent(),
            BodyInput::Whole([]) => absent(),
            BodyInput::Whole(bytes) if bytes.len() > plan.max_bytes => deny(ValidateReason::BodyTooLarge),
            BodyInput::Whole(_) if plan.content_type != ContentTypeCheck::Allowed => deny(ValidateReason::UnsupportedMediaType),
            BodyInput::Whole(bytes) => match &plan.schema {
                None => ValidateOutcome::allow(&plan.rule),
                Some(schema) => check_json(&plan.rule, schema, plan.max_errors, plan.verbose, bytes),
            },
            BodyInput::TooLarge { .. } => deny(ValidateReason::BodyTooLarge),
            BodyInput::Unavailable => deny(ValidateReason::BodyUnavailable),
        }
    }

    /// Whether the rule selected for `facts` has a body schema: bodies of other requests pass
    /// untouched, unread.
    pub fn needs_body(&self, facts: &RequestFacts<'_>) -> bool {
        match &self.rules.select(facts).action.check {
            RuleCheck::Plain(plain) => plain.body_schema().is_some(),
            RuleCheck::OpenApi(_) => matches!(self.start(facts), Start::NeedBody(_)),
        }
    }

    /// Decides on the whole request body `body` of the request `facts` against the selected
    /// rule's body schema alone (no content type, parameter or length check: those are
    /// [`Self::start`]'s).
    pub fn check_body(&self, facts: &RequestFacts<'_>, body: &[u8]) -> ValidateOutcome {
        let rule = self.rules.select(facts);
        let a = &rule.action;
        let schema = match &a.check {
            RuleCheck::Plain(plain) => plain.body_schema(),
            RuleCheck::OpenApi(_) => {
                return match self.start(facts) {
                    Start::NeedBody(plan) => self.finish(plan, BodyInput::Whole(body)),
                    Start::Done(outcome) => outcome,
                }
            }
        };
        let Some(schema) = schema else {
            return ValidateOutcome::allow(&rule.name);
        };
        check_json(&rule.name, schema, a.limits.max_errors, a.limits.verbose, body)
    }
}

fn check_json(rule: &Arc<str>, schema: &BodySchema, max_errors: usize, verbose: bool, body: &[u8]) -> ValidateOutcome {
    // serde_json refuses nesting deeper than 128 and numbers beyond f64 before any
    // validation: a hostile document never reaches the validator.
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return ValidateOutcome::deny(rule, ValidateReason::InvalidJson);
    };
    if schema.is_valid(&value) {
        return ValidateOutcome::allow(rule);
    }
    let errors = schema.errors(&value, max_errors);
    let body = verbose.then(|| problem_body(&errors));
    ValidateOutcome { errors, body, ..ValidateOutcome::deny(rule, ValidateReason::SchemaViolation) }
}

/// The RFC 9457 problem body of a schema violation, listing `errors`.
pub fn problem_body(errors: &[BodyError]) -> String {
    problem("the request body does not match the schema", errors)
}

/// The RFC 9457 problem body of invalid parameters, listing `errors` (pointers `/query/…`,
/// `/path/…`, `/header/…`, `/cookie/…`).
pub fn parameter_problem_body(errors: &[BodyError]) -> String {
    problem("a request parameter is missing or invalid", errors)
}

fn problem(detail: &str, errors: &[BodyError]) -> String {
    let list: Vec<Value> =
        errors.iter().map(|e| json!({"pointer": e.instance, "schema": e.schema, "keyword": e.keyword, "detail": e.message})).collect();
    json!({
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": detail,
        "errors": list,
    })
    .to_string()
}
