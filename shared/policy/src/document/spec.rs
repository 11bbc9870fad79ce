//! The policy document as written: the common header fields every filter's document has
//! ([`policy_document!`](crate::policy_document) adds them to the filter's own), the values they
//! take, and [`PolicyDocument`], the access to them. Parsed, not yet compiled.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::approvals::SignatureDoc;
use super::rollout_spec::RolloutDoc;
use crate::request::client_address::ClientAddressConfig;

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
            pub client_address: $crate::request::client_address::ClientAddressConfig,
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
            pub rollout: Option<$crate::document::rollout_spec::RolloutDoc<$name>>,
            /// Optional approvals: Ed25519 signatures over the canonical JSON of everything
            /// else, checked when the VM configuration requires them.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub signatures: Vec<$crate::document::approvals::SignatureDoc>,
        }

        impl $crate::document::PolicyDocument for $name {
            type Rule = $rule;
            fn policy_version(&self) -> &str { &self.policy_version }
            fn filter(&self) -> Option<&str> { self.filter.as_deref() }
            fn mode(&self) -> $crate::document::Mode { self.mode }
            fn failure_mode(&self) -> $crate::document::FailureMode { self.failure_mode }
            fn client_address(&self) -> &$crate::request::client_address::ClientAddressConfig { &self.client_address }
            fn decision_header(&self) -> bool { self.decision_header.0 }
            fn rules(&self) -> &[$rule] { &self.rules }
            fn default_rule(&self) -> &$rule { &self.default }
            fn take_rollout(&mut self) -> Option<$crate::document::rollout_spec::RolloutDoc<Self>> { self.rollout.take() }
            fn signatures(&self) -> &[$crate::document::approvals::SignatureDoc] { &self.signatures }
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
