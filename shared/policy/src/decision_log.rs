//! One structured JSON log line per denial (and per dry-run denial): filter, decision, reason,
//! rule, policy_version, request id, client address. Never a secret: callers pass only these.

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
    /// Under a canary rollout, which policy decided: `active` or `candidate`; empty (and left
    /// out of the line) without a rollout.
    pub rollout: &'a str,
}

impl DecisionRecord<'_> {
    /// The JSON line. Written by hand: `serde_json::Value` would pull its number formatting
    /// into every module for nothing.
    pub fn to_line(&self) -> String {
        let fields = [
            ("gatewarden", "decision"),
            ("filter", self.filter),
            ("decision", self.decision),
            ("reason", self.reason),
            ("rule", self.rule),
            ("policy_version", self.policy_version),
            ("request_id", self.request_id),
            ("client", self.client),
            ("detail", self.detail),
            ("rollout", self.rollout),
        ];
        let optional = |k: &str, v: &str| (k == "detail" || k == "rollout") && v.is_empty();
        json_line(fields.iter().filter(|(k, v)| !optional(k, v)).copied())
    }
}

impl std::fmt::Display for DecisionRecord<'_> {
    /// The JSON line, built only when the log level lets it through (the host's log call).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_line())
    }
}

/// One JSON object of string fields, on one line.
pub fn json_line<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    for (i, (k, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, k);
        out.push(':');
        push_json_string(&mut out, v);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal: the policy crate's writer (the one canonical JSON uses).
pub use crate::approvals::write_string as push_json_string;

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
            rollout: "",
        }
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"], "abc\"def");
        assert_eq!(v["reason"], "ip_denied");
        assert!(v.get("detail").is_none());
        assert!(v.get("rollout").is_none());
        let mut s = String::new();
        push_json_string(&mut s, "a\u{1}\n\\");
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "a\u{1}\n\\");
    }
}
