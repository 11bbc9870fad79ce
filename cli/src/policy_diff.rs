//! The semantic diff of two policies (the JSON the filter receives): which rules were added,
//! removed, changed (by name) or reordered (first match wins, so order matters), and which fields
//! changed, with their paths; lists of keys, CIDRs, countries, scopes as items added/removed.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// One change at a field path (`rules[embargo].deny_countries`, `providers.idp.audiences`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The field exists only in B.
    Added { path: String, value: Value },
    /// The field exists only in A.
    Removed { path: String, value: Value },
    /// The field's value differs.
    Changed { path: String, from: Value, to: Value },
    /// A list item (CIDR, country, scope, key …) only in B.
    ItemAdded { path: String, item: Value },
    /// A list item only in A.
    ItemRemoved { path: String, item: Value },
    /// Same items, another order.
    Reordered { path: String },
}

/// The diff of two policies.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyDiff {
    /// Changes outside `rules` (header, filter settings, `default`).
    pub fields: Vec<Change>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    /// Changes inside rules present in both, by rule name.
    pub rules_changed: Vec<(String, Vec<Change>)>,
    /// Rule order (names) in A and B when the common rules' order changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_order: Option<(Vec<String>, Vec<String>)>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.rules_changed.is_empty()
            && self.rule_order.is_none()
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_scalar(v: &Value) -> bool {
    !v.is_array() && !v.is_object()
}

fn named(items: &[Value]) -> Option<Vec<String>> {
    items.iter().map(|v| v.get("name").and_then(Value::as_str).map(str::to_string)).collect()
}

/// Appends the changes from `a` to `b` under `path`.
pub fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = join(path, k);
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_values(&p, va, vb, out),
                    (Some(va), None) => out.push(Change::Removed { path: p, value: va.clone() }),
                    (None, Some(vb)) => out.push(Change::Added { path: p, value: vb.clone() }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.iter().chain(y).all(is_scalar) => {
            let removed: Vec<&Value> = x.iter().filter(|v| !y.contains(v)).collect();
            let added: Vec<&Value> = y.iter().filter(|v| !x.contains(v)).collect();
            for v in &removed {
                out.push(Change::ItemRemoved { path: path.to_string(), item: (*v).clone() });
            }
            for v in &added {
                out.push(Change::ItemAdded { path: path.to_string(), item: (*v).clone() });
            }
            if removed.is_empty() && added.is_empty() && x != y {
                out.push(Change::Reordered { path: path.to_string() });
            }
        }
        (Value::Array(x), Value::Array(y)) => match (named(x), named(y)) {
            (Some(nx), Some(ny)) => {
                for (n, va) in nx.iter().zip(x) {
                    let p = format!("{path}[{n}]");
                    match ny.iter().zip(y).find(|(m, _)| *m == n) {
                        Some((_, vb)) => diff_values(&p, va, vb, out),
                        None => out.push(Change::Removed { path: p, value: va.clone() }),
                    }
                }
                for (n, vb) in ny.iter().zip(y) {
                    if !nx.contains(n) {
                        out.push(Change::Added { path: format!("{path}[{n}]"), value: vb.clone() });
                    }
                }
            }
            _ => {
                for i in 0..x.len().max(y.len()) {
                    let p = format!("{path}[{i}]");
                    match (x.get(i), y.get(i)) {
                        (Some(va), Some(vb)) => diff_values(&p, va, vb, out),
                        (Some(va), None) => out.push(Change::Removed { path: p, value: va.clone() }),
                        (None, Some(vb)) => out.push(Change::Added { path: p, value: vb.clone() }),
                        (None, None) => {}
                    }
                }
            }
        },
        _ if a != b => out.push(Change::Changed { path: path.to_string(), from: a.clone(), to: b.clone() }),
        _ => {}
    }
}

