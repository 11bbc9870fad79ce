//! The IP/geo filter's policy document.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::rules::RuleSpec;

policy_document! {
    /// The IP/geo filter's policy document.
    pub struct IpGeoDocument for IpGeoRule {
        /// Where the country database is fetched from; required when any rule names countries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub geo_database: Option<GeoDatabaseSource>,
    }
}

/// One rule (or the default): which networks and countries are allowed or denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpGeoRule {
    /// Name used in logs and the decision header (default `rules[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests this rule applies to; absent matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    /// Client networks allowed (CIDR or address); when non-empty, everything else is denied
    /// unless its country is in `allow_countries`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Client networks denied. Deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// ISO 3166-1 alpha-2 codes allowed; when non-empty, other countries are denied unless the
    /// address is in `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_countries: Vec<String>,
    /// ISO 3166-1 alpha-2 codes denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_countries: Vec<String>,
    /// Outcome for an address the database has no country for: `deny` denies it, `allow`
    /// passes it as if its country were allowed; absent, it matches no country list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_country: Option<UnknownCountry>,
}

impl RuleSpec for IpGeoRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matcher(&self) -> Option<&MatchSpec> {
        self.matcher.as_ref()
    }
}

/// Outcome for an address with no country in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCountry {
    Allow,
    Deny,
}

/// Where the MaxMind-format (`.mmdb`) country database comes from: an HTTP GET through the
/// proxy (`cluster` is an Envoy cluster name, or `host:port` on Kong), fetched once after the
/// policy is accepted, shared by all workers, and refreshed every `refresh_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoDatabaseSource {
    /// Envoy cluster name (Kong: `host:port`) serving the database.
    pub cluster: String,
    /// Request path of the database file.
    pub path: String,
    /// `:authority` of the request (default: the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// How often to refetch, in seconds (default 86400; minimum 10).
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u64,
    /// How long to wait after a failed fetch before retrying, in seconds (default 10; minimum 1).
    #[serde(default = "default_retry_seconds")]
    pub retry_seconds: u64,
    /// Timeout of one fetch in milliseconds (default 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest database accepted, in bytes (default 64 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_refresh_seconds() -> u64 {
    86_400
}
fn default_retry_seconds() -> u64 {
    10
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
