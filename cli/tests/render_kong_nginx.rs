//! `gatewarden render --target nginx | kong`: the ngx_wasm_module configuration (quoting, VM
//! configuration, files), and the refusals before the engine: a policy the filter would refuse,
//! missing approvals under trust settings, callout targets that are not host:port, a parameter
//! too long for nginx. A refused render exits 1 and writes nothing.
//!
//! `rendered_config_runs_on_the_real_engine` starts nginx + ngx_wasm_module
//! (`$GATEWARDEN_WASMX`, else `../shared/wasmx/bin/nginx` beside the repository) with the
//! rendered files; without one it says so and returns (under CI=true it fails).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{engine, modules_dir, root, run, s, trust_settings};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("render-kn", name)
}

/// A policy whose JSON holds every character nginx.conf quoting must get right: `'`, `"`, `\`
/// (a regex `\d`), and the JSON escapes `\t` and `\n` (nginx turns a bare `\t`/`\n` in a quoted
/// parameter into a control character, which would make the JSON invalid).
const QUOTES_YAML: &str = r#"filter: ip_geo
policy_version: "v1"
rules:
  - name: quote-test
    match: { path_regex: "^/o'brien/\\d+$", headers: [ { name: x-note, exact: "it's \"quoted\"\ttab" } ] }
    deny: [0.0.0.0/0]
  - name: newline-test
    match: { path_prefix: /nl, headers: [ { name: x-nl, exact: "a\nb\\n" } ] }
    deny: [0.0.0.0/0]
default: {}
"#;

