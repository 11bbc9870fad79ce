//! The plain form of a rule: `path_template`, `parameters`, `body_schema`, `body_required`,
//! `allowed_content_types`, `max_body_bytes`, checked in this order:
//!
//! ```text
//! path ≠ template ─▶ 404 unknown_path        parameter missing/invalid ─▶ 400 invalid_parameter
//! no body_schema ─▶ allowed (body never read)
//! content-length 0 ─▶ 400 body_missing (required) | allowed
//! content-length > max_body_bytes ─▶ 413      body present, content type missing or not allowed ─▶ 415
//! otherwise ─▶ NeedBody: the body decides (finish): absent/empty ─▶ body_missing | allowed; 415; 400; allowed
//! ```
//!
//! The body is known present by a positive `content-length` or a `transfer-encoding`, and known
//! empty by `content-length: 0`. Without either it may still come (HTTP/2 needs neither), so the
//! request waits for it and [`crate::ValidatePolicy::finish`] decides (`Absent` or an empty
//! body is a missing body). A `content-length` that is not digits is treated as unknown (both
//! hosts refuse such a request before any filter; were one to pass, at most `max_body_bytes`
//! are read all the same); digits beyond u64 are too large (413).

use std::sync::Arc;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::{HeaderNeeds, RequestFacts};

use crate::config::ValidateRule;
use crate::media::{MediaRange, MediaType};
use crate::params::{ParamInput, ParamSet, PathTemplate};
use crate::policy::{BodyPlan, ContentTypeCheck, Limits, Start, ValidateOutcome, ValidateReason};
use crate::schema::BodySchema;

/// `allowed_content_types` when not given.
pub const DEFAULT_CONTENT_TYPES: [&str; 1] = ["application/json"];

/// A compiled plain rule.
#[derive(Debug, Clone)]
pub(crate) struct PlainRule {
    path_template: Option<PathTemplate>,
    params: ParamSet,
    body_schema: Option<Arc<BodySchema>>,
    body_required: bool,
    content_types: Vec<MediaRange>,
}

impl PlainRule {
    /// Compiles the plain fields of `rule` (at `path`).
    pub(crate) fn compile(rule: &ValidateRule, limits: &Limits, path: &FieldPath) -> Result<Self, ConfigError> {
        if rule.body_schema.is_none() {
            // Without a body schema the body is never read: a body field would promise a check
            // that does not happen.
            let set = [
                ("body_required", rule.body_required.is_some()),
                ("allowed_content_types", rule.allowed_content_types.is_some()),
                ("max_body_bytes", rule.max_body_bytes.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, given)| *given) {
                return Err(path
                    .field(field)
                    .error("applies to the body, which is read only with body_schema: add body_schema or remove it"));
            }
        }
        let format_assertions = limits.format_assertions;
        let compile_schema = |s: &serde_json::Value, at: &FieldPath| BodySchema::compile(s, format_assertions, at).map(Arc::new);
        let body_schema = rule.body_schema.as_ref().map(|s| compile_schema(s, &path.field("body_schema"))).transpose()?;
        let content_types = match &rule.allowed_content_types {
            None => DEFAULT_CONTENT_TYPES.iter().filter_map(|r| MediaRange::parse(r)).collect(),
            Some(list) if list.is_empty() => {
                return Err(path
                    .field("allowed_content_types")
                    .error("an empty list would refuse every body: list at least one media range"))
            }
            Some(list) => {
                let at = path.field("allowed_content_types");
                let mut ranges = Vec::with_capacity(list.len());
                for (i, r) in list.iter().enumerate() {
                    ranges.push(MediaRange::parse(r).ok_or_else(|| {
                        at.index(i).error(format!("invalid media range {}: use type/subtype, type/*, */* or type/*+suffix", quote(r)))
                    })?);
                }
                ranges
            }
        };
        let path_template = rule.path_template.as_deref().map(|t| PathTemplate::compile(t, &path.field("path_template"))).transpose()?;
        let names = path_template.as_ref().map(PathTemplate::names).unwrap_or_default();
        let params = ParamSet::compile(&rule.parameters, &names, &compile_schema, &path.field("parameters"))?;
        Ok(Self { path_template, params, body_schema, body_required: rule.body_required.unwrap_or(true), content_types })
    }

    pub(crate) fn add_needs(&self, needs: &mut HeaderNeeds) {
        if self.path_template.is_some() || self.params.reads_query() {
            needs.add(":path");
        }
        self.params.add_needs(needs);
        if self.body_schema.is_some() {
            needs.add("content-type");
            needs.add("content-length");
            needs.add("transfer-encoding");
        }
    }

    pub(crate) fn body_schema(&self) -> Option<&Arc<BodySchema>> {
        self.body_schema.as_ref()
    }

