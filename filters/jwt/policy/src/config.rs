//! The JWT filter's policy document (raw, as the user writes it). Compiled in [`super::policy`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use gatewarden_policy::matcher::MatchSpec;
use gatewarden_policy::policy_document;
use gatewarden_policy::remote::RemoteSourceSpec;
use gatewarden_policy::rules::RuleSpec;

policy_document! {
    /// The JWT filter's policy document.
    pub struct JwtDocument for JwtRule {
        /// Token issuers, by name (the name is used in `requires`, logs and metrics).
        #[serde(default)]
        pub providers: BTreeMap<String, ProviderSpec>,
        /// The `realm` of `WWW-Authenticate` (default `gatewarden`).
        #[serde(default = "default_realm")]
        pub realm: String,
        /// Verified tokens kept per worker so a repeated token is not verified again
        /// (default 1024; 0 turns the cache off).
        #[serde(default = "default_token_cache_entries")]
        pub token_cache_entries: usize,
        /// A request with more header entries than this is refused (431) before any token is
        /// looked for (default 200).
        #[serde(default = "default_max_request_headers")]
        pub max_request_headers: usize,
    }
}

/// One token issuer: where its tokens are, which keys verify them, what they must claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The required `iss` claim.
    pub issuer: String,
    /// The token's `aud` (string or array) must contain one of these; empty: not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// When given, `sub` must be one of the listed values or start with the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<SubjectsSpec>,
    /// An inline JWKS: a JSON object `{"keys": [...]}` or a string holding one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_jwks: Option<serde_json::Value>,
    /// A JWKS fetched over HTTP through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwksSpec>,
    /// Headers carrying the token. When no source is given at all, the default is
    /// `Authorization` with the prefix `Bearer `.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<HeaderSourceSpec>,
    /// Query parameters carrying the token (e.g. `access_token`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request sent upstream (default false: it is removed from where
    /// it was found once verified).
    #[serde(default)]
    pub forward: bool,
    /// Send the verified token's payload (base64url, as in the token) upstream in this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_payload_header: Option<String>,
    /// Pad the forwarded payload with `=` to a multiple of 4 characters, for upstreams whose
    /// base64 decoder needs padding (Envoy's `pad_forward_payload_header`; default false:
    /// unpadded, as in the token).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pad_forward_payload_header: bool,
    /// Copy claims into request headers for the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// Tolerance for `exp`, `nbf` and `iat`, in seconds (default 60).
    #[serde(default = "default_clock_skew_seconds")]
    pub clock_skew_seconds: u64,
    /// Refuse tokens without `exp` (default true; Envoy's default is false).
    #[serde(default = "default_true")]
    pub require_expiration: bool,
    /// Refuse tokens whose lifetime (`exp - iat`, or `exp - now` without `iat`) is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
    /// Longest token accepted, in bytes (default 8192; 16 to 65536).
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

/// Allowed subjects: a list of exact values, or `{"prefix": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SubjectsSpec {
    List(Vec<String>),
    Prefix(SubjectPrefix),
}

/// `{"prefix": "spiffe://example.org/"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectPrefix {
    pub prefix: String,
}

/// A JWKS fetched through the proxy: the one remote-source type (defaults for this resource:
/// refresh every 600 s, timeout 5 s, at most 256 KiB; `max_bytes` up to 16 MiB; early refetch
/// for unknown `kid`s at most every 30 s). jwt_authn's `cache_duration_seconds` and our former
/// `unknown_kid_refetch_seconds` are accepted spellings of `refresh_seconds` and `early_refetch_seconds`.
pub type RemoteJwksSpec = RemoteSourceSpec;

/// A header carrying the token, optionally after a prefix (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderSourceSpec {
    /// Header name (case-insensitive).
    pub name: String,
    /// Text before the token, e.g. `Bearer ` (a value without it carries no token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_prefix: Option<String>,
}

/// Copy one claim into one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    /// Claim path, dot-separated for nested claims: `realm_access.roles`.
    pub claim: String,
    /// Header to set. Strings are copied as they are, numbers and booleans as JSON text,
    /// objects and arrays as base64url of their JSON.
    pub header: String,
}

/// One rule (or the default): which tokens a request needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtRule {
    /// Name used in logs and the decision header (default `rules[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests this rule applies to; absent matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    /// The token requirement; absent: no token is needed (as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<RequirementSpec>,
    /// Scopes the token must all have (`scope`: space-separated string, or `scp`: array or string).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Claim conditions the token must all meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimRequirementSpec>,
    /// Let CORS preflight requests (`OPTIONS` with `origin` and `access-control-request-method`)
    /// through without a token (default true).
    #[serde(default = "default_true")]
    pub cors_preflight_passes: bool,
}

impl Default for JwtRule {
    fn default() -> Self {
        Self { name: None, matcher: None, requires: None, scopes: Vec::new(), claims: Vec::new(), cors_preflight_passes: true }
    }
}

impl RuleSpec for JwtRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matcher(&self) -> Option<&MatchSpec> {
        self.matcher.as_ref()
    }
}

/// A token requirement, as in Envoy's `JwtRequirement`: `{"provider": "a"}`,
/// `{"provider_and_audiences": {"provider": "a", "audiences": ["x"]}}`,
/// `{"requires_any": [...]}`, `{"requires_all": [...]}`, `"allow_missing"`,
/// `"allow_missing_or_failed"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequirementSpec {
    /// A valid token of this provider.
    Provider(String),
    /// A valid token of this provider, with these audiences in place of the provider's own.
    ProviderAndAudiences(ProviderAndAudiencesSpec),
    /// At least one of these requirements.
    RequiresAny(Vec<RequirementSpec>),
    /// Every one of these requirements.
    RequiresAll(Vec<RequirementSpec>),
    /// No token passes; a token present must be valid for some provider.
    AllowMissing,
    /// Always passes; a valid token still has its claims forwarded.
    AllowMissingOrFailed,
}

/// `{"provider": "a", "audiences": ["orders-api"]}`: Envoy's `provider_and_audiences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderAndAudiencesSpec {
    /// The provider whose token is required.
    pub provider: String,
    /// The audiences accepted for this requirement (one must be in the token's `aud`); they
    /// replace the provider's `audiences` here only.
    pub audiences: Vec<String>,
}

/// One claim condition. Give exactly one of `equals`, `in`, `equals_header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequirementSpec {
    /// Claim path, dot-separated for nested claims.
    pub name: String,
    /// The claim equals this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The claim is one of these values.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    /// The claim equals the value of this request header (which must be present), e.g. a
    /// tenant header that must match the `tenant` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals_header: Option<String>,
}

fn default_realm() -> String {
    "gatewarden".into()
}
fn default_token_cache_entries() -> usize {
    1024
}
fn default_max_request_headers() -> usize {
    200
}
fn default_clock_skew_seconds() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_max_token_bytes() -> usize {
    8192
}
