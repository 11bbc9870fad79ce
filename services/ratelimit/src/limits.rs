//! The limits the service knows: read from the rate-limit policy file the filter uses.
//!
//! ```text
//! policy.json ─ compile::<RateLimitPolicy> (every field checked, errors with field paths)
//!             ─ each rule's limits ─▶ LimitBook { "api/per_ip" → Limit, … }
//! ```
//!
//! A limit is known as `"<rule name>/<limit name>"` (an unnamed rule is `rules[i]`, the default rule
//! `default`, as everywhere else): the value of the `gatewarden_limit` descriptor entry
//! (`/tmp/lead/contract13.md`, in the README). Which limits are served: those with `"scope": "fleet"`;
//! a document in which no limit has a `scope` at all (written before fleet scopes existed, or only for
//! this service) has every limit served. The rollout candidate is validated, not served.
//!
//! One restriction beyond the filter's: Redis runs the check in Lua, whose numbers are doubles, exact
//! for integers up to 2^53. A bucket's tolerance (`burst × period / rate`) above 2^51 µs (71 years)
//! would leave that range, so such a limit is refused with its field path.

use std::collections::HashMap;
use std::sync::Arc;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::{codec::parse_json, compile, PolicyDocument};
use gatewarden_rate_limit_policy::{Limit, LimitSpec, RateLimitDocument, RateLimitPolicy, RateLimitRule};
use serde_json::Value;

/// The largest tolerance (µs) the Lua script computes exactly: `now + 2τ` stays below 2^53.
pub const MAX_TOLERANCE_US: u64 = 1 << 51;

/// The descriptor entry that names the limit (`"<rule>/<limit>"`).
pub const LIMIT_ENTRY_KEY: &str = "gatewarden_limit";

/// One limit served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookLimit {
    /// `"<rule>/<limit>"`.
    pub name: Arc<str>,
    pub limit: Limit,
}

/// Every limit served, by name, and the policy version they came from.
#[derive(Debug, Clone, Default)]
pub struct LimitBook {
    pub policy_version: String,
    /// `fleet.domain` when the policy has one.
    pub domain: Option<String>,
    limits: HashMap<Arc<str>, BookLimit>,
}

impl LimitBook {
    /// Reads a policy document (JSON bytes). Refused exactly as the filter refuses it, plus the Lua range
    /// check above.
    pub fn from_policy(bytes: &[u8]) -> Result<LimitBook, ConfigError> {
        // The filter's own compiler checks every field; the typed document then lists the limits.
        compile::<RateLimitPolicy>(bytes)?;
        let doc: RateLimitDocument = parse_json(bytes)?;
        let raw: Value = parse_json(bytes)?;
        let any_scope = all_limits(&raw).any(|limit| limit.get("scope").is_some());
        let mut book = LimitBook {
            policy_version: doc.policy_version().to_owned(),
            domain: raw.get("fleet").and_then(|f| f.get("domain")).and_then(Value::as_str).map(str::to_owned),
            limits: HashMap::new(),
        };
        let rules_path = FieldPath::root().field("rules");
        let named = doc.rules().iter().enumerate().map(|(i, rule)| {
            let path = rules_path.index(i);
            let name = rule.name.clone().unwrap_or_else(|| path.as_str().to_owned());
            (name, path, rule, raw.get("rules").and_then(|r| r.get(i)))
        });
        let default = ("default".to_owned(), FieldPath::root().field("default"), doc.default_rule(), raw.get("default"));
        for (rule_name, path, rule, raw_rule) in named.chain(std::iter::once(default)) {
            book.add_rule(&rule_name, &path, rule, raw_rule, any_scope)?;
        }
        Ok(book)
    }

    fn add_rule(
        &mut self,
        rule_name: &str,
        path: &FieldPath,
        rule: &RateLimitRule,
        raw_rule: Option<&Value>,
        any_scope: bool,
    ) -> Result<(), ConfigError> {
        for (j, spec) in rule.limits.iter().enumerate() {
            let scope = raw_rule.and_then(|r| r.get("limits")).and_then(|l| l.get(j)).and_then(|l| l.get("scope")).and_then(Value::as_str);
            let served = if any_scope { scope == Some("fleet") } else { true };
            if !served {
                continue;
            }
            let limit_path = path.field("limits").index(j);
            let limit = compile_limit(spec).ok_or_else(|| limit_path.error("invalid limit"))?;
            if limit.tolerance_us > MAX_TOLERANCE_US {
                return Err(limit_path.field("burst").error(format!(
                    "{} × {} s / {} is more than the service's 71 years of tolerance (Redis computes in doubles)",
                    limit.burst, limit.period_seconds, limit.rate
                )));
            }
            let name: Arc<str> = Arc::from(format!("{rule_name}/{}", spec.name));
            if self.limits.contains_key(&name) {
                return Err(limit_path.field("name").error(format!("limit {} is defined twice", quote(&name))));
            }
            self.limits.insert(Arc::clone(&name), BookLimit { name, limit });
        }
        Ok(())
    }

    /// The limit named `"<rule>/<limit>"`.
    pub fn get(&self, name: &str) -> Option<&BookLimit> {
        self.limits.get(name)
    }

    /// The number of limits served.
    pub fn len(&self) -> usize {
        self.limits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Every served limit's name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.limits.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }
}

/// The limit as the filter compiles it (the compiler already accepted the document, so this is `Some`).
fn compile_limit(spec: &LimitSpec) -> Option<Limit> {
    let period = match (spec.per_seconds, spec.per) {
        (Some(seconds), _) => seconds,
        (None, Some(per)) => per.seconds(),
        (None, None) => return None,
    };
    Limit::new(spec.rate, period, spec.burst.unwrap_or(spec.rate))
}

/// Every limit object of the raw document (rules and default).
fn all_limits(raw: &Value) -> impl Iterator<Item = &Value> {
    let rules = raw.get("rules").and_then(Value::as_array).into_iter().flatten();
    rules.chain(raw.get("default")).filter_map(|rule| rule.get("limits").and_then(Value::as_array)).flatten()
}
