//! The policy document every filter shares: a common header (`policy_version`, `mode`,
//! `failure_mode`, `client_address`, `decision_header`), an ordered `rules` list (first match
//! wins) and a `default`, plus the filter's own top-level fields.
//!
//! ```json
//! {"policy_version": "2026-11-22.3", "mode": "enforce", "failure_mode": "deny",
//!  "rules": [{"name": "admin", "match": {"path_prefix": "/admin"}, "allow": ["10.0.0.0/8"]}],
//!  "default": {}}
//! ```
//!
//! Each filter declares its document with [`policy_document!`], which adds the common fields to
//! the filter's own, so every document is one flat, `deny_unknown_fields` struct whose serde
//! errors carry exact field paths and whose JSON Schema is generated from the same type.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::approvals::SignatureDoc;
use crate::client_address::{ClientAddressConfig, ClientAddressResolver};
use crate::rollout::{PolicySet, Rollout, RolloutDoc};
use crate::error::{quote, ConfigError, FieldPath};

/// Whether denials are enforced or only logged and counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Deny what the policy denies (the default).
    #[default]
    Enforce,
    /// Evaluate, log and count what would be denied, but let every request through.
    DryRun,
}

/// What to do when a dependency (JWKS, geo database, rate-limit service) is unavailable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Fail closed: deny the request (the default).
    #[default]
    Deny,
    /// Fail open: skip the checks that need the dependency.
    Allow,
}

// A newtype only so that a missing field defaults to `true`: `#[serde(default)]` takes the type's
// default, and a `default = "path"` string could not name this crate from inside the macro.
/// Whether the decision is sent upstream in `x-gatewarden-<filter>` (default `true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DecisionHeader(pub bool);

impl Default for DecisionHeader {
    fn default() -> Self {
        Self(true)
    }
}

