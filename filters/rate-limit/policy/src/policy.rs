//! The compiled rate-limit policy and its decision (semantics in the crate docs).

use std::net::IpAddr;
use std::sync::Arc;

use gatewarden_policy::decision::{Decision, Denial, FORBIDDEN_BODY, UNAVAILABLE_BODY};
use gatewarden_policy::document::{FailureMode, FilterPolicy, Header};
use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::{HeaderNeeds, RequestFacts};
use gatewarden_policy::rules::RuleSet;
use gatewarden_policy::Verdict;

use crate::config::{CostSpec, HeaderStyle, KeyPartSpec, LimitSpec, OnMissingKey, RateLimitDocument, RateLimitRule, Scope};
use crate::fleet::{self, Fleet, FleetCheck, FleetLimits, OwnedStatus};
use crate::gcra::{self, Limit};
use crate::key::{build_key, BucketKey, KeyOutcome, KeyPart};
use crate::response::{self, LimitStatus, LIMITED_BODY, PROBLEM_JSON};
use crate::table::{charge, KeyState, TableFull};

/// Limits per rule: the state words of one key fit one table slot.
pub const MAX_LIMITS_PER_RULE: usize = 8;
/// Keys tracked when `max_keys` is not given.
pub const DEFAULT_MAX_KEYS: u32 = 65_536;
const MIN_MAX_KEYS: u32 = crate::table::WAYS as u32;
const MAX_MAX_KEYS: u32 = 1 << 24;
const MAX_PERIOD_SECONDS: u64 = 31_536_000;
const MAX_BURST: u64 = 1_000_000_000;

/// The public body of a 400 for a malformed cost header.
pub const BAD_REQUEST_BODY: &str = r#"{"error":"bad_request","message":"invalid request cost"}"#;

/// Why the rate-limit filter denied a request. Each is a counter `gatewarden_rate_limit_denied_<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitReason {
    /// A limit is exhausted (429, `Retry-After`).
    Limited,
    /// The request's cost is above a limit's burst: never admitted (429, no `Retry-After`).
    CostOverBurst,
    /// The cost header is not a decimal integer or is above its `max` (400).
    CostInvalid,
    /// A key part is missing and `on_missing_key` is `deny` (403).
    KeyMissing,
    /// Every candidate slot of a new key holds a limited bucket and `failure_mode` is `deny` (503).
    TableFull,
    /// A fleet limit is exhausted: the rate limit service answered `OVER_LIMIT`, or, with
    /// `fleet.failure_mode: local`, this gateway's own check of it (429, as `limited`; a
    /// reason of its own so that fleet denials are counted apart from local ones).
    FleetLimited,
    /// The rate limit service gave no usable answer and `fleet.failure_mode` is `deny` (503).
    FleetUnavailable,
}

impl RateLimitReason {
    pub const ALL: [RateLimitReason; 7] = [
        Self::Limited,
        Self::CostOverBurst,
        Self::CostInvalid,
        Self::KeyMissing,
        Self::TableFull,
        Self::FleetLimited,
        Self::FleetUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Limited => "limited",
            Self::CostOverBurst => "cost_over_burst",
            Self::CostInvalid => "cost_invalid",
            Self::KeyMissing => "key_missing",
            Self::TableFull => "table_full",
            Self::FleetLimited => "fleet_limited",
            Self::FleetUnavailable => "fleet_unavailable",
        }
    }

    /// The status and fixed body. A 429's body with the violated limits' names is in
    /// [`RateLimitOutcome::body`]; `LIMITED_BODY` is the same problem without them.
    pub const fn denial(self) -> Denial {
        let (status, body) = match self {
            Self::Limited | Self::CostOverBurst | Self::FleetLimited => (429, LIMITED_BODY),
            Self::CostInvalid => (400, BAD_REQUEST_BODY),
            Self::KeyMissing => (403, FORBIDDEN_BODY),
            Self::TableFull | Self::FleetUnavailable => (503, UNAVAILABLE_BODY),
        };
        Denial { status, body, reason: self.as_str() }
    }
}

/// A request's cost, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cost {
    Fixed(u64),
    Header { name: String, max: u64, default: u64 },
}

