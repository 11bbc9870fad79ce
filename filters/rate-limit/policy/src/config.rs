//! The rate-limit filter's policy document.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::rules::RuleSpec;

policy_document! {
    /// The rate-limit filter's policy document. `mode: dry_run` counts and logs what would be
    /// limited and lets it through.
    pub struct RateLimitDocument for RateLimitRule {
        /// Number of keys tracked at once (default 65,536; 4 to 16,777,216, rounded down to a
        /// multiple of 4). The table never grows: a new key replaces the fullest bucket among
        /// its 4 candidate slots, never a bucket that is currently limited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_keys: Option<u32>,
    }
}

/// One rule (or the default): its limits, what a request costs, and whose bucket it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Name used in logs and the decision header (default `rules[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests this rule applies to; absent matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    /// The limits, all checked at once: a request is admitted only if every limit admits it,
    /// and a denied request is charged to none. Empty: no limit (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSpec>,
    /// What one request costs (default 1): a number, or `{"header": "x-cost", "max": 100}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostSpec>,
    /// The parts the bucket key is built from, in order (default `["client_address"]`; `[]`:
    /// one bucket for every request of the rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<KeyPartSpec>>,
    /// What happens when a key part is missing (default `deny`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing_key: Option<OnMissingKey>,
    /// Which rate-limit response headers are sent (default `ietf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderStyle>,
    /// Whether allowed responses carry the headers too (default `false`: limited responses only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_on_allowed: Option<bool>,
}

impl RuleSpec for RateLimitRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matcher(&self) -> Option<&MatchSpec> {
        self.matcher.as_ref()
    }
}

/// One limit: `rate` units per period, at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The limit's name in `RateLimit-Policy`, `RateLimit` and `violated-policies`: 1 to 64
    /// characters from `A-Z a-z 0-9 - _ . : /`, unique within the rule.
    pub name: String,
    /// Units admitted per period (at least 1).
    pub rate: u64,
    /// The period in seconds (1 to 31,536,000). Give this or `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_seconds: Option<u64>,
    /// The period as `1s`, `1m`, `1h` or `1d`. Give this or `per_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Period>,
    /// Units a client may spend at once from a full bucket (default `rate`; 1 to 1,000,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A named period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Period {
    /// One second.
    #[serde(rename = "1s")]
    Second,
    /// One minute.
    #[serde(rename = "1m")]
    Minute,
    /// One hour.
    #[serde(rename = "1h")]
    Hour,
    /// One day.
    #[serde(rename = "1d")]
    Day,
}

impl Period {
    pub const fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }
}

/// What one request costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CostSpec {
    /// A fixed cost (at least 1, at most every limit's `burst`).
    Fixed(u64),
    /// The cost read from a request header.
    Header(CostHeaderSpec),
}

/// A cost read from a request header (a decimal integer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostHeaderSpec {
    /// The header's name.
    pub header: String,
    /// The largest cost accepted; a larger or malformed value is denied (`cost_invalid`, 400).
    pub max: u64,
    /// The cost when the header is absent (default 1). `0` is allowed: such requests are
    /// checked (denied while a limit is exhausted) but not charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<u64>,
}

/// One part of a bucket key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyPartSpec {
    /// The client address (the policy's `client_address` settings: peer, or trusted
    /// `x-forwarded-for` hops). Missing when it cannot be resolved.
    ClientAddress,
    /// A request header's first value, e.g. `{"header": "x-api-key"}`. Missing when absent.
    Header(String),
    /// A header set by the JWT filter from a verified claim, e.g. `{"claim_header": "x-user"}`
    /// (the JWT filter removes any client-sent copy). Missing when absent.
    ClaimHeader(String),
    /// The request path without the query string.
    Path,
    /// The request method.
    Method,
    /// The name of the rule that matched.
    Rule,
}

/// What happens when a part of the key is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    /// Deny the request (`key_missing`, 403).
    #[default]
    Deny,
    /// Let the request through without any limit.
    Allow,
    /// Count every request missing that part in one bucket shared by all of them.
    Shared,
}

/// Which rate-limit response headers are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
    #[default]
    Ietf,
    /// Those and `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    IetfAndLegacy,
    /// None (a 429 still carries `Retry-After`).
    None,
}
