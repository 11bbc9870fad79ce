//! `gatewarden render --target envoy-native`: the ECDS resource for the native module
//! (`libgatewarden.so`), its module flags and trust settings, and `deploy/envoy-native/`.
//!
//! `rendered_resources_run_on_the_pinned_envoy` starts the pinned Envoy (`.venv/bin/envoy`,
//! `scripts/setup.sh`) with `deploy/envoy-native/envoy.yaml` and the resources render wrote, the
//! module found through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (`target/release`, `scripts/build.sh`;
//! `$GATEWARDEN_NATIVE_DIR` overrides): a denial and an allow of two filters, a live update and a
//! refused one. Without Envoy or the module it says so and returns (under CI=true it fails).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{root, run, run_in, s, trust_settings};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("render-native", name)
}

const DYNAMIC_MODULE_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// IP/geo from inline CIDRs only: /admin from the office network (the test's client, 127.0.0.1,
/// is not in it); `{office}` is filled in per version.
const IP_GEO_YAML: &str = r#"filter: ip_geo
policy_version: "{version}"
rules:
  - name: admin-office-only
    match: { path_prefix: /admin }
    allow: [{office}]
default: {}
"#;

/// Two logins a minute per client address.
const RATE_LIMIT_YAML: &str = r#"filter: rate_limit
policy_version: "rl-1"
rules:
  - name: login
    match: { path_prefix: /login, methods: [POST] }
    limits: [ { name: login-minute, rate: 2, per: 1m } ]
    key: [client_address]
default: {}
"#;