#[derive(Debug, Clone)]
struct RateLimitAction {
    /// The local limits (`scope: local`).
    limits: Vec<(Arc<str>, Limit)>,
    /// The fleet limits (`scope: fleet`), checked by the rate limit service after the local ones.
    fleet: Option<FleetLimits>,
    cost: Cost,
    key: Vec<KeyPart>,
    on_missing_key: OnMissingKey,
    headers: HeaderStyle,
    headers_on_allowed: bool,
}

/// What the rate-limit policy decided, and what it adds to the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOutcome {
    pub decision: Decision,
    /// The denial reason as an enum, `None` when allowed.
    pub reason: Option<RateLimitReason>,
    /// The 429 body naming the violated limits (`None`: the denial's fixed body).
    pub body: Option<String>,
    /// Headers of the local response when denied, or to add to the upstream's response when
    /// allowed (only with `headers_on_allowed`).
    pub response_headers: Vec<(String, String)>,
    /// The bucket key, when one was built (for the log line and the limit service).
    pub key: Option<BucketKey>,
    /// The request's cost, when known.
    pub cost: Option<u64>,
    /// The names of the limits that denied.
    pub violated: Vec<Arc<str>>,
    /// Set when the local limits admitted (and were charged) and the rule has fleet limits: the
    /// decision is not made yet, the rate limit service makes it ([`crate::fleet`]).
    pub fleet: Option<Box<FleetCheck>>,
    /// The client address (trusted hops applied), for the log line: set on a denial and on a
    /// fleet check; `None` when allowed or when it cannot be resolved.
    pub client: Option<IpAddr>,
}

impl RateLimitOutcome {
    fn allow(rule: &Arc<str>) -> Self {
        Self {
            decision: Decision::allow(rule),
            reason: None,
            body: None,
            response_headers: Vec::new(),
            key: None,
            cost: None,
            violated: Vec::new(),
            fleet: None,
            client: None,
        }
    }

    fn deny(rule: &Arc<str>, reason: RateLimitReason) -> Self {
        Self { decision: Decision::deny(rule, reason.denial()), reason: Some(reason), ..Self::allow(rule) }
    }
}

/// Where the state words live: the glue's shared-data table, or [`crate::MemoryTable`].
pub trait Buckets {
    /// Reads, changes and writes the state of the key `fingerprint` atomically. `f` gets the
    /// current state (all zeros for a key not yet in the table) and returns the state to store
    /// (see [`crate::table`]), or `None` to store nothing. `f` may be called more than once (a
    /// compare-and-swap retry); the last call's answer is the one stored. `Err(TableFull)` when
    /// the key is new and no slot may be taken. Use [`crate::table::charge`] rather than calling
    /// this directly.
    fn update(&mut self, fingerprint: u64, now: u64, f: &mut dyn FnMut(&KeyState) -> Option<KeyState>) -> Result<(), TableFull>;
}

/// A compiled rate-limit policy.
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    header: Header,
    rules: RuleSet<RateLimitAction>,
    max_keys: u32,
    fleet: Option<Fleet>,
}

/// A fleet limit as the rate limit service knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLimit {
    /// `<rule>/<limit>`: the `gatewarden_limit` descriptor entry's value.
    pub name: String,
    pub limit: Limit,
}

impl FilterPolicy for RateLimitPolicy {
    const NAME: &'static str = "rate_limit";
    type Document = RateLimitDocument;

    fn compile(doc: RateLimitDocument) -> Result<Self, ConfigError> {
        let header = Header::compile(&doc, Self::NAME)?;
        let max_keys = doc.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if !(MIN_MAX_KEYS..=MAX_MAX_KEYS).contains(&max_keys) {
            return Err(FieldPath::root().field("max_keys").error(format!("{max_keys} is not between {MIN_MAX_KEYS} and {MAX_MAX_KEYS}")));
        }
        let fleet = doc.fleet.as_ref().map(|f| Fleet::compile(f, doc.failure_mode, &FieldPath::root().field("fleet"))).transpose()?;
        let rules = RuleSet::compile(&doc.rules, &doc.default, |rule, path| compile_action(rule, path, fleet.as_ref()))?;
        Ok(Self { header, rules, max_keys, fleet })
    }

    fn header(&self) -> &Header {
        &self.header
    }

    fn check_candidate(&self, candidate: &Self) -> Result<(), ConfigError> {
        if candidate.max_keys != self.max_keys {
            return Err(FieldPath::root().field("max_keys").error(format!(
                "a candidate must use the active policy's max_keys ({}), got {}: the key table is shared; change its size in a policy without rollout",
                self.max_keys, candidate.max_keys
            )));
        }
        Ok(())
    }
}

