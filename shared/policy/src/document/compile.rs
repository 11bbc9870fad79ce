//! Bytes to a compiled policy set: what `on_configure` and `gatewarden validate` both run.

use super::filter::FilterPolicy;
use super::rollout::{PolicySet, Rollout};
use super::spec::PolicyDocument;
use crate::codec::parse_json;
use crate::error::ConfigError;

/// Parses and compiles a policy document and its rollout candidate: what `on_configure` and
/// `gatewarden validate` both run. Errors in the candidate carry the `rollout.candidate.` prefix.
pub fn compile_set<P: FilterPolicy>(bytes: &[u8]) -> Result<PolicySet<P>, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new("", "empty configuration: a policy document is required"));
    }
    let mut doc = parse_json::<P::Document>(bytes)?;
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
