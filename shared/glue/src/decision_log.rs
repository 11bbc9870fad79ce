//! One structured JSON log line per denial (and per dry-run denial): filter, decision, reason,
//! rule, policy_version, request id, client address. Never a secret: callers pass only these.

use serde_json::json;

/// The fields of one decision log line.
pub struct DecisionRecord<'a> {
    pub filter: &'a str,
    /// `deny` or `dry_run_deny`.
    pub decision: &'a str,
    pub reason: &'a str,
    pub rule: &'a str,
    pub policy_version: &'a str,
    pub request_id: &'a str,
    pub client: &'a str,
    /// Filter-specific detail that is safe to log (e.g. the country), may be empty.
    pub detail: &'a str,
}

impl DecisionRecord<'_> {
    /// The JSON line.
    pub fn to_line(&self) -> String {
        let mut v = json!({
            "gatewarden": "decision",
            "filter": self.filter,
            "decision": self.decision,
            "reason": self.reason,
            "rule": self.rule,
            "policy_version": self.policy_version,
            "request_id": self.request_id,
            "client": self.client,
        });
        if !self.detail.is_empty() {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("detail".into(), self.detail.into());
            }
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_json_with_all_fields_escaped() {
        let line = DecisionRecord {
            filter: "ip_geo",
            decision: "deny",
            reason: "ip_denied",
            rule: "admin",
            policy_version: "v1",
            request_id: "abc\"def",
            client: "10.0.0.1",
            detail: "",
        }
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"], "abc\"def");
        assert_eq!(v["reason"], "ip_denied");
        assert!(v.get("detail").is_none());
    }
}
