//! [`FilterPolicy`]: what a filter's compiled policy is to the envelope.

use super::header::Header;
use super::spec::PolicyDocument;
use crate::error::ConfigError;

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