impl RateLimitPolicy {
    /// The number of key-table slots (a multiple of [`crate::table::WAYS`]).
    pub fn max_keys(&self) -> u32 {
        crate::table::TableShape::new(self.max_keys).slots() as u32
    }

    /// The `fleet` section; `None` when no limit is a fleet limit.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// Every fleet limit of every rule (then the default), for the rate limit service.
    pub fn fleet_limits(&self) -> Vec<FleetLimit> {
        self.rules
            .iter()
            .flat_map(|rule| {
                rule.action
                    .fleet
                    .iter()
                    .flat_map(|limits| limits.iter())
                    .map(|(name, limit)| FleetLimit { name: format!("{}/{name}", rule.name), limit: *limit })
            })
            .collect()
    }

    /// The request headers `decide` reads.
    pub fn header_needs(&self) -> HeaderNeeds {
        let mut needs = HeaderNeeds::default();
        self.rules.add_needs(&mut needs);
        for rule in self.rules.iter() {
            let a = &rule.action;
            if a.limits.is_empty() && a.fleet.is_none() {
                continue;
            }
            if let Cost::Header { name, .. } = &a.cost {
                needs.add(name);
            }
            for part in &a.key {
                match part {
                    KeyPart::ClientAddress => self.header.client_address.add_needs(&mut needs),
                    KeyPart::Header(h) | KeyPart::ClaimHeader(h) => needs.add(h),
                    KeyPart::Path => needs.add(":path"),
                    KeyPart::Method => needs.add(":method"),
                    KeyPart::Rule => {}
                }
            }
        }
        needs
    }

    /// Decides one request at `now_us` (µs since the Unix epoch). `seed` keys the key hash (see
    /// [`crate::key::build_key`]); `buckets` holds the state. Deny-if-any: a denied request
    /// charges no limit. In `dry_run` the glue lets a denied request through; it is not charged.
    pub fn decide(&self, facts: &RequestFacts<'_>, now_us: u64, seed: u64, buckets: &mut dyn Buckets) -> RateLimitOutcome {
        let mut out = self.decide_without_client(facts, now_us, seed, buckets);
        // Resolved only for the log line of a denial, or a fleet check that may become one.
        if matches!(out.decision.verdict, Verdict::Deny(_)) || out.fleet.is_some() {
            out.client = self.header.client_address.resolve(facts).ok();
            if let Some(check) = out.fleet.as_mut() {
                check.client = out.client;
            }
        }
        out
    }

