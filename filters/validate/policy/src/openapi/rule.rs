//! A rule's `openapi` field: the document (inline, compiled with the policy, or fetched) and
//! what a request it does not describe gets. Checked in this order:
//!
//! ```text
//! no document loaded (source) ─▶ 503 document_unavailable | allowed, unvalidated (failure_mode allow)
//! no path matches ─▶ 404 unknown_path | allowed, unvalidated (unknown_path: pass)
//! path without the method ─▶ 405 method_not_allowed + Allow | allowed, unvalidated (unknown_method: pass)
//! parameter missing/invalid ─▶ 400 invalid_parameter
//! no requestBody ─▶ allowed (body never read)
//! content-length 0 ─▶ 400 body_missing (required) | allowed
//! content-length > max_body_bytes ─▶ 413
//! body present, content type missing or matching no `content` key ─▶ 415
//! otherwise ─▶ NeedBody: JSON key with schema: parsed and validated; other keys: only presence counts
//! ```

use std::sync::Arc;

use gatewarden_policy::document::FailureMode;
use gatewarden_policy::error::{ConfigError, FieldPath};
use gatewarden_policy::facts::{HeaderNeeds, RequestFacts};
use gatewarden_policy::remote::{RemoteSource, ResourceKind};

use crate::config::{OpenApiSpec, UnknownRoute};
use crate::plain::{body_step, check_params};
use crate::policy::{ContentTypeCheck, Limits, Start, ValidateOutcome, ValidateReason};

use super::{BodyChoice, OpenApi, OpenApiOptions, Route, MAX_DOCUMENT_BYTES};

/// A fetched OpenAPI document as a remote resource: refreshed every 5 minutes, at most 4 MiB
/// (also the default), never fetched early.
pub const OPENAPI_DOCUMENT: ResourceKind = ResourceKind {
    name: "openapi",
    label: "OpenAPI document",
    default_refresh_seconds: 300,
    default_timeout_ms: 5_000,
    default_max_bytes: MAX_DOCUMENT_BYTES as u64,
    max_max_bytes: MAX_DOCUMENT_BYTES as u64,
    early_refetch: false,
};

/// A document the glue must fetch for a rule.
#[derive(Debug, Clone, Copy)]
pub struct RemoteDocument<'a> {
    /// The rule's index: `rules[i]` is `i`, the default is `rules.len()`.
    pub rule: usize,
    pub source: &'a RemoteSource,
    /// How the fetched text is compiled: [`OpenApi::from_bytes`] with these options.
    pub options: &'a OpenApiOptions,
}

#[derive(Debug, Clone)]
enum Document {
    Inline(Arc<OpenApi>),
    Remote(RemoteSource),
}

/// A compiled `openapi` rule.
#[derive(Debug, Clone)]
pub(crate) struct OpenApiRule {
    index: usize,
    document: Document,
    options: OpenApiOptions,
    unknown_path: UnknownRoute,
    unknown_method: UnknownRoute,
}

impl OpenApiRule {
    /// Compiles `spec` (at `path`, the rule's `openapi`) of the rule numbered `index`.
    pub(crate) fn compile(spec: &OpenApiSpec, index: usize, limits: &Limits, path: &FieldPath) -> Result<Self, ConfigError> {
        let options = OpenApiOptions { format_assertions: limits.format_assertions, base_path: spec.base_path.clone() };
        let document = match (&spec.document, &spec.source) {
            (Some(doc), None) => Document::Inline(Arc::new(OpenApi::compile(doc, &options, &path.field("document"))?)),
            (None, Some(source)) => {
                if let Some(b) = &spec.base_path {
                    // Checked now: a fetched document must not be refused for the policy's fault.
                    super::normalize_base_path(b, &path.field("base_path"))?;
                }
                Document::Remote(RemoteSource::compile(source, &path.field("source"), &OPENAPI_DOCUMENT)?)
            }
            (Some(_), Some(_)) => return Err(path.field("source").error("give document or source, not both")),
            (None, None) => return Err(path.error("give the OpenAPI document inline (document) or where to fetch it (source)")),
        };
        for (field, value) in [("unknown_path", spec.unknown_path), ("unknown_method", spec.unknown_method)] {
            if field == "unknown_path" && value == Some(UnknownRoute::MethodNotAllowed) {
                return Err(path.field(field).error("\"405\" needs a known path: use \"404\" or \"pass\""));
            }
        }
        Ok(Self {
            index,
            document,
            options,
            unknown_path: spec.unknown_path.unwrap_or(UnknownRoute::NotFound),
            unknown_method: spec.unknown_method.unwrap_or(UnknownRoute::MethodNotAllowed),
        })
    }