/// Rules by name; an unnamed rule is `rules[i]`, as the filters name it in logs.
fn rules(policy: &Value) -> Vec<(String, Value)> {
    policy
        .get("rules")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .enumerate()
                .map(|(i, r)| {
                    let name = r.get("name").and_then(Value::as_str).map_or_else(|| format!("rules[{i}]"), str::to_string);
                    let mut body = r.clone();
                    if let Some(m) = body.as_object_mut() {
                        m.remove("name");
                    }
                    (name, body)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The semantic diff from policy `a` to policy `b` (both the JSON the filter receives).
pub fn diff_policies(a: &Value, b: &Value) -> PolicyDiff {
    let mut d = PolicyDiff::default();
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("rules");
        }
        v
    };
    diff_values("", &strip(a), &strip(b), &mut d.fields);
    let (ra, rb) = (rules(a), rules(b));
    for (name, body) in &ra {
        match rb.iter().find(|(n, _)| n == name) {
            Some((_, other)) => {
                let mut changes = Vec::new();
                diff_values("", body, other, &mut changes);
                if !changes.is_empty() {
                    d.rules_changed.push((name.clone(), changes));
                }
            }
            None => d.rules_removed.push(name.clone()),
        }
    }
    d.rules_added = rb.iter().filter(|(n, _)| !ra.iter().any(|(m, _)| m == n)).map(|(n, _)| n.clone()).collect();
    let common_a: Vec<&String> = ra.iter().map(|(n, _)| n).filter(|n| rb.iter().any(|(m, _)| m == *n)).collect();
    let common_b: Vec<&String> = rb.iter().map(|(n, _)| n).filter(|n| ra.iter().any(|(m, _)| m == *n)).collect();
    if common_a != common_b {
        d.rule_order = Some((ra.iter().map(|(n, _)| n.clone()).collect(), rb.iter().map(|(n, _)| n.clone()).collect()));
    }
    d
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn change_line(c: &Change) -> String {
    let at = |p: &str| if p.is_empty() { "(whole value)".to_string() } else { p.to_string() };
    match c {
        Change::Added { path, value } => format!("+ {}: {}", at(path), show(value)),
        Change::Removed { path, value } => format!("- {}: {}", at(path), show(value)),
        Change::Changed { path, from, to } => format!("~ {}: {} -> {}", at(path), show(from), show(to)),
        Change::ItemAdded { path, item } => format!("+ {}: item {}", at(path), show(item)),
        Change::ItemRemoved { path, item } => format!("- {}: item {}", at(path), show(item)),
        Change::Reordered { path } => format!("~ {}: same items, new order", at(path)),
    }
}

/// The diff as text, one change a line.
pub fn format_text(d: &PolicyDiff) -> String {
    let mut s = String::new();
    for c in &d.fields {
        let _ = writeln!(s, "{}", change_line(c));
    }
    for r in &d.rules_removed {
        let _ = writeln!(s, "- rule {r}");
    }
    for r in &d.rules_added {
        let _ = writeln!(s, "+ rule {r}");
    }
    for (r, changes) in &d.rules_changed {
        let _ = writeln!(s, "~ rule {r}");
        for c in changes {
            let _ = writeln!(s, "    {}", change_line(c));
        }
    }
    if let Some((a, b)) = &d.rule_order {
        let _ = writeln!(s, "~ rule order (first match wins): {} -> {}", a.join(", "), b.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn a() -> Value {
        json!({
            "policy_version": "1", "mode": "enforce",
            "rules": [
                {"name": "admin", "match": {"path_prefix": "/admin"}, "allow": ["10.0.0.0/8"]},
                {"name": "embargo", "deny_countries": ["KP", "IR"]},
                {"name": "legacy", "deny": ["192.0.2.0/24"]}
            ],
            "default": {}
        })
    }

    #[test]
    fn identical_policies_have_no_diff() {
        assert!(diff_policies(&a(), &a()).is_empty());
    }

    #[test]
    fn rules_are_matched_by_name_and_lists_by_item() {
        let b = json!({
            "policy_version": "2", "mode": "dry_run",
            "rules": [
                {"name": "embargo", "deny_countries": ["KP", "RU"]},
                {"name": "admin", "match": {"path_prefix": "/internal"}, "allow": ["10.0.0.0/8", "2001:db8::/32"]},
                {"name": "scanners", "deny": ["198.51.100.0/24"]}
            ],
            "default": {"deny": ["203.0.113.0/24"]}
        });
        let d = diff_policies(&a(), &b);
        assert_eq!(d.rules_added, ["scanners"]);
        assert_eq!(d.rules_removed, ["legacy"]);
        assert_eq!(
            d.rule_order,
            Some((vec!["admin".into(), "embargo".into(), "legacy".into()], vec!["embargo".into(), "admin".into(), "scanners".into()]))
        );
        let text = format_text(&d);
        for line in [
            "+ default.deny: [\"203.0.113.0/24\"]",
            "~ mode: \"enforce\" -> \"dry_run\"",
            "~ policy_version: \"1\" -> \"2\"",
            "- rule legacy",
            "+ rule scanners",
            "~ rule admin\n    + allow: item \"2001:db8::/32\"\n    ~ match.path_prefix: \"/admin\" -> \"/internal\"",
            "~ rule embargo\n    - deny_countries: item \"IR\"\n    + deny_countries: item \"RU\"",
            "~ rule order (first match wins): admin, embargo, legacy -> embargo, admin, scanners",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn nested_maps_and_reorders_have_paths() {
        let x = json!({"providers": {"idp": {"audiences": ["a", "b"], "issuer": "i"}}});
        let y = json!({"providers": {"idp": {"audiences": ["b", "a"], "issuer": "j"}, "other": {"issuer": "o"}}});
        let mut out = Vec::new();
        diff_values("", &x, &y, &mut out);
        assert_eq!(
            out,
            vec![
                Change::Reordered { path: "providers.idp.audiences".into() },
                Change::Changed { path: "providers.idp.issuer".into(), from: json!("i"), to: json!("j") },
                Change::Added { path: "providers.other".into(), value: json!({"issuer": "o"}) },
            ]
        );
    }

    #[test]
    fn unnamed_rules_are_named_by_position() {
        let x = json!({"rules": [{"deny": ["10.0.0.0/8"]}]});
        let y = json!({"rules": [{"deny": ["10.0.0.0/9"]}]});
        let d = diff_policies(&x, &y);
        assert_eq!(d.rules_changed.len(), 1);
        assert_eq!(d.rules_changed[0].0, "rules[0]");
    }
}
