//! Runs the built `gatewarden` binary on temp files: exit codes, messages, JSON output.

// Helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewarden"))
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatewarden-cli-{}-{}", std::process::id(), name.replace('.', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const VALID_YAML: &str = "# office only on /admin\nfilter: ip_geo\npolicy_version: \"2026-11-23.1\"\nrules:\n  - name: admin\n    match: { path_prefix: /admin }\n    allow: [10.0.0.0/8]\n";

#[test]
fn valid_yaml_policy_exits_zero() {
    let f = temp_file("ok.yaml", VALID_YAML);
    let (code, out, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains("valid ip_geo policy \"2026-11-23.1\""), "{out}");
}

#[test]
fn invalid_policy_exits_one_naming_file_field_and_value() {
    let f = temp_file("bad.yaml", &VALID_YAML.replace("10.0.0.0/8", "10.0.0.0/33"));
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let want = format!("{}: rules[0].allow[0]: invalid CIDR \"10.0.0.0/33\"", f.display());
    assert!(err.starts_with(&want), "expected {want:?} in {err:?}");
}

#[test]
fn unreadable_file_exits_two() {
    let (code, _, err) = run(&["validate", "/nonexistent/policy.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn filter_must_be_known() {
    let f = temp_file("nofilter.json", r#"{"policy_version":"1"}"#);
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("filter: missing"), "{err}");
    let (code, out, err) = run(&["validate", "--filter", "ip_geo", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
}

#[test]
fn json_format_reports_each_file() {
    let ok = temp_file("a.yaml", VALID_YAML);
    let bad = temp_file("b.json", r#"{"filter":"ip_geo","policy_version":"1","mode":"enforcing"}"#);
    let (code, out, _) = run(&["validate", "--format", "json", ok.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[1]["valid"], false);
    assert_eq!(v[1]["field"], "mode");
    assert!(v[1]["error"].as_str().unwrap().starts_with("mode: unknown variant `enforcing`"), "{v}");
}

#[test]
fn render_json_gives_what_the_filter_receives() {
    let f = temp_file("r.yaml", VALID_YAML);
    let (code, out, err) = run(&["render-json", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rules"][0]["allow"][0], "10.0.0.0/8");
}

#[test]
fn shipped_kong_meta_json_matches_the_generated_schema() {
    for filter in ["ip_geo", "jwt", "rate_limit", "validate"] {
        let (code, out, _) = run(&["schema", filter, "--kong"]);
        assert_eq!(code, 0, "{filter}");
        let generated: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(generated["config_schema"]["properties"]["policy_version"]["type"], "string");
        let name = format!("deploy/kong/gatewarden_{filter}.meta.json");
        let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(&name);
        let shipped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
        assert_eq!(shipped, generated, "{name} is stale: run scripts/gen-schemas.sh");
    }
}

/// The example policy repo's rate-limit policy (YAML, commented) is the shipped JSON one.
#[test]
fn example_rate_limit_policy_is_the_shipped_one() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join("examples/policies/rate_limit.yaml")).unwrap()).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/policies/rate_limit.json")).unwrap()).unwrap();
    json["filter"] = "rate_limit".into();
    assert_eq!(yaml, json, "examples/policies/rate_limit.yaml and deploy/policies/rate_limit.json differ");
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["frobnicate"]).0, 2);
    assert_eq!(run(&["validate", "--format", "xml", "x"]).0, 2);
}

/// The shipped policy of a filter, and the same policy as embedded in the Kong and Istio configs:
/// all valid, and equal apart from where the remote resources are fetched from (an Envoy cluster
/// name here, `host:port` on Kong, an Istio `outbound|…` cluster).
#[test]
fn shipped_policies_are_valid_and_kong_and_istio_embed_the_same() {
    fn yaml_docs(rel: &str) -> Vec<serde_json::Value> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        text.split("\n---\n").map(|doc| serde_norway::from_str(doc).unwrap()).collect()
    }
    /// Replaces every fetch target (`cluster`, `authority`) with a placeholder.
    fn without_targets(mut v: serde_json::Value) -> serde_json::Value {
        for source in ["geo_database"] {
            if let Some(s) = v.get_mut(source) {
                s["cluster"] = "X".into();
                s["authority"] = "X".into();
            }
        }
        if let Some(providers) = v.get_mut("providers").and_then(|p| p.as_object_mut()) {
            for p in providers.values_mut() {
                if let Some(r) = p.get_mut("remote_jwks") {
                    r["cluster"] = "X".into();
                    r["authority"] = "X".into();
                }
            }
        }
        v
    }
    let kong = yaml_docs("deploy/kong/kong.yaml");
    let istio_ip_geo = yaml_docs("deploy/istio/wasmplugin-ip-geo.yaml");
    let istio_jwt = yaml_docs("deploy/istio/wasmplugin-jwt.yaml");
    let istio_rate_limit = yaml_docs("deploy/istio/wasmplugin-rate-limit.yaml");
    for (filter, istio) in [("ip_geo", &istio_ip_geo), ("jwt", &istio_jwt), ("rate_limit", &istio_rate_limit)] {
        let shipped_path = format!("deploy/policies/{filter}.json");
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(&shipped_path);
        let (code, out, err) = run(&["validate", "--filter", filter, file.to_str().unwrap()]);
        assert_eq!(code, 0, "{shipped_path}: {out}{err}");
        let shipped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();

        let kong_filter = kong[0]["filter_chains"][0]["filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == format!("gatewarden_{filter}"))
            .unwrap_or_else(|| panic!("kong.yaml has no gatewarden_{filter}"));
        let istio_config = &istio[0]["spec"]["pluginConfig"];
        for (label, embedded) in [("kong.yaml", &kong_filter["config"]), ("istio", istio_config)] {
            let f = temp_file(&format!("{label}-{filter}.json"), &embedded.to_string());
            let (code, out, err) = run(&["validate", "--filter", filter, f.to_str().unwrap()]);
            assert_eq!(code, 0, "{label} {filter}: {out}{err}");
            assert_eq!(without_targets(embedded.clone()), without_targets(shipped.clone()), "{label} {filter} differs from {shipped_path}");
        }
    }
}
