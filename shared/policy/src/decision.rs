//! Decisions: allow, or deny with a fixed public response and an internal reason.

use std::sync::Arc;

/// The public JSON body of a 403. Fixed: the reason stays in the log.
pub const FORBIDDEN_BODY: &str = r#"{"error":"forbidden","message":"access denied by policy"}"#;
/// The public JSON body of a 401.
pub const UNAUTHORIZED_BODY: &str = r#"{"error":"unauthorized","message":"authentication required"}"#;
/// The public JSON body when the filter itself cannot decide (no valid policy loaded).
pub const UNAVAILABLE_BODY: &str = r#"{"error":"unavailable","message":"policy unavailable"}"#;

/// A denial: what the client sees (`status`, `body`, extra `headers`) and why (`reason`, logged
/// and counted, never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub body: &'static str,
    /// A fixed snake_case reason, part of the counter name `gatewarden_<filter>_denied_<reason>`.
    pub reason: &'static str,
}

/// Allow or deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Denial),
}

/// A policy's decision for one request: the verdict and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub rule: Arc<str>,
    pub verdict: Verdict,
}

impl Decision {
    pub fn allow(rule: &Arc<str>) -> Self {
        Self { rule: Arc::clone(rule), verdict: Verdict::Allow }
    }

    pub fn deny(rule: &Arc<str>, denial: Denial) -> Self {
        Self { rule: Arc::clone(rule), verdict: Verdict::Deny(denial) }
    }

    /// The denial reason, if denied.
    pub fn reason(&self) -> Option<&'static str> {
        match &self.verdict {
            Verdict::Allow => None,
            Verdict::Deny(d) => Some(d.reason),
        }
    }
}
