//! Helpers shared by the CLI's integration tests: run the built `gatewarden`, find the repo and
//! the release modules, make scratch directories and trust settings.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `.wasm` files: `GATEWARDEN_WASM_DIR`, else `target/wasm32-wasip1/release`.
pub fn modules_dir() -> PathBuf {
    std::env::var_os("GATEWARDEN_WASM_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target/wasm32-wasip1/release"))
}

/// Runs `gatewarden args` in `dir`: (exit code, stdout, stderr).
pub fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatewarden")).current_dir(dir).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Runs `gatewarden args` in the repository root.
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_in(&root(), args)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh, empty scratch directory `gatewarden-<prefix>-<pid>-<name>`.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatewarden-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Keys alice and bob (`gatewarden keygen`) in `dir` and trust settings requiring `required` of them.
pub fn trust_settings(dir: &Path, required: u32) -> PathBuf {
    let mut signers = Vec::new();
    for who in ["alice", "bob"] {
        let (code, out, err) = run(&["keygen", "--out", s(&dir.join(who))]);
        assert_eq!(code, 0, "{err}");
        signers.push(serde_json::from_str::<Value>(out.trim()).unwrap());
    }
    let trust = dir.join("trust.json");
    std::fs::write(&trust, json!({"trusted_signers": signers, "required_signatures": required}).to_string()).unwrap();
    trust
}

// ---- Kong's engine (nginx + ngx_wasm_module) ----

/// nginx with ngx_wasm_module: `$GATEWARDEN_WASMX`, else `../shared/wasmx/bin/nginx` beside the repository.
pub fn engine() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWARDEN_WASMX").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let shipped = root().join("../shared/wasmx/bin/nginx");
    shipped.is_file().then_some(shipped)
}

/// nginx in the foreground, one process (`master_process off`): killed on drop.
pub struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `nginx` in `dir` with the files `gatewarden render --target nginx --out dir/conf` wrote
/// for `module` (`gatewarden_<filter>.wasm`): a listener whose `/` runs the filter before an
/// upstream that answers `upstream <uri>`. Waits until the filter logs `policy "<version>"
/// accepted`; returns the listener's port and the running nginx, or the error log.
pub fn start_rendered(nginx: &Path, dir: &Path, module: &str, filter: &str, version: &str) -> Result<(u16, Nginx), String> {
    let (port, upstream) = (free_port(), free_port());
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let main_conf = format!(
        "daemon off; master_process off; worker_processes 1; error_log logs/error.log info; pid logs/nginx.pid;\n\
         events {{}}\n\
         include conf/{module}.conf;\n\
         http {{\n\
             access_log off;\n\
             client_body_temp_path tmp_body; proxy_temp_path tmp_proxy; fastcgi_temp_path tmp_fcgi; uwsgi_temp_path tmp_uwsgi; scgi_temp_path tmp_scgi;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ include conf/{stem}.location.conf; proxy_pass http://127.0.0.1:{upstream}/; }} }}\n\
             server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 \"upstream $request_uri\\n\"; }} }}\n\
         }}\n",
        stem = module.trim_end_matches(".wasm"),
    );
    std::fs::write(dir.join("nginx.conf"), main_conf).unwrap();
    let child = Command::new(nginx)
        .args(["-p", s(dir), "-c", s(&dir.join("nginx.conf"))])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Nginx(child);
    let log = dir.join("logs/error.log");
    let accepted = format!("gatewarden {filter}: policy \"{version}\" accepted");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&accepted) {
            return Ok((port, guard));
        }
        if Instant::now() > deadline || text.contains("[emerg]") {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