    /// The fetched document's source, if the document is fetched.
    pub(crate) fn remote(&self) -> Option<RemoteDocument<'_>> {
        match &self.document {
            Document::Remote(source) => Some(RemoteDocument { rule: self.index, source, options: &self.options }),
            Document::Inline(_) => None,
        }
    }

    /// Adds the headers the rule reads. A fetched document's parameters are not known before
    /// it arrives: such a rule reads every header ([`Self::reads_all_headers`]).
    pub(crate) fn add_needs(&self, needs: &mut HeaderNeeds) {
        for h in [":path", ":method", "content-type", "content-length", "transfer-encoding"] {
            needs.add(h);
        }
        if let Document::Inline(api) = &self.document {
            for op in api.operations() {
                op.params().add_needs(needs);
            }
        }
    }

    pub(crate) fn reads_all_headers(&self) -> bool {
        matches!(self.document, Document::Remote(_))
    }

    /// Decides on the request headers, or asks for the body. `documents` gives the loaded copy
    /// of a fetched document by rule index; `failure_mode` applies while none is loaded.
    pub(crate) fn start(
        &self,
        rule: &Arc<str>,
        limits: &Limits,
        facts: &RequestFacts<'_>,
        documents: &dyn Fn(usize) -> Option<Arc<OpenApi>>,
        failure_mode: FailureMode,
    ) -> Start {
        let fetched;
        let api: &OpenApi = match &self.document {
            Document::Inline(api) => api,
            Document::Remote(source) => match documents(self.index) {
                Some(api) => {
                    fetched = api;
                    &fetched
                }
                None => {
                    return match source.failure_mode_or(failure_mode) {
                        FailureMode::Deny => Start::Done(ValidateOutcome::deny(rule, ValidateReason::DocumentUnavailable)),
                        FailureMode::Allow => Start::Done(ValidateOutcome::unvalidated(rule, ValidateReason::DocumentUnavailable)),
                    }
                }
            },
        };
        let (op, path_params) = match api.route(facts.method(), facts.path()) {
            Route::Found { op, path_params } => (op, path_params),
            Route::UnknownPath => return Start::Done(unknown(rule, self.unknown_path, ValidateReason::UnknownPath, None)),
            Route::UnknownMethod { allow } => {
                return Start::Done(unknown(rule, self.unknown_method, ValidateReason::MethodNotAllowed, Some(allow)))
            }
        };
        if let Some(denied) = check_params(rule, op.params(), &path_params, limits, facts) {
            return denied;
        }
        let (body, schema, content_type) = match op.body_for(facts.header("content-type")) {
            BodyChoice::NotDescribed => return Start::Done(ValidateOutcome::allow(rule)),
            BodyChoice::Media(body, entry) => (body, entry.schema().cloned(), ContentTypeCheck::Allowed),
            BodyChoice::NoContentType(body) => (body, None, ContentTypeCheck::Missing),
            BodyChoice::Unsupported(body) => (body, None, ContentTypeCheck::NotAllowed),
        };
        body_step(rule, facts, limits, schema, body.required, content_type)
    }
}

/// The outcome of a request the document does not describe.
fn unknown(rule: &Arc<str>, outcome: UnknownRoute, reason: ValidateReason, allow: Option<&Arc<str>>) -> ValidateOutcome {
    match outcome {
        UnknownRoute::Pass => ValidateOutcome::unvalidated(rule, reason),
        UnknownRoute::NotFound => ValidateOutcome::deny(rule, ValidateReason::UnknownPath),
        UnknownRoute::MethodNotAllowed => {
            ValidateOutcome { allow: allow.cloned(), ..ValidateOutcome::deny(rule, ValidateReason::MethodNotAllowed) }
        }
    }
}
