//! Helpers shared by the CLI's integration tests: run the built `gatewarden`, find the repo and
//! the release modules, make scratch directories and trust settings.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

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
