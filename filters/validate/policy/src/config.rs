//! The request-validation filter's policy document.
//!
//! A rule states what a request must be in one of two ways:
//! 1. **Plain**: `body_schema`, `allowed_content_types`, `max_body_bytes`, `body_required`, and
//!    `parameters` (OpenAPI Parameter Objects: query, header, cookie, and path parameters named
//!    in `path_template`).
//! 2. **OpenAPI**: `openapi` holds an OpenAPI 3.0 or 3.1 document (inline, JSON or YAML, or
//!    fetched with the remote source); requests are routed by path template and method and
//!    validated against the operation's parameters and `requestBody`.
//!
//! `max_body_bytes`, `format_assertions`, `max_errors` and `verbose` apply to both forms.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::remote::RemoteSourceSpec;
use gatewarden_policy::rules::RuleSpec;

policy_document! {
    /// The request-validation filter's policy document. `mode: dry_run` validates, counts and
    /// logs what would be refused and lets it through.
    pub struct ValidateDocument for ValidateRule {
    }
}

/// One rule (or the default): what the request must be.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRule {
    /// Name used in logs and the decision header (default `rules[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests this rule applies to; absent matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    /// An OpenAPI 3.0 or 3.1 document the requests of this rule must follow. Exclusive with
    /// `body_schema`, `body_required`, `allowed_content_types`, `path_template` and `parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiSpec>,
    /// The JSON Schema the request body must satisfy. Its draft is chosen by `$schema`
    /// (2020-12, 2019-09, 7, 6 or 4; default 2020-12). `$ref`s resolve inside the schema only:
    /// a reference to another document is a configuration error. Absent: the body is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub body_schema: Option<serde_json::Value>,
    /// Whether a request without a body (none, or an empty one) is refused (400 `body_missing`)
    /// (default `true`; `false`: a request without a body passes unparsed). Needs `body_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_required: Option<bool>,
    /// Media types a body may have: `type/subtype`, `type/*`, `*/*` or a structured suffix
    /// `application/*+json`; parameters (`; charset=utf-8`) are ignored, case is not significant
    /// (default `["application/json"]`). A body with another content type, or with none, is
    /// refused (415): at the headers when `content-length` or `transfer-encoding` announce it,
    /// else once it arrives. Needs `body_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_content_types: Option<Vec<String>>,
    /// Largest body read, in bytes (default 524,288 = 512 KiB, below Envoy's default 1 MiB
    /// connection buffer; 1 to 16,777,216). A larger `content-length` is refused (413) before
    /// any byte is read; a body without one is refused as soon as it grows past the limit. In
    /// the plain form it needs `body_schema` (without one the body is never read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// The path template path parameters are taken from (`/pets/{id}`, `/files/{name}.json`:
    /// one `{name}` per segment, with an optional literal prefix and suffix), matched segment
    /// by segment against the request path without its query (literal segments exactly, a
    /// parameter's value not empty, then percent-decoded); a path that does not match is a 404
    /// `unknown_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    /// Parameters as OpenAPI 3.1 Parameter Objects (`name`, `in`: `query` | `header` | `path`
    /// | `cookie`, `required`, `schema` or `content` with one JSON or `text/plain` media type,
    /// `style`, `explode`), checked before the body: a missing or invalid one is a 400
    /// `invalid_parameter` whose errors point at `/query/<name>`, `/path/<name>`,
    /// `/header/<name>` or `/cookie/<name>`. Styles: path `simple` (default), `label`, `matrix`;
    /// query `form` (default), `spaceDelimited`, `pipeDelimited`, `deepObject`; header
    /// `simple`; cookie `form`. Values become the integer, number, boolean or null their
    /// schema's `type` names. A query of more than 256 parameters is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub parameters: Vec<serde_json::Value>,
    /// Whether `format` is asserted (`email`, `date-time`, `uuid`, …; default `true`). With
    /// `true`, a `format` the validator does not know is a configuration error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_assertions: Option<bool>,
    /// At most this many errors are listed in a 400 (default 10, 1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u32>,
    /// `true` (default): a 400 lists the errors (instance pointer, schema location, keyword,
    /// a bounded message); `false`: the problem body says only that the request is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbose: Option<bool>,
}

impl RuleSpec for ValidateRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matcher(&self) -> Option<&MatchSpec> {
        self.matcher.as_ref()
    }
}

/// An OpenAPI document and what to do with requests it does not describe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiSpec {
    /// The document inline: an OpenAPI 3.0.x or 3.1.x object, or a string holding it as YAML
    /// or JSON. Give this or `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub document: Option<serde_json::Value>,
    /// Where the document is fetched from (JSON or YAML; the remote source shared with the
    /// JWKS and geo database). Give this or `document`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RemoteSourceSpec>,
    /// Path prefix removed before routing (default: the path of the document's first
    /// `servers[].url`, none when it has no path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
    /// What a path no `paths` entry matches gets (default `404`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_path: Option<UnknownRoute>,
    /// What a method its path does not define gets (default `405`, with `Allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_method: Option<UnknownRoute>,
}

/// The outcome of a request the OpenAPI document does not describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UnknownRoute {
    /// 404 `unknown_path`.
    #[serde(rename = "404")]
    NotFound,
    /// 405 `method_not_allowed`, with `Allow` listing the path's methods.
    #[serde(rename = "405")]
    MethodNotAllowed,
    /// Let it through unvalidated (counted and logged as `unvalidated`).
    #[serde(rename = "pass")]
    Pass,
}
