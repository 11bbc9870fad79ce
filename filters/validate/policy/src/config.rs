//! The request-validation filter's policy document.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::rules::RuleSpec;

policy_document! {
    /// The request-validation filter's policy document. `mode: dry_run` validates, counts and
    /// logs what would be refused and lets it through.
    pub struct ValidateDocument for ValidateRule {
    }
}

/// One rule (or the default): what the request body must be.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRule {
    /// Name used in logs and the decision header (default `rules[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests this rule applies to; absent matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    /// The JSON Schema the request body must satisfy. Its draft is chosen by `$schema`
    /// (2020-12, 2019-09, 7, 6 or 4; default 2020-12). `$ref`s resolve inside the schema only:
    /// a reference to another document is a configuration error. Absent: the body is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub body_schema: Option<serde_json::Value>,
    /// Whether `format` is asserted (`email`, `date-time`, `uuid`, …; default `true`). With
    /// `true`, a `format` the validator does not know is a configuration error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_assertions: Option<bool>,
    /// At most this many errors are listed in a 400 (default 10, 1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u32>,
    /// `true` (default): a 400 lists the errors (instance pointer, schema location, keyword,
    /// a bounded message); `false`: the problem body says only that the body is invalid.
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
