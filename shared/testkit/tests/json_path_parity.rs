//! `parse_document` finds a config error's path from its position in the text. This checks it
//! against what tracking the path during deserialization (`serde_path_to_error`, which it
//! replaced) reports, over every single-point mutation of the shipped example policies, in
//! compact and pretty-printed form.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use gatewarden_ip_geo_policy::IpGeoDocument;
use gatewarden_jwt_policy::JwtDocument;
use gatewarden_policy::approvals::SignatureDoc;
use gatewarden_policy::document::parse_document;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// (path, message) as the old code produced them.
fn tracked<D: DeserializeOwned>(bytes: &[u8]) -> Option<(String, String)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let res: Result<D, _> = serde_path_to_error::deserialize(&mut de);
    match res {
        Ok(_) => de.end().err().map(|e| (String::new(), e.to_string())),
        Err(e) => {
            let path = e.path().to_string();
            // serde_path_to_error writes "?" for a segment it could not name (in broken text);
            // ours names the container instead.
            let path = path.strip_suffix(".?").unwrap_or(&path).to_owned();
            let path = if path == "." || path == "?" { String::new() } else { path };
            Some((path, e.into_inner().to_string()))
        }
    }
}

fn ours<D: DeserializeOwned>(bytes: &[u8]) -> Option<(String, String)> {
    parse_document::<D>(bytes).err().map(|e| (e.path().to_owned(), e.message().to_owned()))
}

/// Every value reachable in `v`, as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(c, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn mutations(doc: &Value) -> Vec<Value> {
    let replacements = [
        json!(null),
        json!(5),
        json!(-1),
        json!(1.5),
        json!(true),
        json!("x"),
        json!("10.0.0.300"),
        json!([]),
        json!({}),
        json!([1]),
        json!({"k": 1}),
    ];
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    let mut out = Vec::new();
    for p in &ptrs {
        for r in &replacements {
            let mut d = doc.clone();
            if let Some(slot) = d.pointer_mut(p) {
                *slot = r.clone();
                out.push(d);
            }
        }
        let mut d = doc.clone();
        if let Some(Value::Object(m)) = d.pointer_mut(p) {
            m.insert("zz_unknown".into(), json!(1));
            out.push(d.clone());
        }
        let d0 = doc.clone();
        if let Some(Value::Object(m)) = d0.pointer(p) {
            for k in m.keys() {
                let mut d = doc.clone();
                if let Some(Value::Object(m2)) = d.pointer_mut(p) {
                    m2.remove(k);
                }
                out.push(d);
            }
        }
    }
    out
}

fn check<D: DeserializeOwned>(doc: &Value) -> usize {
    let mut errors = 0;
    for m in mutations(doc) {
        for text in [serde_json::to_vec(&m).unwrap(), serde_json::to_vec_pretty(&m).unwrap()] {
            let want = tracked::<D>(&text);
            let got = ours::<D>(&text);
            assert_eq!(got, want, "for {}", String::from_utf8_lossy(&text));
            errors += usize::from(got.is_some());
        }
    }
    errors
}

fn load(path: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn ip_geo_paths_match_tracked_paths() {
    let mut doc = load("deploy/policies/ip_geo.json");
    // Exercise the rollout candidate and signatures too.
    let candidate = doc.clone();
    doc["rollout"] = json!({"percent": 10, "candidate": candidate});
    doc["signatures"] = json!([{"key_id": "a", "sig": "AAAA"}]);
    let errors = check::<IpGeoDocument>(&doc);
    assert!(errors > 300, "only {errors} mutations were errors");
}

#[test]
fn jwt_paths_match_tracked_paths() {
    let errors = check::<JwtDocument>(&load("deploy/policies/jwt.json"));
    assert!(errors > 300, "only {errors} mutations were errors");
}

#[test]
fn signature_paths_match_tracked_paths() {
    check::<Vec<SignatureDoc>>(&json!([{"key_id": "a", "sig": "AAAA"}, {"key_id": "b", "sig": "BBBB"}]));
}

#[test]
fn syntax_errors_and_odd_text_match() {
    let texts: &[&str] = &[
        "{",
        "",
        "[",
        r#"{"policy_version":"t"} trailing"#,
        r#"{"policy_version":"t","rules":[{"deny":["10.0.0.0/8",]}]}"#,
        r#"{"policy_version":"t","rules":[{"deny":["10.0.0.0/8" "x"]}]}"#,
        r#"{"policy_version":"t","rules":[{"match":{"path_prefix":"/a\u00e9\"b","headers":[{"name":"x","exact":5}]}}]}"#,
        "{\"policy_version\":\"t\",\n\n  \"rules\": [\n {\"dény\": 1}]}",
        "{\"policy_version\":\"t\",\"rules\":[{\"name\":\"\u{e9}\u{e9}\",\"deny\":[\"300.1.1.1\"]}]}",
        r#"{"policy_version":"t","default":{"deny":["10.0.0.0/8"]},"default":{}}"#,
        r#"{"policy_version":"t","rules":[{"deny":["10.0.0.0/8"]}],"rules":5}"#,
        r#"{"policy_version":1e400}"#,
        r#"{"policy_version":"t","mode":"\ud800"}"#,
        "\u{feff}{}",
        r#"{"policy_version":"t","rules":[[]]}"#,
        r#"{"policy_version":"t","client_address":{"xff_num_trusted_hops":99999999999}}"#,
    ];
    for t in texts {
        assert_eq!(ours::<IpGeoDocument>(t.as_bytes()), tracked::<IpGeoDocument>(t.as_bytes()), "for {t}");
        assert_eq!(ours::<JwtDocument>(t.as_bytes()), tracked::<JwtDocument>(t.as_bytes()), "for {t}");
    }
}

/// Broken text: every truncation of the compact and pretty documents, and a stray byte inserted
/// at every position of the compact one.
fn check_broken<D: DeserializeOwned>(doc: &Value) {
    let compact = serde_json::to_vec(doc).unwrap();
    let pretty = serde_json::to_vec_pretty(doc).unwrap();
    let mut texts: Vec<Vec<u8>> = Vec::new();
    for t in [&compact, &pretty] {
        for n in 0..t.len() {
            texts.push(t[..n].to_vec());
        }
    }
    for i in 0..compact.len() {
        for stray in [b',', b'x', b']', b'}', b'"', b'1'] {
            let mut t = compact.clone();
            t.insert(i, stray);
            texts.push(t);
        }
    }
    for t in &texts {
        assert_eq!(ours::<D>(t), tracked::<D>(t), "for {}", String::from_utf8_lossy(t));
    }
}

#[test]
fn broken_text_paths_match_tracked_paths() {
    check_broken::<IpGeoDocument>(&load("deploy/policies/ip_geo.json"));
    check_broken::<JwtDocument>(&load("deploy/policies/jwt.json"));
}