/// What nginx's configuration parser makes of a single-quoted parameter (ngx_conf_read_token):
/// `\"`, `\'`, `\\` become the character, `\t`, `\r`, `\n` a control character.
fn nginx_unquote(quoted: &str) -> String {
    let inner = quoted.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')).expect("single-quoted");
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek().copied() {
                Some(n @ ('"' | '\'' | '\\')) => {
                    out.push(n);
                    chars.next();
                    continue;
                }
                Some('t') | Some('r') | Some('n') => {
                    let n = chars.next().unwrap();
                    out.push(match n {
                        't' => '\t',
                        'r' => '\r',
                        _ => '\n',
                    });
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// The quoted parameter after `directive name ` on its line, up to the final `;`.
fn parameter<'a>(text: &'a str, prefix: &str) -> &'a str {
    let line = text.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line in {text}"));
    line.trim_start().strip_prefix(prefix).unwrap().strip_suffix(';').unwrap()
}

fn policy_json(file: &Path) -> String {
    let (code, out, err) = run(&["render-json", s(file)]);
    assert_eq!(code, 0, "{err}");
    out.trim_end().to_string()
}

#[test]
fn nginx_receives_the_policy_json_byte_for_byte() {
    let d = temp_dir("quotes");
    let p = d.join("p.yaml");
    std::fs::write(&p, QUOTES_YAML).unwrap();
    let (code, out, err) = run(&["render", "--target", "nginx", "--module", "/opt/gw/gatewarden_ip_geo.wasm", s(&p)]);
    assert_eq!(code, 0, "{err}");
    let quoted = parameter(&out, "proxy_wasm gatewarden_ip_geo ");
    assert!(quoted.contains(r#""path_regex":"^/o\'brien/\\\\d+$""#), "{quoted}");
    assert!(quoted.contains(r#""exact":"a\\nb\\\\n""#), "{quoted}");
    assert_eq!(nginx_unquote(quoted), policy_json(&p));
    assert_eq!(parameter(&out, "module gatewarden_ip_geo "), "'/opt/gw/gatewarden_ip_geo.wasm'");
    assert!(out.contains("\n    shm_kv * 1m;\n"), "{out}");
    assert!(out.contains("\n    shm_kv gatewarden 64m;\n}\n"), "{out}");
    assert!(out.starts_with("# ---- main context of nginx.conf ----\n"), "{out}");
    assert!(out.contains("\n# ---- inside location { ... } ----\n"), "{out}");
}

#[test]
fn nginx_out_dir_vm_id_shm_size_and_trust_settings() {
    let d = temp_dir("out");
    let trust = trust_settings(&d, 1);
    let p = d.join("p.yaml");
    std::fs::write(&p, QUOTES_YAML).unwrap();
    let (code, _, err) = run(&["sign", "--key", s(&d.join("alice.key")), "--key-id", "alice", s(&p)]);
    assert_eq!(code, 0, "{err}");
    let out_dir = d.join("conf");
    let (code, out, err) = run(&[
        "render",
        "--target",
        "nginx",
        "--module",
        "rel/f.wasm",
        "--vm-id",
        "geo",
        "--shm-size",
        "128m",
        "--vm-config",
        s(&trust),
        "--out",
        s(&out_dir),
        s(&p),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n{}\n", out_dir.join("geo.wasm.conf").display(), out_dir.join("geo.location.conf").display()));
    let wasm = std::fs::read_to_string(out_dir.join("geo.wasm.conf")).unwrap();
    let location = std::fs::read_to_string(out_dir.join("geo.location.conf")).unwrap();
    // The module line: absolute path (nginx opens it from its own working directory), then the
    // trust settings as compact JSON: the VM configuration on_vm_start reads.
    let module = parameter(&wasm, "module geo ");
    let (path, config) = module.split_once(' ').unwrap();
    assert_eq!(nginx_unquote(path), std::fs::canonicalize(root()).unwrap().join("rel/f.wasm").to_string_lossy());
    let trust_json: Value = serde_json::from_str(&std::fs::read_to_string(&trust).unwrap()).unwrap();
    assert_eq!(nginx_unquote(config), serde_json::to_string(&trust_json).unwrap());
    assert!(wasm.contains("\n    shm_kv gatewarden 128m;\n"), "{wasm}");
    assert_eq!(nginx_unquote(parameter(&location, "proxy_wasm geo ")), policy_json(&p));
    // How to write the location's proxy_pass so the upstream gets the URI the filter judged
    // (followed on the real engine by rendered_config_runs_on_the_real_engine).
    assert!(
        location.contains(
            "# location it covers a URI part, the location's own path, so the upstream receives that same URI:\n\
             #     location /api/ { include <this file>; proxy_pass http://backend/api/; }\n"
        ),
        "{location}"
    );

    let (code, _, err) = run(&["render", "--target", "nginx", "--shm-size", "lots", s(&p)]);
    assert_eq!(code, 2);
    assert!(err.contains("--shm-size: \"lots\" is not an nginx size like \"64m\""), "{err}");
    let (code, _, err) = run(&["render", "--target", "nginx", "--vm-id", "geo:1", s(&p)]);
    assert_eq!(code, 2);
    assert!(err.contains("--vm-id: module name \"geo:1\": character ':' not allowed"), "{err}");
}

/// Runs a render that must be refused: exit 1, exactly `message` for `file` on stderr, and
/// nothing written (the --out directory is not even created).
fn assert_refused(target: &str, file: &Path, extra: &[&str], message: &str) {
    let out_dir = file.with_extension(format!("{target}-out"));
    let mut args = vec!["render", "--target", target, "--out", s(&out_dir)];
    args.extend_from_slice(extra);
    args.push(s(file));
    let (code, out, err) = run(&args);
    assert_eq!(code, 1, "{target}: {out} {err}");
    assert_eq!(err, format!("{}: {message}\ngatewarden: render refused, nothing written\n", file.display()), "{target}");
    assert_eq!(out, "");
    assert!(!out_dir.exists(), "{target}: {} was created", out_dir.display());
}

#[test]
fn kong_and_nginx_refuse_what_the_filter_would_refuse() {
    let d = temp_dir("invalid");
    let bad = d.join("bad.yaml");
    std::fs::write(&bad, QUOTES_YAML.replace("0.0.0.0/0", "10.0.0.0/33")).unwrap();
    // A JWT policy that is fine for Kong but for one unknown provider.
    let jwt = d.join("jwt.yaml");
    let example = std::fs::read_to_string(root().join("examples/policies/jwt.yaml")).unwrap();
    std::fs::write(
        &jwt,
        example
            .replace("cluster: idp_jwks", "cluster: \"127.0.0.1:8443\"")
            .replace("default:\n  requires: { provider: example-idp }", "default:\n  requires: { provider: nobody }"),
    )
    .unwrap();
    for target in ["kong", "nginx"] {
        assert_refused(
            target,
            &bad,
            &[],
            "rules[0].deny[0]: invalid CIDR \"10.0.0.0/33\": expected an IPv4 or IPv6 network like \"10.0.0.0/8\" or \"2001:db8::/32\"",
        );
        assert_refused(target, &jwt, &[], "default.requires.provider: unknown provider \"nobody\"");
    }
}

#[test]
fn kong_and_nginx_refuse_missing_or_tampered_approvals() {
    let d = temp_dir("approvals");
    let trust = trust_settings(&d, 2);
    let p = d.join("p.yaml");
    std::fs::write(&p, QUOTES_YAML).unwrap();
    for target in ["kong", "nginx", "envoy"] {
        assert_refused(
            target,
            &p,
            &["--vm-config", s(&trust)],
            "the filter would refuse it: signatures: 0 valid signature(s) from distinct trusted keys, 2 required",
        );
    }
    for who in ["alice", "bob"] {
        let (code, _, err) = run(&["sign", "--key", s(&d.join(format!("{who}.key"))), "--key-id", who, s(&p)]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(&["render", "--target", "nginx", "--vm-config", s(&trust), s(&p)]);
    assert_eq!(code, 0, "two approvals: {err}");
    let (code, _, err) = run(&["render", "--target", "kong", "--vm-config", s(&trust), s(&p)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "gatewarden: warning: --vm-config: the Kong filter_chains output has no place for the VM configuration, so it does not carry the trust settings; the policy's signatures were checked here only\n"
    );
    // Tampered after signing: both signatures stop counting.
    let tampered = d.join("tampered.yaml");
    std::fs::write(&tampered, std::fs::read_to_string(&p).unwrap().replace("0.0.0.0/0", "192.0.2.0/24")).unwrap();
    for target in ["kong", "nginx"] {
        let (code, _, err) = run(&["render", "--target", target, "--vm-config", s(&trust), s(&tampered)]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("the filter would refuse it: signatures: 0 valid signature(s) from distinct trusted keys, 2 required"),
            "{err}"
        );
    }
    // Invalid trust settings: could not run (2), nothing written.
    let broken = d.join("broken.json");
    std::fs::write(&broken, r#"{"trusted_signers": [], "required_signatures": 1}"#).unwrap();
    let (code, _, err) = run(&["render", "--target", "nginx", "--vm-config", s(&broken), s(&p)]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!(
            "{}: {}: invalid trust settings: required_signatures: 1 signatures required but only 0 trusted signers: no policy could ever be accepted\ngatewarden: render refused, nothing written\n",
            p.display(),
            broken.display()
        )
    );
}

#[test]
fn kong_and_nginx_refuse_callout_targets_that_are_not_host_port() {
    let d = temp_dir("targets");
    // The example policies name Envoy clusters.
    let ip_geo = root().join("examples/policies/ip_geo.yaml");
    let jwt = root().join("examples/policies/jwt.yaml");
    let why = "is not host:port: on Kong and nginx (ngx_wasm_module) a callout goes to host:port (an IP, or a name nginx resolves: \
               resolver_add <ip> <name>; in http{}), not to an Envoy cluster; write e.g. \"127.0.0.1:8080\"";
    for target in ["kong", "nginx"] {
        assert_refused(target, &ip_geo, &[], &format!("geo_database.cluster: \"gatewarden_geo_db\" {why}"));
        assert_refused(target, &jwt, &[], &format!("providers.example-idp.remote_jwks.cluster: \"idp_jwks\" {why}"));
    }
    // Envoy takes cluster names.
    let (code, _, err) = run(&["render", "--target", "envoy", s(&ip_geo)]);
    assert_eq!(code, 0, "{err}");
    // host:port is fine; a name gets a resolver_add note on nginx.
    let fixed = d.join("jwt.yaml");
    std::fs::write(&fixed, std::fs::read_to_string(&jwt).unwrap().replace("cluster: idp_jwks", "cluster: \"idp.internal:8443\"")).unwrap();
    let (code, out, err) = run(&["render", "--target", "nginx", s(&fixed)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("# providers.example-idp.remote_jwks.cluster names host \"idp.internal\": nginx must resolve it, e.g. `resolver_add <ip> idp.internal;` in http{}\n"),
        "{out}"
    );
    let (code, _, err) = run(&["render", "--target", "kong", s(&fixed)]);
    assert_eq!(code, 0, "{err}");
    // A port out of range is no port.
    let bad_port = d.join("port.yaml");
    std::fs::write(&bad_port, std::fs::read_to_string(&jwt).unwrap().replace("cluster: idp_jwks", "cluster: \"127.0.0.1:70000\"")).unwrap();
    assert_refused("nginx", &bad_port, &[], &format!("providers.example-idp.remote_jwks.cluster: \"127.0.0.1:70000\" {why}"));
}

#[test]
fn nginx_refuses_a_policy_longer_than_an_nginx_parameter_and_kong_takes_it() {
    let d = temp_dir("long");
    let cidrs: Vec<String> = (0..300).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let p = d.join("long.yaml");
    std::fs::write(&p, format!("filter: ip_geo\npolicy_version: v1\ndefault: {{ deny: [{}] }}\n", cidrs.join(", "))).unwrap();
    let len = policy_json(&p).len();
    assert_refused(
        "nginx",
        &p,
        &[],
        &format!(
            "the policy JSON is {len} bytes as an nginx.conf parameter; nginx refuses a parameter longer than 4094 bytes (\"too long parameter\"): \
             make it smaller (e.g. remote_jwks instead of a large local_jwks)"
        ),
    );
    let (code, _, err) = run(&["render", "--target", "kong", s(&p)]);
    assert_eq!(code, 0, "{err}");
}

// ---- the real engine ----

/// A raw HTTP/1.1 GET; returns the status code.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    get_with_body(port, path, headers).map(|(status, _)| status)
}

/// A raw HTTP/1.1 GET; returns the status code and the body.
fn get_with_body(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    conn.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

#[test]
fn rendered_config_runs_on_the_real_engine() {
    let Some(nginx) = engine() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: no nginx with ngx_wasm_module (set GATEWARDEN_WASMX)");
        eprintln!("SKIPPED rendered_config_runs_on_the_real_engine: no nginx with ngx_wasm_module (set GATEWARDEN_WASMX or provide ../shared/wasmx)");
        return;
    };
    let d = temp_dir("engine");
    let trust = trust_settings(&d, 1);
    let p = d.join("p.yaml");
    std::fs::write(&p, QUOTES_YAML).unwrap();
    let (code, _, err) = run(&["sign", "--key", s(&d.join("alice.key")), "--key-id", "alice", s(&p)]);
    assert_eq!(code, 0, "{err}");
    let module = modules_dir().join("gatewarden_ip_geo.wasm");
    let conf = d.join("conf");
    let (code, _, err) = run(&["render", "--target", "nginx", "--module", s(&module), "--vm-config", s(&trust), "--out", s(&conf), s(&p)]);
    assert_eq!(code, 0, "{err}");
    let (port, _nginx) = match common::start_rendered(&nginx, &d, "gatewarden_ip_geo.wasm", "ip_geo", "v1") {
        Ok(started) => started,
        Err(log) => panic!("the signed policy was not accepted through the rendered module line:\n{log}"),
    };
    // The policy's regex (`\d`), quote and tab survived nginx's parser: only the exact header matches.
    assert_eq!(get(port, "/o'brien/12", &[("x-note", "it's \"quoted\"\ttab")]), Some(403));
    assert_eq!(get(port, "/o'brien/12", &[("x-note", "its \"quoted\"\ttab")]), Some(200));
    assert_eq!(get(port, "/o'brien/x", &[("x-note", "it's \"quoted\"\ttab")]), Some(200));
    // proxy_pass written as the location part's note says (with a URI part): the filter judges
    // nginx's normalised URI and the upstream receives that same URI, the query as sent.
    assert_eq!(get(port, "/x/..%2Fo'brien/12", &[("x-note", "it's \"quoted\"\ttab")]), Some(403));
    assert_eq!(
        get_with_body(port, "/o'brien/12/../..//pub?q=a%20b&x=%2F", &[("x-note", "it's \"quoted\"\ttab")]),
        Some((200, "upstream /pub?q=a%20b&x=%2F\n".to_string()))
    );
}

#[test]
fn apply_is_for_envoy_and_points_kong_and_nginx_to_render() {
    let d = temp_dir("apply");
    for target in ["kong", "nginx"] {
        let (code, out, err) = run(&["apply", "--target", target, "examples/policies/ip_geo.yaml", "--to", s(&d)]);
        assert_eq!((code, out.as_str()), (2, ""));
        assert!(
            err.starts_with(&format!(
                "gatewarden: --target \"{target}\": apply writes Envoy ECDS resources only; for Kong or nginx use \
                 `gatewarden render --target kong|nginx --out DIR` (same checks; nothing is written when it refuses)\n"
            )),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "nothing written");
}
