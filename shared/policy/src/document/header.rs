//! The compiled common header of a policy: what every request of every filter reads.

use std::sync::Arc;

use super::spec::{FailureMode, Mode, PolicyDocument};
use crate::error::{quote, ConfigError, FieldPath};
use crate::request::client_address::ClientAddressResolver;

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
            client_address: ClientAddressResolver::compile(doc.client_address(), &FieldPath::root().field("client_address"))?,
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
