//! Runs the built `gatewarden` binary on temp dirs for the lifecycle commands: `test` (exit codes,
//! diffs, JUnit XML parsed back), `eval`, `render` (the Envoy resource equals scripts/ecds.py's),
//! `apply` / `history` / `diff` / `rollback` on an ECDS directory (a version today's filter refuses is not
//! rolled back).
//!
//! `test` and `eval` run the release modules (GATEWARDEN_WASM_DIR, default
//! target/wasm32-wasip1/release; scripts/build.sh builds them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn modules_dir() -> PathBuf {
    std::env::var_os("GATEWARDEN_WASM_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target/wasm32-wasip1/release"))
}

fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatewarden")).current_dir(dir).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn run(args: &[&str]) -> (i32, String, String) {
    run_in(&root(), args)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatewarden-lifecycle-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of examples/ in a temp dir, so tests can break it.
fn examples_copy(name: &str) -> PathBuf {
    let d = temp_dir(name);
    for sub in ["policies", "tests", "fixtures"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
        for f in std::fs::read_dir(root().join("examples").join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    d
}

fn modules_arg() -> String {
    modules_dir().to_string_lossy().into_owned()
}

#[test]
fn examples_pass_and_the_summary_names_each_module_with_its_sha256() {
    let junit = temp_dir("junit-ok").join("r.xml");
    let (code, out, err) = run(&["test", "--modules", &modules_arg(), "--junit", junit.to_str().unwrap(), "examples"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 failed, 0 errors in 6 files"), "{out}");
    for m in ["gatewarden_ip_geo.wasm", "gatewarden_jwt.wasm", "gatewarden_rate_limit.wasm", "gatewarden_validate.wasm"] {
        let bytes = std::fs::read(modules_dir().join(m)).unwrap();
        let line = out.lines().find(|l| l.contains(m)).unwrap_or_else(|| panic!("{m} not in {out}"));
        let sha = line.split("sha256:").nth(1).unwrap().trim();
        assert_eq!(sha.len(), 64, "{line}");
        // sha256sum of the very file that ran.
        let want = Command::new("sha256sum").arg(modules_dir().join(m)).output().unwrap();
        assert!(String::from_utf8_lossy(&want.stdout).starts_with(sha), "{line}; {} bytes", bytes.len());
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let suites = doc.root_element();
    assert_eq!(suites.tag_name().name(), "testsuites");
    assert_eq!(suites.attribute("failures"), Some("0"));
    let cases = doc.descendants().filter(|n| n.has_tag_name("testcase")).count();
    assert_eq!(suites.attribute("tests").unwrap().parse::<usize>().unwrap(), cases);
    assert!(cases >= 19, "{cases}");
}

#[test]
fn a_failing_case_exits_one_with_a_diff_and_a_junit_failure() {
    let d = examples_copy("fail");
    let t = d.join("tests/ip_geo.test.yaml");
    let text = std::fs::read_to_string(&t).unwrap();
    // The office case now expects a denial: the module allows it.
    let text = text.replace("expect: { status: 200, rule: admin-office-only }", "expect: { status: 403, rule: admin-office-only }");
    std::fs::write(&t, text).unwrap();
    let junit = d.join("out.xml");
    let (code, out, err) = run_in(&d, &["test", "--modules", &modules_arg(), "--junit", "out.xml", "tests/ip_geo.test.yaml"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("FAIL   the office reaches /admin"), "{out}");
    assert!(out.contains("status  - expected 403\n") && out.contains("+ actual   200\n"), "{out}");
    assert!(out.contains("6 passed, 1 failed, 0 errors"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failed: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("failure")).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].parent().unwrap().attribute("name"), Some("the office reaches /admin"));
    assert!(failed[0].text().unwrap().contains("expected 403"), "{xml}");
    assert_eq!(doc.root_element().attribute("failures"), Some("1"));
}

#[test]
fn an_invalid_policy_or_test_file_exits_two_naming_the_field() {
    let d = examples_copy("error");
    let p = d.join("policies/ip_geo.yaml");
    let text = std::fs::read_to_string(&p).unwrap().replace("[KP, IR]", "[KP, Iran]");
    std::fs::write(&p, text).unwrap();
    let (code, out, err) = run_in(&d, &["test", "--modules", &modules_arg(), "tests/ip_geo.test.yaml"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("rules[1].deny_countries[1]") && out.contains("\"Iran\""), "{out}");
    std::fs::write(d.join("tests/bad.test.yaml"), "policy: ../policies/jwt.yaml\ncases: [{ name: x, expect: { stauts: 200 } }]\n").unwrap();
    let (code, out, _) = run_in(&d, &["test", "--modules", &modules_arg(), "tests/bad.test.yaml"]);
    assert_eq!(code, 2);
    assert!(out.contains("unknown field `stauts`"), "{out}");
}

#[test]
fn no_tests_or_no_module_exits_two() {
    let d = temp_dir("empty");
    let (code, _, err) = run_in(&d, &["test"]);
    assert_eq!(code, 2);
    assert!(err.contains("no test files"), "{err}");
    let e = examples_copy("nomodule");
    let (code, out, _) = run_in(&e, &["test", "--modules", "/nonexistent", "tests/jwt.test.yaml"]);
    assert_eq!(code, 2);
    assert!(out.contains("/nonexistent/gatewarden_jwt.wasm: cannot read the module"), "{out}");
}

#[test]
fn eval_prints_decision_rule_headers_and_log_line() {
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("examples/fixtures/tokens.json")).unwrap()).unwrap();
    let auth = format!("authorization: Bearer {}", tokens["reader"].as_str().unwrap());
    let (code, out, err) = run(&[
        "eval",
        "--policy",
        "examples/policies/jwt.yaml",
        "--fixtures",
        "examples/tests/jwt.test.yaml",
        "--modules",
        &modules_arg(),
        "--method",
        "DELETE",
        "--path",
        "/orders/1",
        "--header",
        &auth,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["status"], 403);
    assert_eq!(v["rule"], "orders-write");
    assert_eq!(v["reason"], "scope");
    assert_eq!(v["log"]["reason"], "scope");
    assert_eq!(v["log"]["policy_version"], "2026-11-23.1");
    assert!(!out.contains(tokens["reader"].as_str().unwrap()), "the token must not be printed back from the log");
    let (code, out, _) = run(&[
        "eval",
        "--policy",
        "examples/policies/jwt.yaml",
        "--fixtures",
        "examples/tests/jwt.test.yaml",
        "--modules",
        &modules_arg(),
        "--path",
        "/orders/1",
        "--header",
        &auth,
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["decision"].as_str(), v["status"].as_u64()), (Some("allow"), Some(200)));
    assert_eq!(v["upstream_headers"]["x-user"], "alice");
    assert_eq!(v["module"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn render_envoy_equals_what_ecds_py_writes() {
    let d = temp_dir("render");
    let (code, json, err) = run(&["render-json", "examples/policies/ip_geo.yaml"]);
    assert_eq!(code, 0, "{err}");
    let policy = d.join("p.json");
    std::fs::write(&policy, json.trim_end()).unwrap();
    let module = "target/wasm32-wasip1/release/gatewarden_ip_geo.wasm";
    // The module is named explicitly: the default depends on $GATEWARDEN_WASM_DIR, which
    // scripts/test.sh sets to an absolute path.
    let (code, ours, err) = run(&["render", "--target", "envoy", "--module", module, "examples/policies/ip_geo.yaml"]);
    assert_eq!(code, 0, "{err}");
    let theirs = Command::new("python3")
        .current_dir(root())
        .args(["scripts/ecds.py", "--filter", "ip_geo", "--policy", policy.to_str().unwrap(), "--module", module, "--out", "-"])
        .output()
        .unwrap();
    assert!(theirs.status.success(), "{}", String::from_utf8_lossy(&theirs.stderr));
    assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout));
    // --module and --vm-id reach the resource.
    let (_, other, _) =
        run(&["render", "--target", "envoy", "--module", "/opt/f.wasm", "--vm-id", "shared", "examples/policies/ip_geo.yaml"]);
    let v: serde_json::Value = serde_json::from_str(&other).unwrap();
    let c = &v["resources"][0]["typed_config"]["config"];
    assert_eq!((c["vm_config"]["code"]["local"]["filename"].as_str(), c["root_id"].as_str()), (Some("/opt/f.wasm"), Some("shared")));
}

#[test]
fn render_istio_kong_compose() {
    let (code, out, err) = run(&["render", "--target", "istio", "--modules", &modules_arg(), "examples/policies/jwt.yaml"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_norway::from_str(&out).unwrap();
    assert_eq!(doc["kind"], "WasmPlugin");
    let want = Command::new("sha256sum").arg(modules_dir().join("gatewarden_jwt.wasm")).output().unwrap();
    assert!(String::from_utf8_lossy(&want.stdout).starts_with(doc["spec"]["sha256"].as_str().unwrap()));
    assert_eq!(doc["spec"]["pluginConfig"]["realm"], "orders");
    assert_eq!(doc["spec"]["pluginName"], "gatewarden_jwt");

    // On Kong the geo database is fetched from host:port, not from an Envoy cluster.
    let d = temp_dir("kong");
    let kong_policy = d.join("ip_geo.yaml");
    let example = std::fs::read_to_string(root().join("examples/policies/ip_geo.yaml")).unwrap();
    std::fs::write(&kong_policy, example.replace("cluster: gatewarden_geo_db", "cluster: \"127.0.0.1:8081\"")).unwrap();
    let out = d.join("out");
    let (code, _, err) =
        run(&["render", "--target", "kong", "--service", "orders", "--out", out.to_str().unwrap(), kong_policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let chain: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(out.join("filter_chains.yaml")).unwrap()).unwrap();
    assert_eq!(chain["filter_chains"][0]["service"], "orders");
    assert_eq!(chain["filter_chains"][0]["filters"][0]["name"], "gatewarden_ip_geo");
    assert_eq!(chain["filter_chains"][0]["filters"][0]["config"]["rules"][1]["name"], "embargo");
    assert_eq!(chain["filter_chains"][0]["filters"][0]["config"]["geo_database"]["cluster"], "127.0.0.1:8081");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("gatewarden_ip_geo.meta.json")).unwrap()).unwrap();
    let shipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/kong/gatewarden_ip_geo.meta.json")).unwrap()).unwrap();
    assert_eq!(meta, shipped);

    let (code, out, _) = run(&["render", "--target", "compose", "examples/policies/jwt.yaml"]);
    assert_eq!(code, 0);
    let c: serde_json::Value = serde_norway::from_str(&out).unwrap();
    assert_eq!(c["services"]["envoy"]["environment"]["FILTER"], "jwt");
    assert!(c["services"].get("geo-db").is_none());
    let (code, _, err) = run(&["render", "--target", "mesh", "examples/policies/jwt.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: invalid value 'mesh' for '--target <TARGET>'"), "{err}");
}

fn history_json(dir: &Path) -> serde_json::Value {
    let (code, out, err) = run(&["history", "--to", dir.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn apply_history_diff_rollback_on_a_directory() {
    let d = temp_dir("apply");
    let ecds = d.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    let to = ecds.to_str().unwrap();
    let v1 = d.join("v1.yaml");
    let base = std::fs::read_to_string(root().join("examples/policies/ip_geo.yaml")).unwrap();
    std::fs::write(&v1, &base).unwrap();
    let (code, out, err) = run(&["apply", v1.to_str().unwrap(), "--to", to, "--author", "ann", "-m", "first"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("applied version 1 of"), "{out}");
    let first = std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap();
    let (_, rendered, _) = run(&["render", "--target", "envoy", v1.to_str().unwrap()]);
    assert_eq!(first, rendered, "apply writes exactly what render prints");

    // An invalid policy is refused and nothing on disk changes.
    let bad = d.join("bad.yaml");
    std::fs::write(&bad, base.replace("10.0.0.0/8", "10.0.0.0/33")).unwrap();
    let before: Vec<_> = walk(&ecds);
    let (code, _, err) = run(&["apply", bad.to_str().unwrap(), "--to", to]);
    assert_eq!(code, 1);
    assert!(err.contains("rules[0].allow[0]: invalid CIDR \"10.0.0.0/33\"") && err.contains("nothing changed"), "{err}");
    assert_eq!(walk(&ecds), before);

    // Version 2: a country more, the office rule moved below.
    let v2 = d.join("v2.yaml");
    std::fs::write(&v2, base.replace("\"2026-11-23.1\"", "\"2026-11-23.2\"").replace("[KP, IR]", "[KP, IR, RU]")).unwrap();
    let (code, out, err) = run(&["apply", v2.to_str().unwrap(), "--to", to, "--author", "bob", "-m", "block RU"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("applied version 2"), "{out}");
    let (code, out, _) = run(&["apply", v2.to_str().unwrap(), "--to", to]);
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged"), "{out}");

    let h = history_json(&ecds);
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!((h[0]["author"].as_str(), h[0]["message"].as_str(), h[0]["current"].as_bool()), (Some("ann"), Some("first"), Some(false)));
    assert_eq!((h[1]["policy_version"].as_str(), h[1]["current"].as_bool()), (Some("2026-11-23.2"), Some(true)));
    let (_, text, _) = run(&["history", "--to", to]);
    assert!(text.lines().any(|l| l.starts_with("*   2") && l.contains("bob") && l.contains("block RU")), "{text}");

    let (code, out, _) = run(&["diff", "--to", to, "1", "2"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("~ policy_version: \"2026-11-23.1\" -> \"2026-11-23.2\""), "{out}");
    assert!(out.contains("~ rule embargo\n    + deny_countries: item \"RU\""), "{out}");
    let (code, _, _) = run(&["diff", "--to", to, "2", v2.to_str().unwrap()]);
    assert_eq!(code, 0);

    // Rollback: the previous version comes back, recorded as version 3.
    let (code, out, err) = run(&["rollback", "--to", to, "--author", "carol"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied version 3") && out.contains("(rollback to version 1)"), "{out}");
    assert_eq!(std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap(), first);
    let h = history_json(&ecds);
    assert_eq!((h[2]["rollback_of"].as_u64(), h[2]["author"].as_str()), (Some(1), Some("carol")));
    let (code, out, _) = run(&["rollback", "--to", to, "--version", "2"]);
    assert_eq!(code, 0);
    assert!(out.contains("applied version 4"), "{out}");
    let (code, _, err) = run(&["rollback", "--to", to, "--version", "9"]);
    assert_eq!(code, 2);
    assert!(err.contains("no version 9"), "{err}");
}

fn walk(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn dry_run_decisions_and_the_kong_profile() {
    let d = temp_dir("dryrun");
    std::fs::write(
        d.join("p.yaml"),
        "filter: ip_geo\npolicy_version: dr.1\nmode: dry_run\nrules:\n  - { name: block, deny: [203.0.113.0/24] }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("envoy.test.yaml"),
        "policy: p.yaml\ncases:\n  - name: would deny\n    request: { peer: 203.0.113.9 }\n    expect: { status: 200, decision: dry_run_deny, rule: block }\n",
    )
    .unwrap();
    // Kong: the peer is nginx's remote_addr; a denial in enforce mode is the same 403.
    std::fs::write(
        d.join("kong.test.yaml"),
        "policy: p.yaml\nprofile: kong\ncases:\n  - name: would deny on kong too\n    request: { peer: 203.0.113.9 }\n    expect: { status: 200, decision: dry_run_deny }\n  - name: others pass\n    request: { peer: 198.51.100.1 }\n    expect: { status: 200, decision: allow, rule: block }\n",
    )
    .unwrap();
    let (code, out, err) = run_in(&d, &["test", "--modules", &modules_arg()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    std::fs::write(d.join("bad.test.yaml"), "policy: p.yaml\nprofile: nginx\ncases: []\n").unwrap();
    let (code, out, _) = run_in(&d, &["test", "--modules", &modules_arg(), "bad.test.yaml"]);
    assert_eq!(code, 2);
    assert!(out.contains("profile: \"nginx\" is not envoy or kong"), "{out}");
}

/// A history keeps versions older filter code accepted; today's code may refuse one (a check added
/// since). Rolling back to it is refused like an invalid apply: exit 1, nothing on disk changes.
#[test]
fn rollback_to_a_version_todays_filter_refuses_is_refused() {
    let d = temp_dir("rollback-refused");
    let ecds = d.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    let to = ecds.to_str().unwrap();
    let base = std::fs::read_to_string(root().join("examples/policies/ip_geo.yaml")).unwrap();
    for (i, text) in [base.clone(), base.replace("[KP, IR]", "[KP, IR, RU]")].iter().enumerate() {
        let f = d.join(format!("v{i}.yaml"));
        std::fs::write(&f, text).unwrap();
        let (code, _, err) = run(&["apply", f.to_str().unwrap(), "--to", to]);
        assert_eq!(code, 0, "{err}");
    }
    // Version 1 as an older filter accepted it: a CIDR today's code refuses.
    let entry_path = ecds.join(".gatewarden/history/000001.json");
    let mut entry: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&entry_path).unwrap()).unwrap();
    let old = entry["policy_json"].as_str().unwrap().replace("10.0.0.0/8", "10.0.0.0/33");
    assert!(old.contains("10.0.0.0/33"), "{old}");
    entry["policy_json"] = old.into();
    std::fs::write(&entry_path, serde_json::to_string_pretty(&entry).unwrap()).unwrap();
    let before = walk(&ecds);
    for args in [&["rollback", "--to", to, "--version", "1"][..], &["rollback", "--to", to]] {
        let (code, out, err) = run(args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert!(
            err.starts_with("gatewarden: rollback refused, nothing changed: version 1 no longer validates: rules[0].allow[0]: invalid CIDR \"10.0.0.0/33\""),
            "{err}"
        );
        assert_eq!(walk(&ecds), before, "{args:?} changed the directory");
    }
}