fn ip_geo_policy(dir: &Path, version: &str, office: &str) -> PathBuf {
    let p = dir.join(format!("ip_geo-{version}.yaml"));
    std::fs::write(&p, IP_GEO_YAML.replace("{version}", version).replace("{office}", office)).unwrap();
    p
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn resource_is_the_dynamic_module_filter_with_the_policy_string() {
    let (code, policy_json, err) = run(&["render-json", "examples/policies/rate_limit.yaml"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["render", "--target", "envoy-native", "examples/policies/rate_limit.yaml"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let v = json(&out);
    let r = &v["resources"][0];
    assert_eq!(r["name"], "gatewarden.rate_limit");
    assert_eq!(r["typed_config"]["@type"], DYNAMIC_MODULE_FILTER);
    assert_eq!(r["typed_config"]["dynamic_module_config"], serde_json::json!({"name": "gatewarden", "do_not_close": true}));
    assert_eq!(r["typed_config"]["filter_name"], "rate_limit");
    assert_eq!(r["typed_config"]["filter_config"]["value"].as_str(), Some(policy_json.trim_end()));
    // The same version_info as the Wasm resource of the same policy: `history` and `diff` read either.
    let (_, wasm, _) = run(&["render", "--target", "envoy", "examples/policies/rate_limit.yaml"]);
    assert_eq!(v["version_info"], json(&wasm)["version_info"]);
}

#[test]
fn resource_equals_what_ecds_py_writes() {
    // The e2e harness pushes native policies with scripts/ecds.py: the same bytes as render's.
    let d = temp_dir("ecds-py");
    for (filter, file) in [("validate", "examples/policies/validate.yaml"), ("jwt", "examples/policies/jwt.yaml")] {
        let (code, json, err) = run(&["render-json", file]);
        assert_eq!(code, 0, "{err}");
        let policy = d.join(format!("{filter}.json"));
        std::fs::write(&policy, json.trim_end()).unwrap();
        let (code, ours, err) = run(&["render", "--target", "envoy-native", file]);
        assert_eq!(code, 0, "{err}");
        let theirs = Command::new("python3")
            .current_dir(root())
            .args(["scripts/ecds.py", "--target", "envoy-native", "--filter", filter, "--policy", s(&policy), "--out", "-"])
            .output()
            .unwrap();
        assert!(theirs.status.success(), "{}", String::from_utf8_lossy(&theirs.stderr));
        assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout), "{filter}");
    }
}

#[test]
fn module_flags_name_the_file_and_a_wasm_file_is_refused() {
    let d = temp_dir("flags");
    let (code, out, err) =
        run(&["render", "--target", "envoy-native", "--module", "/opt/gw/libgatewarden.so", "examples/policies/rate_limit.yaml"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        json(&out)["resources"][0]["typed_config"]["dynamic_module_config"],
        serde_json::json!({"module": {"local": {"filename": "/opt/gw/libgatewarden.so"}}, "do_not_close": true})
    );
    let (code, out, _) = run(&["render", "--target", "envoy-native", "--modules", "/opt/gw", "examples/policies/rate_limit.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["resources"][0]["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"],
        "/opt/gw/libgatewarden.so"
    );

    let out_file = d.join("rate_limit.json");
    let (code, out, err) = run(&[
        "render",
        "--target",
        "envoy-native",
        "--module",
        "target/wasm32-wasip1/release/gatewarden_rate_limit.wasm",
        "--out",
        s(&out_file),
        "examples/policies/rate_limit.yaml",
    ]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "gatewarden: --module \"target/wasm32-wasip1/release/gatewarden_rate_limit.wasm\": --target envoy-native loads the native \
         module libgatewarden.so, not a .wasm file (or leave --module out: Envoy then finds it in $ENVOY_DYNAMIC_MODULES_SEARCH_PATH)\n\
         (see `gatewarden render --help`)\ngatewarden: render refused, nothing written\n"
    );
    assert!(!out_file.exists(), "nothing written");

    let (code, _, err) = run(&["render", "--target", "envoy-native", "--vm-id", "shared", "examples/policies/rate_limit.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(err, "gatewarden: warning: --vm-id \"shared\": the native module runs without a VM; ignored\n");
}

#[test]
fn trust_settings_go_beside_the_resource_for_the_environment() {
    let d = temp_dir("trust");
    let trust = trust_settings(&d, 1);
    let p = ip_geo_policy(&d, "v1", "10.0.0.0/8");
    // Unsigned: refused against the trust settings, nothing written.
    let ecds = d.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    let out_file = ecds.join("ip_geo.json");
    let (code, _, err) = run(&["render", "--target", "envoy-native", "--vm-config", s(&trust), "--out", s(&out_file), s(&p)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the filter would refuse it"), "{err}");
    assert_eq!(std::fs::read_dir(&ecds).unwrap().count(), 0, "nothing written");

    let (code, _, err) = run(&["sign", "--key", s(&d.join("alice.key")), "--key-id", "alice", s(&p)]);
    assert_eq!(code, 0, "{err}");
    // stdout: the resource; the note names the --vm-config file for GATEWARDEN_TRUST_FILE.
    let (code, out, err) = run(&["render", "--target", "envoy-native", "--vm-config", s(&trust), s(&p)]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("trusted_signers"), "a filter config does not carry the trust settings: {out}");
    assert!(err.ends_with(&format!("start Envoy with GATEWARDEN_TRUST_FILE={}\n", trust.display())), "{err}");
    // --out FILE: the resource and gatewarden-trust.json beside it, both printed.
    let (code, out, err) = run(&["render", "--target", "envoy-native", "--vm-config", s(&trust), "--out", s(&out_file), s(&p)]);
    assert_eq!(code, 0, "{err}");
    let trust_copy = ecds.join("gatewarden-trust.json");
    assert_eq!(out, format!("{}\n{}\n", out_file.display(), trust_copy.display()));
    assert_eq!(std::fs::read(&trust_copy).unwrap(), std::fs::read(&trust).unwrap());
    assert!(err.contains("written beside the resource"), "{err}");
    assert!(err.ends_with(&format!("start Envoy with GATEWARDEN_TRUST_FILE={}\n", trust_copy.display())), "{err}");
    assert!(!err.contains("warning"), "same settings, no warning: {err}");
    // Changed settings (here the same ones, pretty-printed): written, with a warning that a
    // running Envoy keeps the ones it loaded.
    let changed = d.join("changed.json");
    let pretty = serde_json::to_string_pretty(&json(&std::fs::read_to_string(&trust).unwrap())).unwrap();
    std::fs::write(&changed, &pretty).unwrap();
    let (code, _, err) = run(&["render", "--target", "envoy-native", "--vm-config", s(&changed), "--out", s(&out_file), s(&p)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.starts_with(&format!(
            "gatewarden: warning: {}: the trust settings changed; a running Envoy keeps the ones it loaded until it restarts\n",
            trust_copy.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&trust_copy).unwrap(), pretty);
}

#[test]
fn help_lists_the_target() {
    let (code, out, _) = run(&["render", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("envoy-native"), "{out}");
    assert!(out.contains("libgatewarden.so"), "{out}");
}

/// Everything below the header comment of a template.
fn below_header(text: &str) -> String {
    text.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

#[test]
fn native_template_is_the_wasm_template_but_the_filter_type() {
    let wasm = std::fs::read_to_string(root().join("deploy/envoy/envoy.yaml")).unwrap();
    let native = std::fs::read_to_string(root().join("deploy/envoy-native/envoy.yaml")).unwrap();
    assert_eq!(
        below_header(&native),
        below_header(&wasm).replace(WASM_FILTER, DYNAMIC_MODULE_FILTER),
        "deploy/envoy-native/envoy.yaml drifted from deploy/envoy/envoy.yaml (only the header and the type_urls may differ)"
    );
    assert!(below_header(&native).contains(DYNAMIC_MODULE_FILTER));
}

#[test]
fn shipped_native_resources_are_what_render_writes() {
    let dir = root().join("deploy/envoy-native/ecds");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(filter) = path.file_stem().and_then(|f| f.to_str()).map(str::to_string) else { continue };
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let policy = format!("deploy/policies/{filter}.json");
        let (code, out, err) = run(&["render", "--target", "envoy-native", "--filter", &filter, &policy]);
        assert_eq!(code, 0, "{filter}: {err}");
        assert_eq!(
            out,
            std::fs::read_to_string(&path).unwrap(),
            "{} is stale: gatewarden render --target envoy-native {policy} --filter {filter} --out {}",
            path.display(),
            path.display()
        );
        seen.push(filter);
    }
    seen.sort();
    assert_eq!(seen, ["ip_geo", "jwt", "rate_limit", "validate"]);
}

// ---- the pinned Envoy with the real module ----

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upstream answering 200 `upstream` to every request, one per connection.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || answer(conn));
        }
    });
    port
}

fn answer(mut conn: TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nupstream\n");
}

/// A raw HTTP/1.1 request: the status code and the body; None when there was no HTTP answer.
fn try_request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(conn, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    conn.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some((status, body.to_string()));
    }
    // The admin API answers chunked: <hex size>\r\n<data>\r\n ... 0\r\n\r\n
    let (mut rest, mut data) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some((status, data));
        }
        data.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

fn request(port: u16, method: &str, path: &str) -> (u16, String) {
    try_request(port, method, path).unwrap_or_else(|| panic!("{method} {path}: no HTTP answer on port {port}"))
}

/// `deploy/envoy-native/envoy.yaml` rendered as scripts/envoyconf.py does: the filter block once
/// per filter, optional blocks dropped, `${NAME}` replaced outside comments.
fn bootstrap(filters: &[&str], values: &[(&str, String)]) -> String {
    let template = std::fs::read_to_string(root().join("deploy/envoy-native/envoy.yaml")).unwrap();
    let (mut lines, mut block, mut in_block, mut skipping) = (Vec::new(), Vec::new(), false, false);
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with("# BEGIN gatewarden-filters") {
            in_block = true;
        } else if t.starts_with("# END gatewarden-filters") {
            in_block = false;
            for f in filters {
                lines.extend(block.iter().map(|l: &&str| l.replace("${FILTER}", f)));
            }
        } else if t.starts_with("# BEGIN optional:") {
            skipping = true;
        } else if t.starts_with("# END optional:") {
            skipping = false;
        } else if in_block {
            block.push(line);
        } else if !skipping {
            lines.push(line.to_string());
        }
    }
    let mut out = String::new();
    for mut line in lines.into_iter().filter(|l| !l.trim_start().starts_with('#')) {
        for (k, v) in values {
            line = line.replace(&format!("${{{k}}}"), v);
        }
        out.push_str(&line);
        out.push('\n');
    }
    assert!(!out.contains("${"), "unrendered placeholder:\n{out}");
    out
}

struct Envoy {
    proc: Killed,
    admin: u16,
    port: u16,
    log: PathBuf,
}

impl Envoy {
    fn stat(&self, name: &str) -> u64 {
        let text = request(self.admin, "GET", &format!("/stats?filter=^{name}$")).1;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until `stat` exceeds `before`; panics with the log after 30 s.
    fn wait_stat_above(&self, stat: &str, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stat(stat) <= before {
            assert!(Instant::now() < deadline, "{stat} stayed at {before}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin port (from --admin-address-path) and the listener's port, once Envoy is ready.
    fn ports(address_file: &Path) -> Option<(u16, u16)> {
        let admin: u16 = std::fs::read_to_string(address_file).ok()?.trim().rsplit(':').next()?.parse().ok()?;
        let listeners: Value = serde_json::from_str(&try_request(admin, "GET", "/listeners?format=json")?.1).ok()?;
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        (try_request(admin, "GET", "/ready")?.0 == 200).then_some((admin, port))
    }
}

/// Starts `envoy` in `dir` on `deploy/envoy-native/envoy.yaml` with `filters` (their resources in
/// `dir/ecds`), the module from `native_dir` and the trust settings `trust`; waits until ready.
fn start_envoy(envoy: &Path, native_dir: &Path, dir: &Path, filters: &[&str], trust: &Path) -> Envoy {
    let values = [
        ("ADMIN_ADDRESS", "127.0.0.1".to_string()),
        ("ADMIN_PORT", "0".into()),
        ("LISTEN_ADDRESS", "127.0.0.1".into()),
        ("LISTEN_PORT", "0".into()),
        ("UPSTREAM_HOST", "127.0.0.1".into()),
        ("UPSTREAM_PORT", upstream().to_string()),
        ("GEO_DB_HOST", "127.0.0.1".into()),
        ("GEO_DB_PORT", "9".into()),
        ("JWKS_HOST", "127.0.0.1".into()),
        ("JWKS_PORT", "9".into()),
        ("ECDS_DIR", s(&dir.join("ecds")).to_string()),
    ];
    std::fs::write(dir.join("envoy.yaml"), bootstrap(filters, &values)).unwrap();
    let log = dir.join("envoy.log");
    let address_file = dir.join("admin-address");
    let child = Command::new(envoy)
        .args(["-c", "envoy.yaml", "--concurrency", "2", "--disable-hot-restart", "-l", "info"])
        .args(["--base-id", &(std::process::id() % 60_000).to_string(), "--admin-address-path", s(&address_file)])
        .current_dir(dir)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_dir)
        .env("GATEWARDEN_TRUST_FILE", trust)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut gw = Envoy { proc: Killed(child), admin: 0, port: 0, log };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = gw.proc.0.try_wait() {
            panic!("envoy exited ({status}) while starting; log:\n{}", gw.log());
        }
        if let Some((admin, port)) = Envoy::ports(&address_file) {
            (gw.admin, gw.port) = (admin, port);
            return gw;
        }
        assert!(Instant::now() < deadline, "envoy not ready after 60 s; log:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pinned Envoy and the directory of the built module, or why the test cannot run.
fn envoy_and_module() -> Result<(PathBuf, PathBuf), String> {
    let envoy = root().join(".venv/bin/envoy");
    let native_dir = std::env::var_os("GATEWARDEN_NATIVE_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target/release"));
    if !envoy.exists() {
        return Err(format!("{} missing (scripts/setup.sh)", envoy.display()));
    }
    if !native_dir.join("libgatewarden.so").exists() {
        return Err(format!("{}/libgatewarden.so missing (scripts/build.sh)", native_dir.display()));
    }
    Ok((envoy, native_dir))
}

#[test]
fn rendered_resources_run_on_the_pinned_envoy() {
    let (envoy, native_dir) = match envoy_and_module() {
        Ok(found) => found,
        Err(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {why}");
            eprintln!("SKIPPED rendered_resources_run_on_the_pinned_envoy: {why}");
            return;
        }
    };
    let d = temp_dir("envoy");
    let ecds = d.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    // Approvals: one signature of alice; the trust settings reach the module through the file
    // render writes beside the resources and GATEWARDEN_TRUST_FILE.
    let trust = trust_settings(&d, 1);
    let sign = |p: &Path| {
        let (code, _, err) = run(&["sign", "--key", s(&d.join("alice.key")), "--key-id", "alice", s(p)]);
        assert_eq!(code, 0, "{err}");
    };
    let render = |p: &Path, filter: &str| {
        let out = ecds.join(format!("{filter}.json"));
        let (code, _, err) = run_in(&d, &["render", "--target", "envoy-native", "--vm-config", s(&trust), "--out", s(&out), s(p)]);
        assert_eq!(code, 0, "{err}");
    };
    let v1 = ip_geo_policy(&d, "v1", "10.0.0.0/8");
    let rl = d.join("rate_limit.yaml");
    std::fs::write(&rl, RATE_LIMIT_YAML).unwrap();
    sign(&v1);
    sign(&rl);
    render(&v1, "ip_geo");
    render(&rl, "rate_limit");
    let gw = start_envoy(&envoy, &native_dir, &d, &["ip_geo", "rate_limit"], &ecds.join("gatewarden-trust.json"));
    let log = gw.log();
    assert!(log.contains("gatewarden ip_geo: policy \"v1\" accepted (native module)"), "{log}");
    assert!(log.contains("gatewarden rate_limit: policy \"rl-1\" accepted (native module)"), "{log}");

    // IP/geo: a denial with the filter's public body, and an allow.
    let (status, body) = request(gw.port, "GET", "/admin/users");
    assert_eq!(status, 403, "{body}");
    assert_eq!(request(gw.port, "GET", "/shop"), (200, "upstream\n".to_string()));
    // Rate limit: two logins a minute, then 429.
    let statuses: Vec<u16> = (0..3).map(|_| request(gw.port, "POST", "/login").0).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(gw.stat("dynamicmodulescustom.gatewarden_ip_geo_denied"), 1);
    assert_eq!(gw.stat("dynamicmodulescustom.gatewarden_rate_limit_denied"), 1);
    // The module defines the .wasm's counters, under Envoy's prefix for dynamic modules.
    for filter in ["ip_geo", "rate_limit"] {
        let wasm = common::modules_dir().join(format!("gatewarden_{filter}.wasm"));
        if !wasm.exists() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {} missing", wasm.display());
            eprintln!("counter names not compared: {} missing (scripts/build.sh)", wasm.display());
            continue;
        }
        let (code, listed, err) = run(&["counters", "--module", s(&wasm), "--host-prefix", "envoy-native"]);
        assert_eq!(code, 0, "{err}");
        let prefix = format!("dynamicmodulescustom.gatewarden_{filter}_");
        let stats = request(gw.admin, "GET", &format!("/stats?filter=^{prefix}")).1;
        let mut shown: Vec<&str> = stats.lines().filter_map(|l| l.split_once(": ").map(|(name, _)| name)).collect();
        shown.sort_unstable();
        assert_eq!(shown, listed.lines().collect::<Vec<_>>(), "{filter}");
    }

    // Live update through ECDS: v2 takes the client's network into the office.
    let ecds_stat = |what: &str| format!("extension_config_discovery.http_filter.gatewarden.ip_geo.{what}");
    let before = gw.stat(&ecds_stat("update_success"));
    let v2 = ip_geo_policy(&d, "v2", "127.0.0.0/8");
    sign(&v2);
    render(&v2, "ip_geo");
    gw.wait_stat_above(&ecds_stat("update_success"), before);
    assert_eq!(request(gw.port, "GET", "/admin/users").0, 200, "v2 serves");

    // A refused update: v3 with its signature no longer matching (changed after signing), written
    // past render (which would refuse it): Envoy rejects it and v2 keeps serving.
    let text = std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap();
    let tampered = text
        .replace("127.0.0.0/8", "0.0.0.0/0")
        .replace("\\\"v2\\\"", "\\\"v3\\\"")
        .replace("\"version_info\": \"v2-", "\"version_info\": \"v3-");
    assert_ne!(tampered, text);
    let rejected = gw.stat(&ecds_stat("update_rejected"));
    let tmp = ecds.join(".ip_geo.json.tmp");
    std::fs::write(&tmp, tampered).unwrap();
    std::fs::rename(&tmp, ecds.join("ip_geo.json")).unwrap();
    gw.wait_stat_above(&ecds_stat("update_rejected"), rejected);
    let log = gw.log();
    assert!(log.contains("gatewarden ip_geo: policy refused: "), "{log}");
    assert!(gw.stat("dynamicmodulescustom.gatewarden_ip_geo_signature_rejected") >= 1, "{log}");
    assert_eq!(request(gw.port, "GET", "/admin/users").0, 200, "v2 still serves");
}

#[test]
fn apply_and_rollback_run_on_the_pinned_envoy() {
    let (envoy, native_dir) = match envoy_and_module() {
        Ok(found) => found,
        Err(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {why}");
            eprintln!("SKIPPED apply_and_rollback_run_on_the_pinned_envoy: {why}");
            return;
        }
    };
    let d = temp_dir("apply");
    let ecds = d.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    let trust = trust_settings(&d, 1);
    let sign = |p: &Path| {
        let (code, _, err) = run(&["sign", "--key", s(&d.join("alice.key")), "--key-id", "alice", s(p)]);
        assert_eq!(code, 0, "{err}");
    };
    let apply = |p: &Path, extra: &[&str]| {
        let mut args = vec!["apply", s(p), "--to", s(&ecds), "--target", "envoy-native", "--author", "ann"];
        args.extend_from_slice(extra);
        run(&args)
    };
    // v1 with the trust settings: they go beside the resource, where Envoy's environment names them.
    let v1 = ip_geo_policy(&d, "v1", "10.0.0.0/8");
    sign(&v1);
    let (code, out, err) = apply(&v1, &["--vm-config", s(&trust)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("applied version 1 of "), "{out}");
    assert_eq!(std::fs::read(ecds.join("gatewarden-trust.json")).unwrap(), std::fs::read(&trust).unwrap());
    let gw = start_envoy(&envoy, &native_dir, &d, &["ip_geo"], &ecds.join("gatewarden-trust.json"));
    assert_eq!(request(gw.port, "GET", "/admin/users").0, 403, "v1 serves");

    // Without --vm-config, the settings beside the resources still apply: an unsigned v2 is refused.
    let v2 = ip_geo_policy(&d, "v2", "127.0.0.0/8");
    let files = std::fs::read_dir(&ecds).unwrap().count();
    let (code, _, err) = apply(&v2, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the filter would refuse it: signatures: 0 valid signature(s) from distinct trusted keys, 1 required"), "{err}");
    assert!(err.ends_with("gatewarden: apply refused, nothing changed\n"), "{err}");
    assert_eq!(std::fs::read_dir(&ecds).unwrap().count(), files, "nothing written");

    let ecds_stat = "extension_config_discovery.http_filter.gatewarden.ip_geo.update_success";
    sign(&v2);
    let before = gw.stat(ecds_stat);
    let (code, out, err) = apply(&v2, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("applied version 2 of "), "{out}");
    gw.wait_stat_above(ecds_stat, before);
    assert_eq!(request(gw.port, "GET", "/admin/users").0, 200, "v2 serves");

    // A rollback re-applies v1 as the native module's resource, as it was recorded.
    let before = gw.stat(ecds_stat);
    let (code, out, err) = run(&["rollback", "--to", s(&ecds), "--author", "bob"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("applied version 3 of ") && out.contains("(rollback to version 1)"), "{out}");
    gw.wait_stat_above(ecds_stat, before);
    assert_eq!(request(gw.port, "GET", "/admin/users").0, 403, "v1 serves again");
    let resource = json(&std::fs::read_to_string(ecds.join("ip_geo.json")).unwrap());
    assert_eq!(resource["resources"][0]["typed_config"]["@type"], DYNAMIC_MODULE_FILTER);
    let (code, out, err) = run(&["history", "--to", s(&ecds), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let history = json(&out);
    let versions: Vec<(u64, &str)> =
        history.as_array().unwrap().iter().map(|h| (h["version"].as_u64().unwrap(), h["policy_version"].as_str().unwrap())).collect();
    assert_eq!(versions, [(1, "v1"), (2, "v2"), (3, "v1")]);
    let entry = json(&std::fs::read_to_string(ecds.join(".gatewarden/history/000003.json")).unwrap());
    assert_eq!((entry["target"].as_str(), entry["module"].as_str()), (Some("envoy-native"), Some("")));
    assert_eq!(gw.stat("extension_config_discovery.http_filter.gatewarden.ip_geo.update_rejected"), 0);
}
