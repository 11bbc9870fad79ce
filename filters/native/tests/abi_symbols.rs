//! The bindings are pinned to the Envoy of `scripts/lib.sh` (1.40.0, dynamic-module ABI v0.2.0):
//! Envoy only warns on another ABI string and a changed signature is undefined behaviour, so this
//! checks our declarations against the pinned binary itself.
//!
//! - every callback declared in `shared/native/src/abi.rs` is a symbol the binary exports;
//! - every HTTP-filter event hook the binary's own builtin module implements (Envoy resolves the
//!   same set in any module) is in our `HTTP_FILTER_HOOKS` list, and the other way round;
//! - the built module (`libgatewarden.so`) exports each of those hooks;
//! - the binary carries our ABI string.
//!
//! The binary comes from `scripts/setup.sh` (the project's virtualenv); the symbols are read with
//! `nm -D` (binutils).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use gatewarden_native::abi::{ABI_VERSION, HTTP_FILTER_HOOKS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The pinned Envoy binary of the project's virtualenv.
fn envoy_binary() -> PathBuf {
    let lib = root().join(".venv/lib");
    let found = std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("no pinned Envoy under {} (run scripts/setup.sh)", lib.display()))
}

fn dynamic_symbols(file: &Path, defined: bool) -> BTreeSet<String> {
    let mut cmd = Command::new("nm");
    cmd.arg("-D");
    if defined {
        cmd.arg("--defined-only");
    }
    let out = cmd.arg(file).output().unwrap_or_else(|e| panic!("nm -D {}: {e}", file.display()));
    assert!(out.status.success(), "nm -D {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_owned())
        .collect()
}

/// The callbacks declared in our bindings (names after `pub fn` inside the `extern "C"` block).
fn declared_callbacks() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("shared/native/src/abi.rs")).expect("read abi.rs");
    let start = text.find("extern \"C\" {").expect("the extern block");
    let block = &text[start..];
    let end = block.find("\n}\n").expect("the end of the extern block");
    block[..end].split("pub fn ").skip(1).map(|rest| rest.split('(').next().unwrap_or("").trim().to_owned()).collect()
}

#[test]
fn every_declared_callback_is_exported_by_the_pinned_envoy() {
    let envoy = dynamic_symbols(&envoy_binary(), true);
    let declared = declared_callbacks();
    assert!(declared.len() >= 20, "parsed too few declarations: {declared:?}");
    let missing: Vec<&String> = declared.iter().filter(|name| !envoy.contains(*name)).collect();
    assert!(missing.is_empty(), "callbacks our bindings declare that the pinned Envoy does not export: {missing:?}");
}

#[test]
fn our_hook_list_is_the_pinned_envoys_http_filter_hook_set() {
    let envoy = dynamic_symbols(&envoy_binary(), true);
    // The builtin module of the binary implements every hook of its ABI under a prefix.
    let prefix = "hickory_dns_static_";
    let builtin: BTreeSet<String> = envoy
        .iter()
        .filter_map(|s| s.strip_prefix(prefix))
        .filter(|s| s.starts_with("envoy_dynamic_module_on_http_filter") || *s == "envoy_dynamic_module_on_program_init")
        .map(str::to_owned)
        .collect();
    assert!(builtin.len() > 20, "the binary's builtin module hooks were not found: {builtin:?}");
    let ours: BTreeSet<String> = HTTP_FILTER_HOOKS.iter().map(|s| (*s).to_owned()).collect();
    let not_ours: Vec<&String> = builtin.difference(&ours).collect();
    let not_envoys: Vec<&String> = ours.difference(&builtin).collect();
    assert!(not_ours.is_empty(), "hooks of the pinned Envoy missing from HTTP_FILTER_HOOKS: {not_ours:?}");
    assert!(not_envoys.is_empty(), "hooks in HTTP_FILTER_HOOKS the pinned Envoy does not have: {not_envoys:?}");
}

#[test]
fn the_built_module_exports_every_hook_and_imports_only_envoy_callbacks() {
    // Cargo builds only the rlib for tests: build the cdylib of this profile (incremental: the
    // test's own dependencies are already built), found at target/<profile>/libgatewarden.so
    // beside target/<profile>/deps/<this test>.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "gatewarden-envoy-native"]).current_dir(root());
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p gatewarden-envoy-native failed");
    let module = dir.join("libgatewarden.so");
    assert!(module.is_file(), "{} not built", module.display());
    let exported = dynamic_symbols(&module, true);
    let missing: Vec<&&str> = HTTP_FILTER_HOOKS.iter().filter(|h| !exported.contains(**h)).collect();
    assert!(missing.is_empty(), "hooks the module does not export: {missing:?}");
    let all = dynamic_symbols(&module, false);
    let undefined: BTreeSet<&String> = all.difference(&exported).collect();
    let proxy_wasm: Vec<&&String> = undefined.iter().filter(|s| s.starts_with("proxy_")).collect();
    assert!(proxy_wasm.is_empty(), "the native module imports Proxy-Wasm host functions: {proxy_wasm:?}");
    let envoy = dynamic_symbols(&envoy_binary(), true);
    let unknown: Vec<&&String> = undefined.iter().filter(|s| s.starts_with("envoy_") && !envoy.contains(**s)).collect();
    assert!(unknown.is_empty(), "the module imports Envoy symbols the pinned binary lacks: {unknown:?}");
}

#[test]
fn the_pinned_envoy_speaks_our_abi_version() {
    let bytes = std::fs::read(envoy_binary()).expect("read envoy");
    assert!(
        bytes.windows(ABI_VERSION.len()).any(|w| w == ABI_VERSION),
        "the pinned Envoy does not carry ABI string {:?}",
        String::from_utf8_lossy(ABI_VERSION)
    );
}