    fn decide_without_client(&self, facts: &RequestFacts<'_>, now_us: u64, seed: u64, buckets: &mut dyn Buckets) -> RateLimitOutcome {
        let rule = self.rules.select(facts);
        let a = &rule.action;
        if a.limits.is_empty() && a.fleet.is_none() {
            return RateLimitOutcome::allow(&rule.name);
        }
        let Some(cost) = request_cost(&a.cost, facts) else {
            return RateLimitOutcome::deny(&rule.name, RateLimitReason::CostInvalid);
        };
        let key = match build_key(&a.key, &rule.name, a.on_missing_key, facts, &self.header.client_address, seed, a.fleet.is_some()) {
            KeyOutcome::Key(k) => k,
            KeyOutcome::Unlimited => return RateLimitOutcome::allow(&rule.name),
            KeyOutcome::Missing(_) => {
                return RateLimitOutcome { cost: Some(cost), ..RateLimitOutcome::deny(&rule.name, RateLimitReason::KeyMissing) }
            }
        };
        if a.limits.is_empty() {
            // Fleet limits only: nothing to charge here.
            let mut out = RateLimitOutcome { cost: Some(cost), ..RateLimitOutcome::allow(&rule.name) };
            out.fleet = a.fleet.as_ref().map(|f| fleet_check(&rule.name, a, f, &key, cost, Vec::new()));
            out.key = Some(key);
            return out;
        }
        let result = match charge(buckets, key.fingerprint, now_us, &a.limits, cost) {
            Ok(r) => r,
            Err(TableFull) => {
                return if self.header.failure_mode == FailureMode::Deny {
                    RateLimitOutcome { key: Some(key), cost: Some(cost), ..RateLimitOutcome::deny(&rule.name, RateLimitReason::TableFull) }
                } else {
                    RateLimitOutcome { key: Some(key), cost: Some(cost), ..RateLimitOutcome::allow(&rule.name) }
                };
            }
        };
        let statuses: Vec<LimitStatus<'_>> = a
            .limits
            .iter()
            .zip(&result.states)
            .map(|((name, limit), s)| LimitStatus {
                name,
                limit,
                remaining: gcra::remaining(*s, now_us, limit),
                reset_us: gcra::reset_us(*s, now_us),
            })
            .collect();
        if result.admitted() {
            if let Some(f) = &a.fleet {
                // The fleet decides; the headers are built once its answer is known.
                let local = statuses.iter().map(|s| OwnedStatus {
                    name: Arc::from(s.name),
                    limit: *s.limit,
                    remaining: s.remaining,
                    reset_us: s.reset_us,
                });
                let check = fleet_check(&rule.name, a, f, &key, cost, local.collect());
                return RateLimitOutcome { key: Some(key), cost: Some(cost), fleet: Some(check), ..RateLimitOutcome::allow(&rule.name) };
            }
            let mut out = RateLimitOutcome { key: Some(key), cost: Some(cost), ..RateLimitOutcome::allow(&rule.name) };
            if a.headers_on_allowed {
                out.response_headers = response::rate_limit_headers(a.headers, &statuses);
            }
            return out;
        }
        let violated: Vec<Arc<str>> = result.denied.iter().filter_map(|&i| a.limits.get(i).map(|(n, _)| Arc::clone(n))).collect();
        let names: Vec<&str> = violated.iter().map(|n| &**n).collect();
        let reason = if result.never { RateLimitReason::CostOverBurst } else { RateLimitReason::Limited };
        let mut headers = vec![("content-type".to_owned(), PROBLEM_JSON.to_owned())];
        if let Some(us) = result.retry_after_us {
            headers.push(response::retry_after(us));
        }
        headers.extend(response::rate_limit_headers(a.headers, &statuses));
        RateLimitOutcome {
            body: Some(response::problem_body(&names)),
            response_headers: headers,
            key: Some(key),
            cost: Some(cost),
            violated,
            ..RateLimitOutcome::deny(&rule.name, reason)
        }
    }
}

fn fleet_check(
    rule: &Arc<str>,
    a: &RateLimitAction,
    limits: &FleetLimits,
    key: &BucketKey,
    cost: u64,
    local: Vec<OwnedStatus>,
) -> Box<FleetCheck> {
    Box::new(FleetCheck {
        rule: Arc::clone(rule),
        limits: Arc::clone(limits),
        key: key.clone(),
        key_entries: fleet::key_entries(&a.key, key),
        cost,
        local,
        headers: a.headers,
        headers_on_allowed: a.headers_on_allowed,
        client: None,
    })
}

/// The request's cost; `None` when the cost header is malformed or above its max.
fn request_cost(cost: &Cost, facts: &RequestFacts<'_>) -> Option<u64> {
    match cost {
        Cost::Fixed(n) => Some(*n),
        Cost::Header { name, max, default } => match facts.header(name) {
            None => Some(*default),
            Some(v) => {
                let v = v.trim();
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                v.parse::<u64>().ok().filter(|n| n <= max)
            }
        },
    }
}

