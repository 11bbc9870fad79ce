//! The ordered rule list every filter shares: the first rule whose `match` matches decides;
//! when none matches, `default` decides.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{quote, ConfigError, FieldPath};
use crate::request::facts::{HeaderNeeds, RequestFacts};
use crate::request::matcher::{MatchSpec, RequestMatcher};

/// What the rule list needs from a filter's rule type.
pub trait RuleSpec {
    /// The rule's name, used in logs, metrics and the decision header.
    fn name(&self) -> Option<&str>;
    /// The rule's `match` block; `None` matches every request.
    fn matcher(&self) -> Option<&MatchSpec>;
}

/// A compiled rule: its name, matcher and the filter's compiled action.
#[derive(Debug, Clone)]
pub struct CompiledRule<A> {
    /// The rule's `name`, or `rules[i]` when unnamed, or `default`.
    pub name: Arc<str>,
    matcher: Option<RequestMatcher>,
    pub action: A,
}

/// Compiled rules plus default.
#[derive(Debug, Clone)]
pub struct RuleSet<A> {
    rules: Vec<CompiledRule<A>>,
    default: CompiledRule<A>,
}

impl<A> RuleSet<A> {
    /// Compiles `rules` and `default`; `compile_action` compiles a rule's filter-specific part,
    /// given the rule and its field path.
    pub fn compile<R: RuleSpec>(
        rules: &[R],
        default: &R,
        mut compile_action: impl FnMut(&R, &FieldPath) -> Result<A, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let rules_path = FieldPath::root().field("rules");
        let mut names = HashSet::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let path = rules_path.index(i);
            let name: Arc<str> = match rule.name() {
                Some(n) => {
                    validate_name(n, &path.field("name"))?;
                    if !names.insert(n.to_owned()) {
                        return Err(path.field("name").error(format!("duplicate rule name {}", quote(n))));
                    }
                    Arc::from(n)
                }
                None => Arc::from(path.as_str()),
            };
            let matcher = rule.matcher().map(|m| RequestMatcher::compile(m, &path.field("match"))).transpose()?;
            let action = compile_action(rule, &path)?;
            compiled.push(CompiledRule { name, matcher, action });
        }
        let default_path = FieldPath::root().field("default");
        if rule_has_name_or_match(default) {
            return Err(default_path.error("the default takes no \"name\" and no \"match\""));
        }
        let default = CompiledRule { name: Arc::from("default"), matcher: None, action: compile_action(default, &default_path)? };
        Ok(Self { rules: compiled, default })
    }

    /// The first rule that matches `facts`, or the default.
    pub fn select(&self, facts: &RequestFacts<'_>) -> &CompiledRule<A> {
        self.rules.iter().find(|r| r.matcher.as_ref().is_none_or(|m| m.matches(facts))).unwrap_or(&self.default)
    }

    /// Adds the headers rule selection reads.
    pub fn add_needs(&self, needs: &mut HeaderNeeds) {
        for m in self.rules.iter().filter_map(|r| r.matcher.as_ref()) {
            m.add_needs(needs);
        }
    }

    /// Every rule, then the default.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledRule<A>> {
        self.rules.iter().chain(std::iter::once(&self.default))
    }
}

fn rule_has_name_or_match<R: RuleSpec>(r: &R) -> bool {
    r.name().is_some() || r.matcher().is_some()
}

fn validate_name(n: &str, path: &FieldPath) -> Result<(), ConfigError> {
    let ok = !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(path.error(format!("invalid rule name {}: use 1 to 64 characters from A-Z a-z 0-9 - _ . : /", quote(n))))
    }
}
