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
        /// Number of keys tracked at once (default 65,536; 8 to 16,777,216, rounded down to a
        /// multiple of 8). The table never grows: a key may sit in the 8 slots of one set; a new
        /// key replaces a full bucket, else the fullest, never a bucket that is currently limited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_keys: Option<u32>,
        /// Where the fleet limits (`"scope": "fleet"`) are checked: a rate limit service shared
        /// by every gateway. Required when any limit has `"scope": "fleet"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub fleet: Option<FleetSpec>,
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
    /// Where the limit is counted (default `local`): on this gateway, or across the fleet by
    /// the policy's `fleet` service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// On this gateway: all its workers share one bucket per key (Proxy-Wasm shared data).
    #[default]
    Local,
    /// Across every gateway using the same `fleet.service`: checked by one call per request
    /// (or per lease) to a rate limit service speaking `envoy.service.ratelimit.v3`.
    Fleet,
}

/// The rate limit service that counts the fleet limits, and what happens when it cannot answer.
///
/// A request whose rule has fleet limits is checked locally first (its local limits; a request
/// denied there never calls out), then by one `ShouldRateLimit` call carrying one descriptor per
/// fleet limit of the rule (`gatewarden_limit` = `<rule>/<limit>`, then the key parts) and the
/// request's cost as `hits_addend`. The local limits it was charged stay charged when the
/// service denies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Where the service listens.
    pub service: FleetServiceSpec,
    /// The `domain` of every request (default `gatewarden`): selects the service's limits.
    /// 1 to 128 characters from `A-Z a-z 0-9 - _ . : /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// What happens when the service does not answer in time, fails, or answers something
    /// unreadable (default: the policy's `failure_mode`): `allow`, `deny` (503), or `local`
    /// (the fleet limits are enforced by this gateway alone, in its local key table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FleetFailureMode>,
    /// Lease mode (optional): each worker asks for `units` at once and admits locally until
    /// they are spent or `lease_ms` has passed, so a fleet limit costs about one call per
    /// `units` requests per worker and key. Units are charged by the service before they are
    /// spent, so a fleet limit is never exceeded; units left unspent expire (the fleet admits
    /// less, never more). A key the service refused is denied without a call for the shortest
    /// emission interval (period / rate) of the refusing limits, at most `lease_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseSpec>,
}

/// The rate limit service's address. Give `cluster` for Envoy, `address` for Kong's engine, or
/// both so that one policy file serves both proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetServiceSpec {
    /// Envoy: the name of the cluster of the service (HTTP/2 for gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Kong's engine (ngx_wasm_module): the service as `host:port` (an IP, or a name nginx
    /// resolves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `:authority` of HTTP calls (default: the cluster name or the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// How long a request waits for the answer, in milliseconds (default 200; 1 to 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `grpc` (`RateLimitService/ShouldRateLimit`) or `http` (`POST /json`, envoyproxy/ratelimit's
    /// JSON endpoint). Default: `grpc` on Envoy, `http` on Kong's engine, which has no gRPC (a
    /// policy asking for `grpc` there is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<FleetProtocol>,
}

/// The protocol of the rate limit service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetProtocol {
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over gRPC (Envoy only).
    Grpc,
    /// The same message as protojson in `POST /json` over HTTP/1.1.
    Http,
}

/// What happens to a request whose fleet check got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetFailureMode {
    /// Let it through (its local limits still applied).
    Allow,
    /// Deny it (`fleet_unavailable`, 503).
    Deny,
    /// Check the fleet limits on this gateway's local key table instead, as if they were local
    /// limits: each gateway then admits up to the whole fleet limit on its own.
    Local,
}

/// Lease mode: units asked for at once, and how long unspent units stay usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseSpec {
    /// Units asked for per call (`hits_addend`): 2 to 100,000, and at most the `burst` of
    /// every fleet limit (a larger ask could never be granted).
    pub units: u32,
    /// How long leased units stay usable, in milliseconds (1 to 60,000). A fleet limit's
    /// admissions in any window are at most what the service granted over that window widened
    /// by `lease_ms`: keep it short against the limit's period.
    pub lease_ms: u64,
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