fn compile_action(rule: &RateLimitRule, path: &FieldPath, fleet: Option<&Fleet>) -> Result<RateLimitAction, ConfigError> {
    let limits_path = path.field("limits");
    if rule.limits.len() > MAX_LIMITS_PER_RULE {
        return Err(limits_path.error(format!("at most {MAX_LIMITS_PER_RULE} limits per rule, got {}", rule.limits.len())));
    }
    let mut limits: Vec<(Arc<str>, Limit)> = Vec::with_capacity(rule.limits.len());
    let mut fleet_limits: Vec<(Arc<str>, Limit)> = Vec::new();
    for (i, spec) in rule.limits.iter().enumerate() {
        let p = limits_path.index(i);
        let limit = compile_limit(spec, &p)?;
        if limits.iter().chain(&fleet_limits).any(|(n, _)| **n == *spec.name) {
            return Err(p.field("name").error(format!("duplicate limit name {}", quote(&spec.name))));
        }
        match spec.scope.unwrap_or_default() {
            Scope::Local => limits.push((Arc::from(spec.name.as_str()), limit)),
            Scope::Fleet => {
                let Some(f) = fleet else {
                    return Err(p.field("scope").error("\"fleet\" needs the policy's \"fleet\" section (the rate limit service)"));
                };
                let rule_name = rule.name.as_deref().unwrap_or(path.as_str());
                f.check_limit(rule_name, &spec.name, &limit, &p)?;
                fleet_limits.push((Arc::from(spec.name.as_str()), limit));
            }
        }
    }

    let cost_path = path.field("cost");
    let cost = match &rule.cost {
        None => Cost::Fixed(1),
        Some(CostSpec::Fixed(n)) => {
            if *n == 0 {
                return Err(cost_path.error("must be at least 1, got 0"));
            }
            if let Some((name, l)) = limits.iter().chain(&fleet_limits).find(|(_, l)| *n > l.burst) {
                return Err(cost_path.error(format!(
                    "{n} is more than the burst {} of limit {}: every request would be denied",
                    l.burst,
                    quote(name)
                )));
            }
            Cost::Fixed(*n)
        }
        Some(CostSpec::Header(h)) => {
            let name = header_name(&h.header, &cost_path.field("header"))?;
            if h.max == 0 {
                return Err(cost_path.field("max").error("must be at least 1, got 0"));
            }
            let default = h.default.unwrap_or(1);
            if default > h.max {
                return Err(cost_path.field("default").error(format!("{default} is more than max {}", h.max)));
            }
            Cost::Header { name, max: h.max, default }
        }
    };

    let key_path = path.field("key");
    let key = match &rule.key {
        None => vec![KeyPart::ClientAddress],
        Some(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                Ok(match part {
                    KeyPartSpec::ClientAddress => KeyPart::ClientAddress,
                    KeyPartSpec::Header(h) => KeyPart::Header(header_name(h, &key_path.index(i).field("header"))?),
                    KeyPartSpec::ClaimHeader(h) => KeyPart::ClaimHeader(header_name(h, &key_path.index(i).field("claim_header"))?),
                    KeyPartSpec::Path => KeyPart::Path,
                    KeyPartSpec::Method => KeyPart::Method,
                    KeyPartSpec::Rule => KeyPart::Rule,
                })
            })
            .collect::<Result<_, ConfigError>>()?,
    };

    Ok(RateLimitAction {
        limits,
        fleet: (!fleet_limits.is_empty()).then(|| FleetLimits::from(fleet_limits)),
        cost,
        key,
        on_missing_key: rule.on_missing_key.unwrap_or_default(),
        headers: rule.headers.unwrap_or_default(),
        headers_on_allowed: rule.headers_on_allowed.unwrap_or(false),
    })
}

fn compile_limit(spec: &LimitSpec, path: &FieldPath) -> Result<Limit, ConfigError> {
    let name_ok =
        !spec.name.is_empty() && spec.name.len() <= 64 && spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if !name_ok {
        return Err(path
            .field("name")
            .error(format!("invalid limit name {}: use 1 to 64 characters from A-Z a-z 0-9 - _ . : /", quote(&spec.name))));
    }
    if spec.rate == 0 {
        return Err(path.field("rate").error("must be at least 1, got 0"));
    }
    let period = match (spec.per_seconds, spec.per) {
        (Some(s), None) => {
            if !(1..=MAX_PERIOD_SECONDS).contains(&s) {
                return Err(path.field("per_seconds").error(format!("{s} is not between 1 and {MAX_PERIOD_SECONDS}")));
            }
            s
        }
        (None, Some(p)) => p.seconds(),
        (Some(_), Some(_)) => return Err(path.error("give either \"per\" or \"per_seconds\", not both")),
        (None, None) => return Err(path.error("give the period: \"per\" (1s, 1m, 1h, 1d) or \"per_seconds\"")),
    };
    let burst = spec.burst.unwrap_or(spec.rate);
    if !(1..=MAX_BURST).contains(&burst) {
        return Err(path.field("burst").error(format!("{burst} is not between 1 and {MAX_BURST}")));
    }
    Limit::new(spec.rate, period, burst)
        .ok_or_else(|| path.field("rate").error(format!("{} per {period} s is more than one unit per microsecond", spec.rate)))
}

/// A header name, lowercased: an HTTP token (RFC 9110), or a pseudo-header-free name.
fn header_name(name: &str, path: &FieldPath) -> Result<String, ConfigError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 128 || !name.bytes().all(tchar) {
        return Err(path.error(format!("invalid header name {}", quote(name))));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
