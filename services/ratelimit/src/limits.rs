//! The limits the service knows: read from the rate-limit policy file the filter uses.
//!
//! ```text
//! policy.json ─ compile::<RateLimitPolicy> (every field checked, errors with field paths)
//!             ─ each rule's limits ─▶ LimitBook { "api/per_ip" → Limit, … }
//! ```
//!
//! A limit is known as `"<rule name>/<limit name>"` (an unnamed rule is `rules[i]`, the default rule
//! `default`, as everywhere else): the value of the `gatewarden_limit` descriptor entry (the fleet
//! contract, in the README). Which limits are served: those with `"scope": "fleet"`; a document without
//! any fleet limit (written for this service alone, e.g. for Envoy's native ratelimit filter, which needs
//! no `fleet` section) has every limit served. The rollout candidate is validated, not served.
//!
//! One restriction beyond the filter's: Redis runs the check in Lua, whose numbers are doubles, exact
//! for integers up to 2^53. A bucket's tolerance (`burst × period / rate`) above 2^51 µs (71 years)
//! would leave that range, so such a limit is refused with its field path.

use std::collections::HashMap;
use std::sync::Arc;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::{codec::parse_json, compile, PolicyDocument};
use gatewarden_rate_limit_policy::{Limit, LimitSpec, RateLimitDocument, RateLimitPolicy, RateLimitRule, Scope};

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
        let policy = compile::<RateLimitPolicy>(bytes)?;
        let doc: RateLimitDocument = parse_json(bytes)?;
        let only_fleet = !policy.fleet_limits().is_empty();
        let mut book = LimitBook {
            policy_version: doc.policy_version().to_owned(),
            domain: policy.fleet().map(|fleet| fleet.domain.clone()),
            limits: HashMap::new(),
        };
        let rules_path = FieldPath::root().field("rules");
        let named = doc.rules().iter().enumerate().map(|(i, rule)| {
            let path = rules_path.index(i);
            let name = rule.name.clone().unwrap_or_else(|| path.as_str().to_owned());
            (name, path, rule)
        });
        let default = ("default".to_owned(), FieldPath::root().field("default"), doc.default_rule());
        for (rule_name, path, rule) in named.chain(std::iter::once(default)) {
            book.add_rule(&rule_name, &path, rule, only_fleet)?;
        }
        Ok(book)
    }

    fn add_rule(&mut self, rule_name: &str, path: &FieldPath, rule: &RateLimitRule, only_fleet: bool) -> Result<(), ConfigError> {
        for (j, spec) in rule.limits.iter().enumerate() {
            if only_fleet && spec.scope != Some(Scope::Fleet) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn book(json: &str) -> Result<LimitBook, String> {
        LimitBook::from_policy(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn with_fleet_limits_only_those_are_served_and_the_domain_is_the_policys() {
        let b = book(
            r#"{"policy_version": "v7", "fleet": {"service": {"cluster": "rls"}, "domain": "shop"},
                "rules": [{"name": "api", "limits": [{"name": "local", "rate": 5, "per": "1s"},
                                                     {"name": "global", "rate": 100, "per": "1m", "scope": "fleet"}]}],
                "default": {"limits": [{"name": "d", "rate": 1, "per": "1s", "scope": "fleet"}]}}"#,
        )
        .unwrap();
        assert_eq!(b.names(), ["api/global", "default/d"]);
        assert_eq!((b.policy_version.as_str(), b.domain.as_deref()), ("v7", Some("shop")));
        assert_eq!(b.get("api/global").unwrap().limit, Limit::new(100, 60, 100).unwrap());
        assert!(b.get("api/local").is_none());
    }

    #[test]
    fn without_fleet_limits_every_limit_is_served_under_its_rule_name() {
        let b = book(
            r#"{"policy_version": "v1",
                "rules": [{"name": "a", "limits": [{"name": "x", "rate": 2, "per_seconds": 10, "burst": 4}]},
                          {"match": {"path_prefix": "/b"}, "limits": [{"name": "y", "rate": 1, "per": "1h"}]}]}"#,
        )
        .unwrap();
        assert_eq!(b.names(), ["a/x", "rules[1]/y"]);
        assert_eq!(b.domain, None);
        let x = b.get("a/x").unwrap().limit;
        assert_eq!((x.rate, x.period_seconds, x.burst), (2, 10, 4));
    }

    #[test]
    fn refusals_name_the_field_and_quote_the_value() {
        assert_eq!(
            book(r#"{"policy_version": "v", "rules": [{"limits": [{"name": "x", "rate": 0, "per": "1s"}]}]}"#).unwrap_err(),
            "rules[0].limits[0].rate: must be at least 1, got 0"
        );
        assert_eq!(
            book(r#"{"policy_version": "v", "rules": [{"limits": [{"name": "x", "rate": 1, "per": "1d", "burst": 30000}]}]}"#).unwrap_err(),
            "rules[0].limits[0].burst: 30000 × 86400 s / 1 is more than the service's 71 years of tolerance (Redis computes in doubles)"
        );
        assert!(book("{").unwrap_err().contains("EOF"), "not JSON");
    }
}
