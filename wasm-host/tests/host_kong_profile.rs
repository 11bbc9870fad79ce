//! The Kong profile fails where ngx_wasm_module fails, so that the fast tests catch what would
//! crash or trap the real engine (../shared/wasmx/README.md, seen on ngx_wasm_module 3bed278):
//! a stream callback the module does not export (the worker crashes), a second non-zero tick
//! period of one root context (a trap that fails `on_configure`), and `plugin_name` read in a
//! root context (the worker crashes). And a request header the module removes still reaches the
//! upstream (nginx's proxy_pass ignores the deleted mark). The same modules pass on Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatewarden_wasm_host::{Host, Module, Profile, Request, VmOptions};

/// A minimal Proxy-Wasm module: the always-needed exports, `proxy_on_request_headers`, and
/// whatever `extra` adds (more exports, or an `on_configure` body).
fn module(on_configure: &str, extra: &str) -> Module {
    module_with(on_configure, "", extra)
}

/// [`module`] with `on_request_headers` code too.
fn module_with(on_configure: &str, on_request_headers: &str, extra: &str) -> Module {
    let wat = format!(
        r#"(module
            (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
            (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
            (memory (export "memory") 2)
            (data (i32.const 16) "plugin_name")
            (data (i32.const 32) "x-secret")
            (global $heap (mut i32) (i32.const 1024))
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
                (local $p i32)
                (local.set $p (global.get $heap))
                (global.set $heap (i32.add (global.get $heap) (local.get $n)))
                (local.get $p))
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
            (func (export "proxy_on_configure") (param i32 i32) (result i32) {on_configure} (i32.const 1))
            (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {on_request_headers} (i32.const 0))
            {extra}
        )"#
    );
    let bytes = wat::parse_str(&wat).unwrap_or_else(|e| panic!("test module: {e}\n{wat}"));
    Module::new(&bytes).expect("test module compiles")
}

const OTHER_CALLBACKS: &str = r#"
    (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
    (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
    (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
    (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
    (func (export "proxy_on_log") (param i32))
"#;

fn one_request(profile: Profile, module: &Module) -> gatewarden_wasm_host::Outcome {
    let host = Host::new(profile);
    let mut vm = host.load_vm(module, VmOptions::new("probe")).expect("vm");
    assert!(vm.configure(b"{}").expect("configure"));
    vm.http_request(Request::get("/")).expect("request")
}

#[test]
fn a_missing_stream_callback_crashes_kong_but_not_envoy() {
    let lean = module("", "");
    let on_envoy = one_request(Profile::Envoy, &lean);
    assert_eq!(on_envoy.status, 200, "Envoy calls only what is exported");
    let on_kong = one_request(Profile::Kong, &lean);
    assert!(on_kong.trapped(), "Kong calls proxy_on_response_headers unchecked: {on_kong:?}");
    let failure = format!("{:?}", on_kong.failure);
    assert!(failure.contains("proxy_on_response_headers is not exported"), "{failure}");

    let complete = module("", OTHER_CALLBACKS);
    assert_eq!(one_request(Profile::Kong, &complete).status, 200, "every callback exported");
}

#[test]
fn a_second_tick_period_traps_on_kong_only() {
    let twice = "(drop (call $tick (i32.const 200))) (drop (call $tick (i32.const 1000)))";
    let m = module(twice, OTHER_CALLBACKS);
    let envoy = Host::new(Profile::Envoy);
    let mut vm = envoy.load_vm(&m, VmOptions::new("probe")).expect("vm");
    assert!(vm.configure(b"{}").expect("Envoy allows changing the tick period"));
    assert_eq!(vm.tick_periods().values().copied().collect::<Vec<_>>(), vec![1000]);

    let kong = Host::new(Profile::Kong);
    let mut vm = kong.load_vm(&m, VmOptions::new("probe")).expect("vm");
    let err = vm.configure(b"{}").expect_err("Kong traps on a second tick period");
    assert!(format!("{err:?}").contains("tick_period already set"), "{err:?}");

    let once = module("(drop (call $tick (i32.const 200)))", OTHER_CALLBACKS);
    let mut vm = Host::new(Profile::Kong).load_vm(&once, VmOptions::new("probe")).expect("vm");
    assert!(vm.configure(b"{}").expect("one period is fine"));
}

#[test]
fn plugin_name_in_a_root_context_crashes_kong_and_root_id_reads_zero() {
    // proxy_get_property("plugin_name") with out-pointers at 64 and 68.
    let read_name = "(drop (call $prop (i32.const 16) (i32.const 11) (i32.const 64) (i32.const 68)))";
    let m = module(read_name, OTHER_CALLBACKS);
    let mut vm = Host::new(Profile::Envoy).load_vm(&m, VmOptions::new("probe")).expect("vm");
    assert!(vm.configure(b"{}").expect("Envoy answers plugin_name"));
    let mut vm = Host::new(Profile::Kong).load_vm(&m, VmOptions::new("probe")).expect("vm");
    let err = vm.configure(b"{}").expect_err("Kong crashes");
    assert!(format!("{err:?}").contains("ngx_wasm_module crashes the worker"), "{err:?}");
}

#[test]
fn a_removed_request_header_still_reaches_the_upstream_on_kong() {
    let remove = "(drop (call $remove (i32.const 0) (i32.const 32) (i32.const 8)))";
    let m = module_with("", remove, OTHER_CALLBACKS);
    for (profile, expected) in [(Profile::Envoy, None), (Profile::Kong, Some("s3cret"))] {
        let mut vm = Host::new(profile).load_vm(&m, VmOptions::new("probe")).expect("vm");
        assert!(vm.configure(b"{}").expect("configure"));
        let out = vm.http_request(Request::get("/").header("x-secret", "s3cret")).expect("request");
        assert_eq!(out.upstream_header("x-secret"), expected, "{profile:?}");
    }
}