/// Declares a filter's policy document: the common header fields plus the filter's own fields.
///
/// ```ignore
/// policy_document! {
///     /// The IP/geo filter's policy.
///     pub struct IpGeoDocument for IpGeoRule {
///         /// Where the country database comes from.
///         #[serde(default)]
///         pub geo_database: Option<GeoDatabaseSource>,
///     }
/// }
/// ```
#[macro_export]
macro_rules! policy_document {
    (
        $(#[$meta:meta])*
        pub struct $name:ident for $rule:ty {
            $( $(#[$fmeta:meta])* pub $field:ident : $fty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Free-form version of this policy (e.g. `2026-11-22.3`), echoed in every log line
            /// and decision header. 1 to 128 characters from `A-Z a-z 0-9 . _ : + - / @`.
            pub policy_version: String,
            /// Which filter this policy is for (e.g. `ip_geo`); when given, a filter refuses a
            /// policy written for another one.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub filter: Option<String>,
            /// `enforce` (default) or `dry_run`: evaluate and log, never deny.
            #[serde(default)]
            pub mode: $crate::document::Mode,
            /// `deny` (default) or `allow`: what to do when a dependency is unavailable.
            #[serde(default)]
            pub failure_mode: $crate::document::FailureMode,
            /// How the client address is found (peer address by default).
            #[serde(default)]
            pub client_address: $crate::client_address::ClientAddressConfig,
            /// `true` (default): an allowed (or dry-run denied) request carries the decision to
            /// the upstream in `x-gatewarden-<filter>`, replacing any value the client sent.
            /// `false`: the header is neither set nor replaced, which saves a host call per
            /// request; strip a client-sent header of that name in Envoy if upstreams read it.
            #[serde(default)]
            pub decision_header: $crate::document::DecisionHeader,
            /// Ordered rules: the first whose `match` matches the request decides.
            #[serde(default)]
            pub rules: Vec<$rule>,
            /// What applies when no rule matches (it takes no `name` and no `match`).
            #[serde(default)]
            pub default: $rule,
            $( $(#[$fmeta])* pub $field : $fty, )*
            /// Optional safe rollout: a candidate policy as a canary (`percent` of clients) or
            /// in shadow (evaluated on all traffic, never enforced). See docs/rollout-and-approvals.md.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rollout: Option<$crate::rollout::RolloutDoc<$name>>,
            /// Optional approvals: Ed25519 signatures over the canonical JSON of everything
            /// else, checked when the VM configuration requires them.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub signatures: Vec<$crate::approvals::SignatureDoc>,
        }

        impl $crate::document::PolicyDocument for $name {
            type Rule = $rule;
            fn policy_version(&self) -> &str { &self.policy_version }
            fn filter(&self) -> Option<&str> { self.filter.as_deref() }
            fn mode(&self) -> $crate::document::Mode { self.mode }
            fn failure_mode(&self) -> $crate::document::FailureMode { self.failure_mode }
            fn client_address(&self) -> &$crate::client_address::ClientAddressConfig { &self.client_address }
            fn decision_header(&self) -> bool { self.decision_header.0 }
            fn rules(&self) -> &[$rule] { &self.rules }
            fn default_rule(&self) -> &$rule { &self.default }
            fn take_rollout(&mut self) -> Option<$crate::rollout::RolloutDoc<Self>> { self.rollout.take() }
            fn signatures(&self) -> &[$crate::approvals::SignatureDoc] { &self.signatures }
        }
    };
}

/// Access to the common part of any filter's document.
pub trait PolicyDocument: DeserializeOwned + JsonSchema {
    type Rule;
    fn policy_version(&self) -> &str;
    fn filter(&self) -> Option<&str>;
    fn mode(&self) -> Mode;
    fn failure_mode(&self) -> FailureMode;
    fn client_address(&self) -> &ClientAddressConfig;
    /// Whether the decision header is sent upstream.
    fn decision_header(&self) -> bool;
    fn rules(&self) -> &[Self::Rule];
    fn default_rule(&self) -> &Self::Rule;
    /// Removes and returns the `rollout` field (compiled separately, see [`compile_set`]).
    fn take_rollout(&mut self) -> Option<RolloutDoc<Self>>;
    /// The `signatures` field (checked against the VM's trust settings, not by the policy).
    fn signatures(&self) -> &[SignatureDoc];
}

/// A compiled policy of one filter.
pub trait FilterPolicy: Sized {
    /// The filter's name in metrics, logs and headers: `ip_geo` ⇒ `gatewarden_ip_geo_denied`.
    const NAME: &'static str;
    type Document: PolicyDocument;

    /// Checks cross-field rules and prepares everything a request needs (tables, regexes, keys).
    fn compile(doc: Self::Document) -> Result<Self, ConfigError>;

    /// The compiled common header.
    fn header(&self) -> &Header;

    /// Refuses a rollout candidate this filter's glue could not serve beside `self`, the active
    /// policy: background resources (geo database, remote JWKS) are fetched for the active policy
    /// only. Paths are relative to the candidate (the caller adds `rollout.candidate.`).
    fn check_candidate(&self, _candidate: &Self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// The compiled common header of a policy.
#[derive(Debug, Clone)]
pub struct Header {
    pub policy_version: Arc<str>,
    pub mode: Mode,
    pub failure_mode: FailureMode,
    pub client_address: ClientAddressResolver,
    /// Whether the glue sends `x-gatewarden-<filter>` upstream.
    pub decision_header: bool,
}

impl Header {
    /// Compiles the common header of `doc`, a document for the filter named `filter`.
    pub fn compile<D: PolicyDocument>(doc: &D, filter: &str) -> Result<Self, ConfigError> {
        if let Some(named) = doc.filter() {
            if named != filter {
                return Err(ConfigError::new("filter", format!("this policy is for filter {}, not {}", quote(named), quote(filter))));
            }
        }
        let version = doc.policy_version();
        validate_policy_version(version)?;
        Ok(Self {
            policy_version: Arc::from(version),
            mode: doc.mode(),
            failure_mode: doc.failure_mode(),
            client_address: ClientAddressResolver::compile(
                doc.client_address(),
                &FieldPath::root().field("client_address"),
            )?,
            decision_header: doc.decision_header(),
        })
    }
}

fn validate_policy_version(v: &str) -> Result<(), ConfigError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:+-/@".contains(c);
    if v.is_empty() || v.len() > 128 || !v.chars().all(ok_char) {
        return Err(ConfigError::new(
            "policy_version",
            format!("invalid version {}: use 1 to 128 characters from A-Z a-z 0-9 . _ : + - / @", quote(v)),
        ));
    }
    Ok(())
}

/// Parses a document from JSON bytes. Errors carry the JSON path of the bad field, recovered from
/// the error's position in the text (see [`crate::json_path`]).
pub fn parse_document<D: DeserializeOwned>(bytes: &[u8]) -> Result<D, ConfigError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ConfigError::new(crate::json_path::path_of_error(bytes, &e), e.to_string())
    })
}

/// Parses and compiles a policy document and its rollout candidate: what `on_configure` and
/// `gatewarden validate` both run. Errors in the candidate carry the `rollout.candidate.` prefix.
pub fn compile_set<P: FilterPolicy>(bytes: &[u8]) -> Result<PolicySet<P>, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new("", "empty configuration: a policy document is required"));
    }
    let mut doc = parse_document::<P::Document>(bytes)?;
    let rollout = doc.take_rollout();
    let active = P::compile(doc)?;
    let rollout = match rollout {
        Some(r) => Some(Rollout::compile(r, &active)?),
        None => None,
    };
    Ok(PolicySet { active, rollout })
}

/// [`compile_set`], keeping only the active policy (the candidate is still validated).
pub fn compile<P: FilterPolicy>(bytes: &[u8]) -> Result<P, ConfigError> {
    compile_set::<P>(bytes).map(|set| set.active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_version_rejects_header_breaking_characters() {
        assert!(validate_policy_version("2026-11-22.3").is_ok());
        let err = validate_policy_version("v1; rule=x").unwrap_err();
        assert_eq!(err.path(), "policy_version");
        assert!(err.message().contains("\"v1; rule=x\""), "{err}");
        assert!(validate_policy_version("").is_err());
    }
}
