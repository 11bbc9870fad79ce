//! Shared test helpers: builds the `echo` test module once per test binary and starts VMs.
#![allow(dead_code)]

use gatewarden_wasm_host::{Host, Module, Profile, Vm, VmOptions};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Builds test module `name` (wasm-host/test-modules/<name>) for wasm32-wasip1 in release mode
/// under `<target>/test-modules` and returns the path of `<wasm_file>`. Cargo's lock serialises
/// concurrent builds from several test binaries.
pub fn build_test_module(name: &str, wasm_file: &str) -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest_dir.join("../target")).join("test-modules");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(manifest_dir.join(format!("test-modules/{name}/Cargo.toml")))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build (coverage, lints) do not apply to the wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} test module failed: {status}");
    target_dir.join("wasm32-wasip1/release").join(wasm_file)
}

/// The `echo` test module (wasm-host/test-modules/echo), built once per test binary.
pub fn echo_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let wasm = build_test_module("echo", "echo_filter.wasm");
        std::fs::read(&wasm).unwrap_or_else(|e| panic!("reading {}: {e}", wasm.display()))
    })
}

/// The `pipeline` test module (a filter that waits), built and compiled once per test binary.
pub fn pipeline_module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| {
        let wasm = build_test_module("pipeline", "gatewarden_test_pipeline.wasm");
        Module::from_file(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
    })
}

/// The echo module compiled once per test binary (compiling is the slow step).
pub fn echo_module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| Module::new(echo_wasm()).expect("echo module compiles"))
}

/// A host of `profile` with cluster `lookup_cluster` declared.
pub fn host(profile: Profile) -> Host {
    let host = Host::new(profile);
    host.add_cluster("lookup_cluster");
    host
}

/// A VM of the echo module configured with `config`, which must be accepted.
pub fn configured_vm(host: &Host, config: &str) -> Vm {
    let mut vm = host.load_vm(echo_module(), VmOptions::new("echo_root").vm_config("vm-config-bytes")).expect("echo module loads");
    assert!(vm.configure(config.as_bytes()).expect("configure runs"), "config {config:?} refused");
    vm
}

/// The release module of filter package `package` (e.g. `gatewarden-ip-geo`): built first by
/// scripts/build.sh into `GATEWARDEN_WASM_DIR` (default target/wasm32-wasip1/release), or built
/// here if missing. Compile it once per test binary (keep the result in a `OnceLock`).
pub fn filter_module(package: &str) -> Module {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("GATEWARDEN_WASM_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target/wasm32-wasip1/release"));
    let wasm = dir.join(format!("{}.wasm", package.replace('-', "_")));
    if !wasm.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip1", "-p", package])
            .current_dir(&root)
            .env_remove("RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {package} failed");
    }
    Module::from_file(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
}

/// Base64url without padding (JWT segments), written here so the tests do not share code with the
/// filter they check.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
