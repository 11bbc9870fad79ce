//! The compiled validation policy and its decision (semantics in the crate docs).

use std::sync::Arc;

use serde_json::{json, Value};

use gatewarden_policy::decision::{Decision, Denial};
use gatewarden_policy::document::{FilterPolicy, Header};
use gatewarden_policy::error::{ConfigError, FieldPath};
use gatewarden_policy::facts::RequestFacts;
use gatewarden_policy::rules::RuleSet;

use crate::config::{ValidateDocument, ValidateRule};
use crate::schema::{BodyError, BodySchema};

/// Errors listed in a 400 when `max_errors` is not given.
pub const DEFAULT_MAX_ERRORS: u32 = 10;
/// The most `max_errors` may be.
pub const MAX_MAX_ERRORS: u32 = 100;
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
    /// The body is JSON that does not satisfy the rule's `body_schema` (400).
    SchemaViolation,
}

impl ValidateReason {
    pub const ALL: [ValidateReason; 2] = [Self::InvalidJson, Self::SchemaViolation];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::SchemaViolation => "schema_violation",
        }
    }

    /// The status and fixed body.
    pub const fn denial(self) -> Denial {
        let body = match self {
            Self::InvalidJson => INVALID_JSON_BODY,
            Self::SchemaViolation => SCHEMA_VIOLATION_BODY,
        };
        Denial { status: 400, body, reason: self.as_str() }
    }
}

#[derive(Debug, Clone)]
struct ValidateAction {
    body_schema: Option<Arc<BodySchema>>,
    max_errors: usize,
    verbose: bool,
}

/// What the validation policy decided about a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateOutcome {
    pub decision: Decision,
    /// The denial reason as an enum, `None` when allowed.
    pub reason: Option<ValidateReason>,
    /// At most `max_errors` errors of a schema violation (also when not `verbose`: for the log).
    pub errors: Vec<BodyError>,
    /// The problem body listing `errors` for a `verbose` rule (`None`: the denial's fixed body).
    pub body: Option<String>,
}

impl ValidateOutcome {
    fn allow(rule: &Arc<str>) -> Self {
        Self { decision: Decision::allow(rule), reason: None, errors: Vec::new(), body: None }
    }

    fn deny(rule: &Arc<str>, reason: ValidateReason) -> Self {
        Self { decision: Decision::deny(rule, reason.denial()), reason: Some(reason), ..Self::allow(rule) }
    }
}

/// The compiled validation policy: every body schema compiled once.
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
        let rules = RuleSet::compile(&doc.rules, &doc.default, compile_action)?;
        Ok(Self { header, rules })
    }

    fn header(&self) -> &Header {
        &self.header
    }
}

fn compile_action(rule: &ValidateRule, path: &FieldPath) -> Result<ValidateAction, ConfigError> {
    let max_errors = rule.max_errors.unwrap_or(DEFAULT_MAX_ERRORS);
    if !(1..=MAX_MAX_ERRORS).contains(&max_errors) {
        return Err(path.field("max_errors").error(format!("{max_errors} is not between 1 and {MAX_MAX_ERRORS}")));
    }
    let format_assertions = rule.format_assertions.unwrap_or(true);
    let body_schema = rule
        .body_schema
        .as_ref()
        .map(|s| BodySchema::compile(s, format_assertions, &path.field("body_schema")).map(Arc::new))
        .transpose()?;
    Ok(ValidateAction { body_schema, max_errors: max_errors as usize, verbose: rule.verbose.unwrap_or(true) })
}

impl ValidatePolicy {
    /// Whether the rule selected for `facts` reads the body: bodies of other requests pass
    /// untouched, unread.
    pub fn needs_body(&self, facts: &RequestFacts<'_>) -> bool {
        self.rules.select(facts).action.body_schema.is_some()
    }

    /// Decides on the whole request body `body` of the request `facts`.
    pub fn check_body(&self, facts: &RequestFacts<'_>, body: &[u8]) -> ValidateOutcome {
        let rule = self.rules.select(facts);
        let a = &rule.action;
        let Some(schema) = &a.body_schema else {
            return ValidateOutcome::allow(&rule.name);
        };
        // serde_json refuses nesting deeper than 128 and numbers beyond f64 before any
        // validation: a hostile document never reaches the validator.
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return ValidateOutcome::deny(&rule.name, ValidateReason::InvalidJson);
        };
        if schema.is_valid(&value) {
            return ValidateOutcome::allow(&rule.name);
        }
        let errors = schema.errors(&value, a.max_errors);
        let body = a.verbose.then(|| problem_body(&errors));
        ValidateOutcome { errors, body, ..ValidateOutcome::deny(&rule.name, ValidateReason::SchemaViolation) }
    }
}

/// The RFC 9457 problem body of a schema violation, listing `errors`.
pub fn problem_body(errors: &[BodyError]) -> String {
    let list: Vec<Value> =
        errors.iter().map(|e| json!({"pointer": e.instance, "schema": e.schema, "keyword": e.keyword, "detail": e.message})).collect();
    json!({
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "the request body does not match the schema",
        "errors": list,
    })
    .to_string()
}
