//! `gatewarden keygen | sign | verify | promote | abort` on temp files: exit codes, messages,
//! formats kept, and signatures the filter's own check accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use gatewarden_policy::approvals::TrustConfig;
use serde_json::{json, Value};

mod common;
use common::trust_settings as keys;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatewarden-cli-approvals-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatewarden")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const POLICY_YAML: &str = "# office only on /admin\nfilter: ip_geo\npolicy_version: \"v1\"\nrules:\n  - name: admin   # the admin API\n    match: { path_prefix: /admin }\n    allow: [10.0.0.0/8]\n";

fn filter_accepts(file: &Path, trust: &Path) -> bool {
    let (code, json, err) = run(&["render-json", s(file)]);
    assert_eq!(code, 0, "{err}");
    let trust = TrustConfig::parse(&std::fs::read(trust).unwrap()).unwrap();
    trust.verify(json.trim().as_bytes()).is_ok()
}

#[test]
fn keygen_writes_a_private_key_readable_only_by_its_owner() {
    let dir = temp_dir("keygen");
    let (code, out, err) = run(&["keygen", "--out", s(&dir.join("ops"))]);
    assert_eq!(code, 0, "{err}");
    let entry: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(entry["key_id"], "ops");
    let public = std::fs::read_to_string(dir.join("ops.pub")).unwrap();
    assert_eq!(entry["public_key"].as_str().unwrap(), public.trim());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ops.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, _, err) = run(&["keygen", "--out", s(&dir.join("ops"))]);
    assert_eq!(code, 2, "never overwrites a key: {err}");
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn sign_and_verify_yaml_with_two_approvers() {
    let dir = temp_dir("sign-yaml");
    let trust = keys(&dir, 2);
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY_YAML).unwrap();

    let (code, out, err) = run(&["verify", "--trust", s(&trust), s(&policy)]);
    assert_eq!(code, 1, "unsigned: {out} {err}");
    assert!(err.contains("would be refused: signatures: 0 valid signature(s) from distinct trusted keys, 2 required"), "{err}");

    for who in ["alice", "bob", "alice"] {
        let key = dir.join(format!("{who}.key"));
        let (code, _, err) = run(&["sign", "--key", s(&key), "--key-id", who, s(&policy)]);
        assert_eq!(code, 0, "{err}");
    }
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.starts_with(POLICY_YAML), "comments and layout kept, signatures appended:\n{text}");
    assert_eq!(text.matches("key_id:").count(), 2, "re-signing replaces the signer's entry:\n{text}");

    let (code, out, err) = run(&["verify", "--trust", s(&trust), s(&policy)]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("approved (2 of 2 required signatures)"), "{out}");
    assert!(filter_accepts(&policy, &trust), "the filter's check accepts what the CLI signed");

    // Tampering: widen the allowed network.
    std::fs::write(&policy, text.replace("10.0.0.0/8", "0.0.0.0/0")).unwrap();
    let (code, out, err) = run(&["verify", "--trust", s(&trust), s(&policy)]);
    assert_eq!(code, 1, "{out} {err}");
    assert!(out.contains("signatures[0] (key_id \"bob\"): bad signature"), "{out}");
    assert!(!filter_accepts(&policy, &trust));
}

