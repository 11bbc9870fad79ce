//! Lifecycle: loading, configuring and reconfiguring, local responses, traps.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{configured_vm, echo_module, host};
use gatewarden_wasm_host::{Failure, Host, LogLevel, Profile, Request, VmOptions};

#[test]
fn request_goes_upstream_with_headers_added_and_removed() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "tag-one");
    let outcome = vm.http_request(Request::get("/hello").header("x-remove-me", "1").header("x-keep", "yes")).unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.failure, None);
    assert_eq!(outcome.upstream_header("x-echo-config"), Some("tag-one"));
    assert_eq!(outcome.upstream_header("x-keep"), Some("yes"));
    assert_eq!(outcome.upstream_header("x-remove-me"), None, "x-remove-me must be removed");
    assert_eq!(outcome.upstream_header(":path"), Some("/hello"));
    assert_eq!(outcome.response_header("x-echo-response"), Some("1"));
    assert!(
        host.logs().iter().any(|line| line.message == "vm start: vm-config-bytes"),
        "vm configuration not seen by on_vm_start: {:?}",
        host.logs()
    );
}

#[test]
fn config_refused_at_start_fails_requests_closed() {
    // Envoy 1.40 answers 500 (empty body, flag NFCF) when the only configuration was refused at
    // start, as scripts/e2e/test_claims.py sees on the real binary.
    for (profile, status) in [(Profile::Envoy, 500), (Profile::Kong, 500)] {
        let host = host(profile);
        let mut vm = host.load_vm(echo_module(), VmOptions::new("echo_root")).unwrap();
        assert!(!vm.configure(b"bad").unwrap(), "{profile:?}: \"bad\" must be refused");
        let outcome = vm.http_request(Request::get("/")).unwrap();
        assert_eq!(outcome.status, status, "{profile:?}");
        assert_eq!(outcome.failure, Some(Failure::NotConfigured), "{profile:?}");
        assert!(host.logs_at_least(LogLevel::Error).iter().any(|l| l.message.contains("refused")));
    }
}

#[test]
fn envoy_keeps_previous_config_when_update_is_refused() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "first");
    let first_root = vm.serving_root();
    assert!(!vm.configure(b"bad").unwrap());
    assert_eq!(vm.serving_root(), first_root, "refused update must keep the serving root");
    let outcome = vm.http_request(Request::get("/")).unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.upstream_header("x-echo-config"), Some("first"));

    assert!(vm.configure(b"second").unwrap());
    assert_ne!(vm.serving_root(), first_root, "an accepted update creates a new root context");
    let outcome = vm.http_request(Request::get("/")).unwrap();
    assert_eq!(outcome.upstream_header("x-echo-config"), Some("second"));
    // The configure counter is a static: it survives the new root context.
    assert_eq!(outcome.upstream_header("x-echo-generation"), Some("2"));
}

#[test]
fn kong_fails_requests_with_500_after_refused_update() {
    let host = host(Profile::Kong);
    let mut vm = configured_vm(&host, "first");
    assert!(!vm.configure(b"bad").unwrap());
    assert_eq!(vm.serving_root(), None);
    let outcome = vm.http_request(Request::get("/")).unwrap();
    assert_eq!(outcome.status, 500);
    assert_eq!(outcome.failure, Some(Failure::NotConfigured));
    assert!(vm.configure(b"third").unwrap(), "a later valid config is accepted");
    assert_eq!(vm.http_request(Request::get("/")).unwrap().status, 200);
}

#[test]
fn local_response_ends_the_request() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::get("/").header("x-deny", "401")).unwrap();
    assert_eq!(outcome.status, 401);
    let local = outcome.local_response.as_ref().expect("a local response");
    assert_eq!(local.header("x-denied-by"), Some("echo"));
    assert_eq!(local.body, b"denied");
    assert_eq!(outcome.response_body, b"denied");
    assert_eq!(outcome.upstream_request, None, "a denied request must not reach the upstream");
    assert_eq!(outcome.response_header("x-echo-response"), None, "response phase must not run");
    assert!(host.logs().iter().any(|line| line.message == "log phase"), "on_log must run");
}

#[test]
fn trap_fails_the_request_and_the_vm() {
    for (profile, status) in [(Profile::Envoy, 503), (Profile::Kong, 500)] {
        let host = host(profile);
        let mut vm = configured_vm(&host, "t");
        let outcome = vm.http_request(Request::get("/").header("x-panic", "1")).unwrap();
        assert!(outcome.trapped(), "{profile:?}: {outcome:?}");
        assert_eq!(outcome.status, status);
        let Some(Failure::Trap(message)) = &outcome.failure else { panic!("not a trap: {outcome:?}") };
        assert!(message.contains("x-panic requested"), "trap message: {message}");
        assert!(vm.is_failed());

        let next = vm.http_request(Request::get("/")).unwrap();
        assert_eq!(next.status, status, "{profile:?}: a failed VM fails every request");
        assert!(matches!(next.failure, Some(Failure::VmFailed(_))), "{next:?}");
        assert!(vm.configure(b"again").unwrap_err().is_vm_failed());
    }
}

#[test]
fn other_vms_survive_a_trap() {
    let host = host(Profile::Envoy);
    let mut broken = configured_vm(&host, "t");
    let mut healthy = configured_vm(&host, "t");
    assert!(broken.http_request(Request::get("/").header("x-panic", "1")).unwrap().trapped());
    assert_eq!(healthy.http_request(Request::get("/")).unwrap().status, 200);
}

#[test]
fn modules_that_are_not_proxy_wasm_are_rejected() {
    let host = Host::new(Profile::Envoy);
    let error = host.load_vm_bytes(b"not wasm", VmOptions::new("x")).err().expect("garbage must not load");
    assert!(error.is_load(), "{error}");
    // The smallest valid module: no exports at all.
    let empty = b"\0asm\x01\0\0\0";
    let error = host.load_vm_bytes(empty, VmOptions::new("x")).err().expect("empty module must not load");
    assert!(error.is_abi(), "{error}");
    assert!(error.to_string().contains("proxy_abi_version"), "{error}");
}

#[test]
fn missing_file_is_an_io_error() {
    let host = Host::new(Profile::Envoy);
    let error = host.load_vm_file("/nonexistent/filter.wasm", VmOptions::new("x")).err().unwrap();
    assert!(error.is_io(), "{error}");
}
