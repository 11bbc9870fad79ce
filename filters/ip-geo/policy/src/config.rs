//! The IP/geo filter's policy document.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::remote::RemoteSourceSpec;
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

/// Where the MaxMind-format (`.mmdb`) country database comes from: the one remote-source type
/// (defaults for this resource: refresh daily, timeout 10 s, at most 64 MiB; `max_bytes` up to 1 GiB).
pub type GeoDatabaseSource = RemoteSourceSpec;