    /// Decides on the request headers, or asks for the body.
    pub(crate) fn start(&self, rule: &Arc<str>, limits: &Limits, facts: &RequestFacts<'_>) -> Start {
        let deny = |reason| Start::Done(ValidateOutcome::deny(rule, reason));
        let path_params = match &self.path_template {
            None => Vec::new(),
            Some(t) => match t.matches(facts.path()) {
                Some(values) => values,
                None => return deny(ValidateReason::UnknownPath),
            },
        };
        if let Some(denied) = check_params(rule, &self.params, &path_params, limits, facts) {
            return denied;
        }
        let Some(schema) = &self.body_schema else {
            return Start::Done(ValidateOutcome::allow(rule));
        };
        body_step(rule, facts, limits, Some(schema.clone()), self.body_required, self.content_type(facts))
    }

    fn content_type(&self, facts: &RequestFacts<'_>) -> ContentTypeCheck {
        match facts.header("content-type") {
            None => ContentTypeCheck::Missing,
            Some(value) => match MediaType::parse(value) {
                Some(media) if self.content_types.iter().any(|r| r.matches(&media)) => ContentTypeCheck::Allowed,
                _ => ContentTypeCheck::NotAllowed,
            },
        }
    }
}

/// The query of `:path` (after `?`, without `#…`); `None` when it has no `?`.
pub(crate) fn raw_query<'a>(facts: &RequestFacts<'a>) -> Option<&'a str> {
    let full = facts.header(":path")?;
    let (_, query) = full.split_once('?')?;
    Some(query.split('#').next().unwrap_or(query))
}

/// The parameters' verdict: `Some` denial (400 `invalid_parameter`, listing the errors) or
/// `None` when they are valid. Shared by the plain and OpenAPI forms.
pub(crate) fn check_params(
    rule: &Arc<str>,
    params: &ParamSet,
    path_params: &[(String, String)],
    limits: &Limits,
    facts: &RequestFacts<'_>,
) -> Option<Start> {
    if params.is_empty() {
        return None;
    }
    let input = ParamInput { path_params, raw_query: raw_query(facts), headers: facts.headers };
    let errors = params.check(&input, limits.max_errors);
    (!errors.is_empty()).then(|| Start::Done(ValidateOutcome::invalid_parameters(rule, errors, limits.verbose)))
}

/// What the request headers decide about a body the rule reads: missing (400), too large (413,
/// by `content-length`), the wrong content type (415), or read it (at most `max_body_bytes`).
/// A body the headers do not announce (HTTP/2 without `content-length`) is asked for: `finish`
/// decides. Shared by the plain and OpenAPI forms.
pub(crate) fn body_step(
    rule: &Arc<str>,
    facts: &RequestFacts<'_>,
    limits: &Limits,
    schema: Option<Arc<BodySchema>>,
    required: bool,
    content_type: ContentTypeCheck,
) -> Start {
    let deny = |reason| Start::Done(ValidateOutcome::deny(rule, reason));
    match body_length(facts) {
        BodyLength::Empty if required => deny(ValidateReason::BodyMissing),
        BodyLength::Empty => Start::Done(ValidateOutcome::allow(rule)),
        BodyLength::Over => deny(ValidateReason::BodyTooLarge),
        BodyLength::Declared(n) if n > limits.max_body_bytes => deny(ValidateReason::BodyTooLarge),
        BodyLength::Declared(_) | BodyLength::Chunked if content_type != ContentTypeCheck::Allowed => {
            deny(ValidateReason::UnsupportedMediaType)
        }
        BodyLength::Declared(_) | BodyLength::Chunked | BodyLength::Unknown => {
            Start::NeedBody(BodyPlan::new(rule, schema, limits, required, content_type))
        }
    }
}

/// What the headers say about the body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// `content-length: 0`.
    Empty,
    /// A positive `content-length`.
    Declared(u64),
    /// A `content-length` of digits beyond u64.
    Over,
    /// `transfer-encoding` (chunked on HTTP/1.1): a body of unknown length.
    Chunked,
    /// Neither header, or a malformed `content-length`: maybe a body (HTTP/2), maybe none.
    Unknown,
}

/// The body length the request headers announce (`transfer-encoding` wins over
/// `content-length`, as RFC 9112 §6.3 says).
pub(crate) fn body_length(facts: &RequestFacts<'_>) -> BodyLength {
    if facts.header("transfer-encoding").is_some() {
        return BodyLength::Chunked;
    }
    let Some(value) = facts.header("content-length") else {
        return BodyLength::Unknown;
    };
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return BodyLength::Unknown;
    }
    match digits.parse::<u64>() {
        Ok(0) => BodyLength::Empty,
        Ok(n) => BodyLength::Declared(n),
        Err(_) => BodyLength::Over,
    }
}