#[test]
fn sign_keeps_json_json_and_comments_do_not_matter() {
    let dir = temp_dir("sign-json");
    let trust = keys(&dir, 1);
    let json_file = dir.join("policy.json");
    std::fs::write(&json_file, r#"{"filter": "ip_geo", "policy_version": "v1", "default": {"deny": ["192.0.2.0/24"]}}"#).unwrap();
    let (code, _, err) = run(&["sign", "--key", s(&dir.join("alice.key")), "--key-id", "alice", s(&json_file)]);
    assert_eq!(code, 0, "{err}");
    let signed: Value = serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(signed["signatures"][0]["key_id"], "alice");
    assert!(filter_accepts(&json_file, &trust));

    // The same content as YAML, with comments, carries the same signature.
    let yaml = dir.join("same.yaml");
    let sig = signed["signatures"][0]["sig"].as_str().unwrap();
    std::fs::write(&yaml, format!("# a comment\ndefault:\n  deny: [192.0.2.0/24]   # docs\npolicy_version: v1\nfilter: ip_geo\nsignatures: [{{key_id: alice, sig: \"{sig}\"}}]\n")).unwrap();
    let (code, out, err) = run(&["verify", "--trust", s(&trust), s(&yaml)]);
    assert_eq!(code, 0, "{out} {err}");
}

#[test]
fn sign_refuses_an_invalid_policy_and_verify_a_bad_trust_file() {
    let dir = temp_dir("sign-bad");
    let trust = keys(&dir, 1);
    let policy = dir.join("bad.yaml");
    std::fs::write(&policy, POLICY_YAML.replace("10.0.0.0/8", "10.0.0.0/33")).unwrap();
    let before = std::fs::read_to_string(&policy).unwrap();
    let (code, _, err) = run(&["sign", "--key", s(&dir.join("alice.key")), "--key-id", "alice", s(&policy)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not signed: rules[0].allow[0]: invalid CIDR"), "{err}");
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), before, "file untouched");

    let bad_trust = dir.join("bad-trust.json");
    std::fs::write(&bad_trust, r#"{"required_signatures": 3}"#).unwrap();
    std::fs::write(&policy, POLICY_YAML).unwrap();
    let (code, _, err) = run(&["verify", "--trust", s(&bad_trust), s(&policy)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid trust settings: required_signatures: 3 signatures required but only 0 trusted signers"), "{err}");
    let (code, _, err) = run(&["verify", "--trust", s(&trust)]);
    assert_eq!(code, 2, "usage: {err}");
    assert!(err.contains("Usage: gatewarden verify --trust <TRUST.json> <POLICY>"), "{err}");
}

const ROLLOUT_YAML: &str = "# the office policy\nfilter: ip_geo\npolicy_version: v1\ndefault:\n  deny: [192.0.2.0/24]\nrollout:\n  percent: 10\n  candidate:\n    policy_version: v2\n    default:\n      deny: [192.0.2.0/24, 198.51.100.0/24]\n# reviewed by ops\n";

#[test]
fn abort_removes_the_rollout_and_keeps_comments() {
    let dir = temp_dir("abort");
    let trust = keys(&dir, 1);
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, ROLLOUT_YAML).unwrap();
    let (code, _, err) = run(&["sign", "--key", s(&dir.join("alice.key")), "--key-id", "alice", s(&policy)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["abort", s(&policy)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rollout aborted; the active policy \"v1\" stays"), "{err}");
    assert!(err.contains("signatures removed: the content changed"), "{err}");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert_eq!(text, "# the office policy\nfilter: ip_geo\npolicy_version: v1\ndefault:\n  deny: [192.0.2.0/24]\n# reviewed by ops\n");
    let (code, out, err) = run(&["verify", "--trust", s(&trust), s(&policy)]);
    assert_eq!(code, 1, "unsigned after abort: {out} {err}");
    let (code, _, err) = run(&["abort", s(&policy)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no rollout to abort"), "{err}");
}

#[test]
fn promote_makes_the_candidate_the_policy() {
    let dir = temp_dir("promote");
    for (name, contents) in [
        ("policy.yaml", ROLLOUT_YAML.to_string()),
        ("policy.json", serde_json::to_string(&serde_norway::from_str::<Value>(ROLLOUT_YAML).unwrap()).unwrap()),
    ] {
        let policy = dir.join(name);
        std::fs::write(&policy, contents).unwrap();
        let (code, _, err) = run(&["promote", s(&policy)]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("candidate \"v2\" promoted to the active policy; rollout removed"), "{err}");
        let text = std::fs::read_to_string(&policy).unwrap();
        let doc: Value =
            if name.ends_with(".json") { serde_json::from_str(&text).unwrap() } else { serde_norway::from_str(&text).unwrap() };
        assert_eq!(
            doc,
            json!({"filter": "ip_geo", "policy_version": "v2", "default": {"deny": ["192.0.2.0/24", "198.51.100.0/24"]}}),
            "{name}"
        );
        let (code, out, err) = run(&["validate", s(&policy)]);
        assert_eq!(code, 0, "{out} {err}");
    }
}

#[test]
fn apply_with_trust_settings_checks_signatures_and_writes_them_into_the_vm_config() {
    let dir = temp_dir("apply");
    let trust = keys(&dir, 1);
    let ecds = dir.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY_YAML).unwrap();
    let module = dir.join("gatewarden_ip_geo.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let apply = |file: &Path| run(&["apply", s(file), "--to", s(&ecds), "--module", s(&module), "--vm-config", s(&trust), "-m", "test"]);

    let (code, out, err) = apply(&policy);
    assert_eq!(code, 1, "unsigned: {out} {err}");
    assert!(err.contains("the filter would refuse it: signatures: 0 valid signature(s)"), "{err}");
    assert!(err.contains("apply refused, nothing changed"), "{err}");
    assert!(!ecds.join("ip_geo.json").exists(), "nothing written");

    let (code, _, err) = run(&["sign", "--key", s(&dir.join("bob.key")), "--key-id", "bob", s(&policy)]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = apply(&policy);
    assert_eq!(code, 0, "{out} {err}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap()).unwrap();
    let config = &written["resources"][0]["typed_config"]["config"];
    let vm_configuration = config["vm_config"]["configuration"]["value"].as_str().unwrap();
    assert_eq!(vm_configuration, std::fs::read_to_string(&trust).unwrap(), "the trust settings ride along");
    let trust_settings = TrustConfig::parse(vm_configuration.as_bytes()).unwrap();
    assert!(trust_settings.verify(config["configuration"]["value"].as_str().unwrap().as_bytes()).is_ok());

    // Without --vm-config the serving trust settings are kept and enforced: leaving the flag out
    // neither drops approvals nor lets an unsigned policy through.
    let unsigned = dir.join("unsigned.yaml");
    std::fs::write(&unsigned, POLICY_YAML.replace("\"v1\"", "\"v2\"")).unwrap();
    let before = std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap();
    let (code, out, err) = run(&["apply", s(&unsigned), "--to", s(&ecds), "--module", s(&module)]);
    assert_eq!(code, 1, "unsigned without --vm-config: {out} {err}");
    assert!(err.contains("the filter would refuse it: signatures: 0 valid"), "{err}");
    assert_eq!(std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap(), before, "nothing written");

    let (code, _, err) = run(&["sign", "--key", s(&dir.join("bob.key")), "--key-id", "bob", s(&unsigned)]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["apply", s(&unsigned), "--to", s(&ecds), "--module", s(&module)]);
    assert_eq!(code, 0, "signed without --vm-config: {out} {err}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap()).unwrap();
    let kept = written["resources"][0]["typed_config"]["config"]["vm_config"]["configuration"]["value"].as_str();
    assert_eq!(kept, Some(vm_configuration), "the trust settings are carried over");
}
