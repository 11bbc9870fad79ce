//! The validation filter in the `gatewarden` command: OpenAPI documents and body schemas kept in
//! their own files (inlined relative to the policy file, signed as inlined), config errors at the
//! path inside the schema, the host settings `render` writes for bodies (nginx/Kong buffers,
//! Envoy's buffer limit), and the shipped files (example policy, Kong, Istio, ECDS) in step with
//! deploy/policies/validate.json.
//!
//! `nginx_render_keeps_bodies_in_memory_on_the_real_engine` starts nginx + ngx_wasm_module
//! (`$GATEWARDEN_WASMX`, else `../shared/wasmx/bin/nginx`) with the rendered files and the built
//! gatewarden_validate.wasm; without them it says so and returns (under CI=true it fails).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{engine, modules_dir, root, run, run_in, s, trust_settings};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("validate", name)
}

const OPENAPI: &str = "# the API's own document\nopenapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /pets:\n    post:\n      requestBody:\n        required: true\n        content:\n          application/json:\n            schema: { type: object, required: [name], properties: { name: { type: string } } }\n      responses: { '201': { description: created } }\n";

/// A policy in `dir/policies` naming `../api/openapi.yaml` and `schemas/hook.json`.
fn policy_with_files(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("api")).unwrap();
    std::fs::create_dir_all(dir.join("policies/schemas")).unwrap();
    std::fs::write(dir.join("api/openapi.yaml"), OPENAPI).unwrap();
    std::fs::write(dir.join("policies/schemas/hook.json"), r#"{"type": "object", "required": ["event"]}"#).unwrap();
    let p = dir.join("policies/validate.yaml");
    std::fs::write(
        &p,
        "filter: validate\npolicy_version: v1\nrules:\n  - name: api\n    match: { path_prefix: /api }\n    openapi: { document_file: ../api/openapi.yaml, base_path: /api }\n  - name: hooks\n    match: { path_prefix: /hooks }\n    body_schema_file: schemas/hook.json\n",
    )
    .unwrap();
    p
}

