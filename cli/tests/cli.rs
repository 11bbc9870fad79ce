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
    let (code, out, _) = run(&["schema", "ip_geo", "--kong"]);
    assert_eq!(code, 0);
    let generated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(generated["config_schema"]["properties"]["policy_version"]["type"], "string");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../envoy-config/kong/gatewarden_ip_geo.meta.json");
    let shipped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
    assert_eq!(shipped, generated, "envoy-config/kong/gatewarden_ip_geo.meta.json is stale: run scripts/gen-schemas.sh");
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["frobnicate"]).0, 2);
    assert_eq!(run(&["validate", "--format", "xml", "x"]).0, 2);
}
