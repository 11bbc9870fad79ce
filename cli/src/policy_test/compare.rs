//! Comparing what happened to a request with what its case expects.

use crate::policy_test::file::Expect;
use crate::run::Actual;

/// One field where the actual outcome differs from the expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: String,
    pub expected: String,
    pub actual: String,
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "(none)".to_string(), |s| format!("{s:?}"))
}

/// Compares what a case's requests met (`all`, in order; a case without `repeat` sent one) with
/// `expect`: `allowed` / `denied` count over all of them, every other field is checked against
/// the last one.
pub fn compare_all(expect: &Expect, all: &[Actual]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let reached = all.iter().filter(|a| a.upstream_received.is_some()).count();
    let answered = all.len() - reached;
    for (field, want, got) in [("allowed", expect.allowed, reached), ("denied", expect.denied, answered)] {
        if let Some(want) = want.filter(|w| usize::try_from(*w).ok() != Some(got)) {
            out.push(Mismatch { field: field.into(), expected: want.to_string(), actual: format!("{got} of {}", all.len()) });
        }
    }
    match all.last() {
        Some(last) => out.extend(compare(expect, last)),
        None => out.push(Mismatch { field: "requests".into(), expected: "at least 1".into(), actual: "0".into() }),
    }
    out
}

/// Compares `actual` with `expect`: the mismatches, empty when the case passes. `allowed` and
/// `denied` are [`compare_all`]'s.
pub fn compare(expect: &Expect, actual: &Actual) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if let Some(s) = expect.status.filter(|s| *s != actual.status) {
        out.push(Mismatch { field: "status".into(), expected: s.to_string(), actual: actual.status.to_string() });
    }
    fn check(out: &mut Vec<Mismatch>, field: String, want: Option<&str>, got: Option<&str>) {
        if want != got {
            out.push(Mismatch { field, expected: shown(want), actual: shown(got) });
        }
    }
    if let Some(d) = &expect.decision {
        check(&mut out, "decision".into(), Some(d), Some(&actual.decision));
    }
    if let Some(r) = &expect.reason {
        check(&mut out, "reason".into(), Some(r), actual.reason.as_deref());
    }
    if let Some(r) = &expect.rule {
        if actual.rule.is_none() && actual.decision == "allow" {
            // An allowed request names its rule only in the decision header.
            out.push(Mismatch {
                field: "rule".into(),
                expected: shown(Some(r)),
                actual: "(none: an allowed request names its rule only in the decision header; is `decision_header: false` set?)".into(),
            });
        } else {
            check(&mut out, "rule".into(), Some(r), actual.rule.as_deref());
        }
    }
    for (name, want) in &expect.upstream_headers {
        let name = name.to_ascii_lowercase();
        let got = actual.upstream_received.as_ref().and_then(|h| h.get(&name)).map(String::as_str);
        check(&mut out, format!("upstream_headers.{name}"), want.as_deref(), got);
    }
    for (name, want) in &expect.response_headers {
        let name = name.to_ascii_lowercase();
        check(&mut out, format!("response_headers.{name}"), want.as_deref(), actual.response_headers.get(&name).map(String::as_str));
    }
    if let Some(b) = &expect.body {
        check(&mut out, "body".into(), Some(b), actual.body.as_deref());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn actual() -> Actual {
        let mut a = Actual { status: 403, decision: "deny".into(), rule: Some("embargo".into()), ..Actual::default() };
        a.response_headers.insert("content-type".into(), "application/json".into());
        a
    }

    #[test]
    fn matching_expectations_pass() {
        let e = Expect { status: Some(403), rule: Some("embargo".into()), ..Expect::default() };
        assert!(compare(&e, &actual()).is_empty());
    }

    #[test]
    fn each_differing_field_is_reported_with_both_values() {
        let mut e = Expect { status: Some(200), decision: Some("allow".into()), reason: Some("x".into()), ..Expect::default() };
        e.upstream_headers.insert("X-User".into(), Some("u1".into()));
        e.response_headers.insert("content-type".into(), None);
        let d = compare(&e, &actual());
        let fields: Vec<&str> = d.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(fields, ["status", "decision", "reason", "upstream_headers.x-user", "response_headers.content-type"]);
        assert_eq!(d[0], Mismatch { field: "status".into(), expected: "200".into(), actual: "403".into() });
        assert_eq!(d[2].actual, "(none)");
        assert_eq!(d[4].expected, "(none)");
    }

    #[test]
    fn an_allowed_request_without_a_rule_points_at_the_decision_header() {
        let e = Expect { rule: Some("office".into()), ..Expect::default() };
        let allowed = Actual { status: 200, decision: "allow".into(), ..Actual::default() };
        let d = compare(&e, &allowed);
        assert_eq!(d.len(), 1);
        assert!(d[0].actual.contains("decision_header: false"), "{}", d[0].actual);
        // A denial without a rule is an ordinary mismatch.
        let denied = Actual { status: 403, decision: "deny".into(), ..Actual::default() };
        assert_eq!(compare(&e, &denied)[0].actual, "(none)");
    }

    #[test]
    fn repeated_requests_are_counted_and_the_last_one_checked() {
        let passed = Actual { status: 200, decision: "allow".into(), upstream_received: Some(BTreeMap::new()), ..Actual::default() };
        let limited = Actual { status: 429, decision: "deny".into(), ..Actual::default() };
        let all = vec![passed.clone(), passed, limited];
        let e = Expect { allowed: Some(2), denied: Some(1), status: Some(429), ..Expect::default() };
        assert!(compare_all(&e, &all).is_empty());
        let e = Expect { allowed: Some(3), denied: Some(0), status: Some(200), ..Expect::default() };
        let d = compare_all(&e, &all);
        assert_eq!(d[0], Mismatch { field: "allowed".into(), expected: "3".into(), actual: "2 of 3".into() });
        assert_eq!(d[1], Mismatch { field: "denied".into(), expected: "0".into(), actual: "1 of 3".into() });
        assert_eq!(d[2].field, "status");
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn null_header_expectation_passes_when_the_upstream_lacks_it() {
        let mut e = Expect::default();
        e.upstream_headers.insert("authorization".into(), None);
        let mut a = actual();
        a.upstream_received = Some(BTreeMap::from([("x-user".to_string(), "u".to_string())]));
        assert!(compare(&e, &a).is_empty());
        a.upstream_received = Some(BTreeMap::from([("authorization".to_string(), "Bearer t".to_string())]));
        assert_eq!(compare(&e, &a).len(), 1);
    }
}