#[test]
fn files_a_policy_names_are_inlined_relative_to_the_policy_file() {
    let d = temp_dir("inline");
    let p = policy_with_files(&d);
    // From the repository root, not the policy's directory: paths are the policy file's.
    let (code, out, err) = run(&["render-json", s(&p)]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let document: Value = serde_norway::from_str(OPENAPI).unwrap();
    assert_eq!(v["rules"][0]["openapi"], json!({"document": document, "base_path": "/api"}));
    assert_eq!(v["rules"][1]["body_schema"], json!({"type": "object", "required": ["event"]}));
    assert!(!out.contains("document_file") && !out.contains("body_schema_file"), "{out}");
    let (code, out, err) = run_in(&d, &["validate", "policies/validate.yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "policies/validate.yaml: valid validate policy \"v1\"\n");
}

#[test]
fn a_missing_file_exits_two_and_a_bad_one_one_naming_the_field() {
    let d = temp_dir("missing");
    let p = policy_with_files(&d);
    std::fs::remove_file(d.join("api/openapi.yaml")).unwrap();
    let (code, _, err) = run(&["validate", s(&p)]);
    assert_eq!(code, 2, "{err}");
    let want = format!("{}: rules[0].openapi.document_file: cannot read \"../api/openapi.yaml\" (", s(&p));
    assert!(err.starts_with(&want), "expected {want:?} in {err:?}");
    std::fs::write(d.join("api/openapi.yaml"), "[1, 2]\n").unwrap();
    let (code, out, _) = run(&["validate", "--format", "json", s(&p)]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["field"], "rules[0].openapi.document_file");
    assert_eq!(v[0]["error"], "rules[0].openapi.document_file: \"../api/openapi.yaml\": expected a mapping (an object), got a list");
}

#[test]
fn a_schema_that_does_not_compile_is_named_at_its_path_as_the_filter_names_it() {
    let d = temp_dir("schema");
    let p = d.join("p.yaml");
    std::fs::write(
        &p,
        "filter: validate\npolicy_version: v1\nrules:\n  - body_schema: { type: object, properties: { a: { type: nope } } }\n",
    )
    .unwrap();
    let (code, _, err) = run(&["validate", s(&p)]);
    assert_eq!(code, 1, "{err}");
    let want = format!("{}: rules[0].body_schema.properties.a.type: the 2020-12 schema does not compile: \"nope\"", s(&p));
    assert!(err.starts_with(&want), "expected {want:?} in {err:?}");
}

/// A signature covers the document as the filter receives it: a changed OpenAPI file is a
/// changed policy, which its approvers must sign again.
#[test]
fn signatures_cover_the_inlined_document() {
    let d = temp_dir("sign");
    let p = policy_with_files(&d);
    let trust = trust_settings(&d, 1);
    let (code, _, err) = run(&["sign", "--key", s(&d.join("alice.key")), "--key-id", "alice", s(&p)]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("document_file: ../api/openapi.yaml"), "the file keeps naming the document:\n{text}");
    let (code, out, err) = run(&["verify", "--trust", s(&trust), s(&p)]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(d.join("api/openapi.yaml"), OPENAPI.replace("required: [name]", "required: []")).unwrap();
    let (code, out, _) = run(&["verify", "--trust", s(&trust), s(&p)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not counted"), "{out}");
}

fn render(target: &str, policy: &Path) -> (i32, String, String) {
    let sha = "0".repeat(64);
    let mut args = vec!["render", "--target", target, "--module", "/m/gatewarden_validate.wasm", s(policy)];
    if target == "istio" {
        args.extend(["--sha256", &sha]);
    }
    run(&args)
}

fn policy_reading(dir: &Path, max_body_bytes: Option<u64>) -> PathBuf {
    let p = dir.join(format!("max-{}.yaml", max_body_bytes.unwrap_or(0)));
    let max = max_body_bytes.map(|n| format!("    max_body_bytes: {n}\n")).unwrap_or_default();
    let text = format!(
        "filter: validate\npolicy_version: v1\nrules:\n  - name: small\n    match: {{ path_prefix: /small }}\n    max_body_bytes: 1000\n    body_schema: {{ type: object }}\n  - name: big\n    match: {{ path_prefix: /big }}\n{max}    body_schema: {{ type: object }}\n  - name: unread\n    match: {{ path_prefix: /upload }}\n"
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn nginx_and_kong_renders_size_the_body_buffer_by_the_largest_body_read() {
    let d = temp_dir("nginx");
    // The default max_body_bytes (512 KiB) of a rule that reads bodies; a rule that reads none
    // (no schema) does not count.
    let (code, out, err) = render("nginx", &policy_reading(&d, None));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\nclient_body_buffer_size 524288;\nclient_max_body_size 1048576;\nproxy_wasm gatewarden_validate '"), "{out}");
    let (code, out, err) = render("nginx", &policy_reading(&d, Some(2_000_000)));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\nclient_body_buffer_size 2000000;\nclient_max_body_size 2000000;\n"), "{out}");
    let (code, out, err) = render("kong", &policy_reading(&d, Some(2_000_000)));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("#   nginx_http_client_body_buffer_size = 2000000 "), "{out}");
    // Other filters get no body settings.
    let ip_geo = d.join("ip_geo.yaml");
    std::fs::write(&ip_geo, "filter: ip_geo\npolicy_version: v1\ndefault: {}\n").unwrap();
    let (code, out, err) = run(&["render", "--target", "nginx", "--module", "/m/gatewarden_ip_geo.wasm", s(&ip_geo)]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("client_body_buffer_size"), "{out}");
}

#[test]
fn envoy_renders_warn_when_a_body_may_pass_envoys_buffer_limit() {
    let d = temp_dir("envoy");
    for target in ["envoy", "istio", "compose"] {
        let (code, _, err) = render(target, &policy_reading(&d, Some(2_000_000)));
        assert_eq!(code, 0, "{target}: {err}");
        assert!(
            err.contains("warning: the policy reads request bodies of up to 2000000 bytes: Envoy buffers a body")
                && err.contains("set per_connection_buffer_limit_bytes on the listener to at least 2000000"),
            "{target}: {err}"
        );
        // Up to the limit itself (1 MiB): measured validated on Envoy 1.40.
        for quiet in [None, Some(1_048_576)] {
            let (code, _, err) = render(target, &policy_reading(&d, quiet));
            assert_eq!(code, 0, "{target}: {err}");
            assert!(!err.contains("per_connection_buffer_limit_bytes"), "{target} {quiet:?}: {err}");
        }
    }
}

#[test]
fn nginx_refuses_the_inlined_example_document_and_points_to_a_fetched_one() {
    let (code, out, err) = render("nginx", &root().join("deploy/policies/validate.json"));
    assert_eq!(code, 1, "needs --filter: {out}{err}");
    let (code, out, err) = run(&[
        "render",
        "--target",
        "nginx",
        "--filter",
        "validate",
        "--module",
        "/m/v.wasm",
        s(&root().join("deploy/policies/validate.json")),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("nginx refuses a parameter longer than 4094 bytes"), "{err}");
    assert!(err.contains("a validation policy can fetch its OpenAPI document instead (openapi.source)"), "{err}");
    assert!(out.is_empty(), "a refused render writes nothing: {out}");
}

/// The example repo's policy (YAML, commented) is the shipped JSON one, and Kong, Istio and the
/// ECDS resource embed that policy with its OpenAPI document inlined.
#[test]
fn shipped_validate_policy_example_and_embedded_copies_agree() {
    let (code, out, err) = run(&["render-json", "--filter", "validate", "deploy/policies/validate.json"]);
    assert_eq!(code, 0, "{err}");
    let mut shipped: Value = serde_json::from_str(&out).unwrap();
    assert!(shipped["rules"][1]["openapi"]["document"]["paths"]["/orders"].is_object(), "the document is inlined: {out}");
    let (code, out, err) = run(&["render-json", "examples/policies/validate.yaml"]);
    assert_eq!(code, 0, "{err}");
    let example: Value = serde_json::from_str(&out).unwrap();
    shipped["filter"] = "validate".into();
    assert_eq!(example, shipped, "examples/policies/validate.yaml and deploy/policies/validate.json differ");
    let out = Command::new("python3")
        .arg(root().join("scripts/embed_validate_policy.py"))
        .arg("--check")
        .env("GATEWARDEN_CLI", env!("CARGO_BIN_EXE_gatewarden"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---- the real engine ----

/// A raw HTTP/1.1 POST of `body` (with content-length, or chunked in 8 KiB chunks): the status
/// and the response body.
fn post(port: u16, path: &str, body: &[u8], chunked: bool) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let framing = if chunked { "transfer-encoding: chunked".to_string() } else { format!("content-length: {}", body.len()) };
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\ncontent-type: application/json\r\n{framing}\r\n\r\n");
    conn.write_all(head.as_bytes()).ok()?;
    if chunked {
        for chunk in body.chunks(8192) {
            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).ok()?;
            conn.write_all(chunk).ok()?;
            conn.write_all(b"\r\n").ok()?;
        }
        conn.write_all(b"0\r\n\r\n").ok()?;
    } else {
        // The server may answer before reading it all (a refusal on the headers): ignore that.
        let _ = conn.write_all(body);
    }
    let mut resp = Vec::new();
    let _ = conn.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    Some((status, resp.split_once("\r\n\r\n")?.1.to_string()))
}

/// `{"<key>":"xxx…"}` of exactly `n` bytes.
fn json_of(key: char, n: usize) -> Vec<u8> {
    format!("{{\"{key}\":\"{}\"}}", "x".repeat(n - 8)).into_bytes()
}

/// nginx's default client_body_buffer_size is 16k: without the rendered directives a 100 KB body
/// would be spilled to a temp file and could not be validated. Rendered, a body up to
/// max_body_bytes is read and validated on the engine, a larger one is refused by the filter.
#[test]
fn nginx_render_keeps_bodies_in_memory_on_the_real_engine() {
    let module = modules_dir().join("gatewarden_validate.wasm");
    let (Some(nginx), true) = (engine(), module.is_file()) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: no nginx with ngx_wasm_module or no {}", module.display());
        eprintln!(
            "SKIPPED nginx_render_keeps_bodies_in_memory_on_the_real_engine: no nginx with ngx_wasm_module or no gatewarden_validate.wasm"
        );
        return;
    };
    let d = temp_dir("engine");
    let p = d.join("p.yaml");
    std::fs::write(
        &p,
        "filter: validate\npolicy_version: \"v1\"\nrules:\n  - name: docs\n    max_body_bytes: 100000\n    body_schema: { type: object, required: [a], properties: { a: { type: string } } }\n",
    )
    .unwrap();
    let conf = d.join("conf");
    let (code, _, err) = run(&["render", "--target", "nginx", "--module", s(&module), "--out", s(&conf), s(&p)]);
    assert_eq!(code, 0, "{err}");
    let (port, _nginx) = match common::start_rendered(&nginx, &d, "gatewarden_validate.wasm", "validate", "v1") {
        Ok(started) => started,
        Err(log) => panic!("the policy was not accepted:\n{log}"),
    };
    let log = d.join("logs/error.log");
    // Within max_body_bytes: kept in memory (not spilled), read and validated.
    assert_eq!(post(port, "/doc", &json_of('a', 80_000), false).map(|r| r.0), Some(200));
    assert_eq!(post(port, "/doc", &json_of('a', 100_000), false).map(|r| r.0), Some(200), "a body of exactly max_body_bytes");
    let (status, body) = post(port, "/doc", &json_of('b', 95_000), false).unwrap();
    assert_eq!(status, 400, "validated: no `a`: {body}");
    assert!(body.contains("\"keyword\":\"required\""), "{body}");
    // Past it: the filter's 413 (a content-length within client_max_body_size reaches the filter).
    let (status, body) = post(port, "/doc", &json_of('a', 100_001), false).unwrap();
    assert_eq!(status, 413, "{body}");
    // (ngx_wasm_module ends a local response's body with a newline.)
    assert_eq!(
        body.trim_end(),
        r#"{"type":"about:blank","title":"Content Too Large","status":413,"detail":"the request body is larger than allowed"}"#
    );
    // A chunked body cannot be waited for on this engine: failure_mode (deny) refuses it.
    assert_eq!(post(port, "/doc", &json_of('a', 1_000), true).map(|r| r.0), Some(503));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("a client request body is buffered to a temporary file"), "a body was spilled:\n{text}");
}

/// `eval` shows one decision with the problem body a client gets: the JSON pointer, schema
/// location and keyword of each error (the body from a file, as it is).
#[test]
fn eval_shows_the_problem_body_of_a_body_from_a_file() {
    let module = modules_dir().join("gatewarden_validate.wasm");
    if !module.is_file() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: no {}", module.display());
        eprintln!("SKIPPED eval_shows_the_problem_body_of_a_body_from_a_file: no {}", module.display());
        return;
    }
    let d = temp_dir("eval");
    let body = d.join("order.json");
    std::fs::write(&body, r#"{"customer_id": "3f0c6a2e-8a8e-4a59-9d87-2b1f5c6d7e80", "items": [{"sku": "abc", "quantity": 1}]}"#).unwrap();
    let modules = modules_dir();
    let (code, out, err) = run(&[
        "eval",
        "examples/policies/validate.yaml",
        "--modules",
        s(&modules),
        "--method",
        "POST",
        "--path",
        "/api/orders",
        "-H",
        "content-type: application/json",
        "-H",
        "idempotency-key: order-2026-12-03-0001",
        "--body-file",
        s(&body),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["status"].as_u64(), v["reason"].as_str(), v["rule"].as_str()), (Some(400), Some("schema_violation"), Some("orders-api")));
    let problem: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/items/0/sku", "{problem}");
    assert_eq!(problem["errors"][0]["keyword"], "pattern", "{problem}");
    assert_eq!(problem["errors"][0]["schema"], "/components/schemas/OrderItem/properties/sku/pattern", "{problem}");
}

/// The Istio render puts each filter where the shipped WasmPlugins do: validation in AUTHZ after
/// the rate limiter.
#[test]
fn istio_render_runs_validation_after_the_rate_limiter() {
    let mut placed = Vec::new();
    for (filter, shipped) in [("ip_geo", "ip-geo"), ("jwt", "jwt"), ("rate_limit", "rate-limit"), ("validate", "validate")] {
        let path = root().join(format!("deploy/istio/wasmplugin-{shipped}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        // The WasmPlugin is the file's first YAML document (some add a ServiceEntry after it).
        let first = text.split("\n---\n").next().unwrap();
        let doc: Value = serde_norway::from_str(first).unwrap();
        let json = serde_json::to_string(&doc["spec"]["pluginConfig"]).unwrap();
        let d = temp_dir(&format!("istio-{filter}"));
        let p = d.join("p.json");
        std::fs::write(&p, json).unwrap();
        let sha = "0".repeat(64);
        let (code, out, err) = run(&["render", "--target", "istio", "--filter", filter, "--sha256", &sha, "--module", "/m.wasm", s(&p)]);
        assert_eq!(code, 0, "{filter}: {err}");
        let rendered: Value = serde_norway::from_str(&out).unwrap();
        assert_eq!(rendered["spec"]["phase"], doc["spec"]["phase"], "{filter}");
        assert_eq!(rendered["spec"]["priority"], doc["spec"]["priority"], "{filter}");
        placed.push((rendered["spec"]["phase"].as_str().unwrap().to_string(), rendered["spec"]["priority"].as_u64().unwrap()));
    }
    assert_eq!(placed, [("AUTHN".into(), 20), ("AUTHN".into(), 10), ("AUTHZ".into(), 10), ("AUTHZ".into(), 5)]);
}
