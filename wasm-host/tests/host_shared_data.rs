//! Shared data: CAS semantics per profile, sharing between VMs.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{configured_vm, echo_module, host};
use gatewarden_wasm_host::{Profile, Request, VmOptions};

fn set(vm: &mut gatewarden_wasm_host::Vm, entry: &str, cas: Option<u32>) -> String {
    let mut request = Request::get("/").header("x-shared-set", entry);
    if let Some(cas) = cas {
        request = request.header("x-cas", &cas.to_string());
    }
    let outcome = vm.http_request(request).unwrap();
    outcome.upstream_header("x-shared-result").unwrap_or("<missing>").to_string()
}

#[test]
fn envoy_cas_zero_overwrites_unconditionally() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    assert_eq!(set(&mut vm, "k=a", None), "ok");
    assert_eq!(set(&mut vm, "k=b", None), "ok", "envoy: CAS 0 overwrites");
    assert_eq!(host.shared_data("", "k").unwrap().value, b"b");
}

#[test]
fn kong_cas_zero_succeeds_only_when_key_is_absent() {
    let host = host(Profile::Kong);
    let mut vm = configured_vm(&host, "t");
    assert_eq!(set(&mut vm, "k=a", None), "ok");
    assert_eq!(set(&mut vm, "k=b", None), "cas_mismatch", "kong: CAS 0 only creates");
    assert_eq!(host.shared_data("", "k").unwrap().value, b"a");
    let cas = host.shared_data("", "k").unwrap().cas;
    assert_eq!(set(&mut vm, "k=c", Some(cas)), "ok", "the current CAS wins");
}

#[test]
fn stale_cas_is_a_mismatch_and_current_cas_succeeds() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    assert_eq!(set(&mut vm, "k=a", None), "ok");
    let stale = host.shared_data("", "k").unwrap().cas;
    assert_eq!(set(&mut vm, "k=b", Some(stale)), "ok");
    assert_eq!(set(&mut vm, "k=c", Some(stale)), "cas_mismatch");
    assert_eq!(host.shared_data("", "k").unwrap().value, b"b");
}

#[test]
fn get_returns_value_and_cas_and_missing_keys() {
    let host = host(Profile::Envoy);
    host.set_shared_data("", "color", b"blue");
    let cas = host.shared_data("", "color").unwrap().cas;
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::get("/").header("x-shared-get", "color")).unwrap();
    assert_eq!(outcome.upstream_header("x-shared-value"), Some("blue"));
    assert_eq!(outcome.upstream_header("x-shared-cas"), Some(cas.to_string().as_str()));
    let outcome = vm.http_request(Request::get("/").header("x-shared-get", "nope")).unwrap();
    assert_eq!(outcome.upstream_header("x-shared-value"), Some("<none>"));
}

#[test]
fn envoy_vms_share_data_per_vm_id() {
    let host = host(Profile::Envoy);
    let load = |vm_id: &str| {
        let mut vm = host.load_vm(echo_module(), VmOptions::new("echo_root").vm_id(vm_id)).unwrap();
        assert!(vm.configure(b"t").unwrap());
        vm
    };
    let mut writer = load("workers");
    let mut same = load("workers");
    let mut other = load("elsewhere");
    assert_eq!(set(&mut writer, "k=v", None), "ok");
    let seen = |vm: &mut gatewarden_wasm_host::Vm| {
        let outcome = vm.http_request(Request::get("/").header("x-shared-get", "k")).unwrap();
        outcome.upstream_header("x-shared-value").map(str::to_string)
    };
    assert_eq!(seen(&mut same).as_deref(), Some("v"), "same vm_id shares data");
    assert_eq!(seen(&mut other).as_deref(), Some("<none>"), "another vm_id does not");
    assert_eq!(host.shared_data_len("workers"), 1);
}

#[test]
fn envoy_queue_items_reach_the_registering_root() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "queue");
    let outcome = vm.http_request(Request::get("/").header("x-enqueue", "job-1")).unwrap();
    assert_eq!(outcome.upstream_header("x-enqueue-result"), Some("ok"));
    assert!(!host.logs().iter().any(|l| l.message == "queue item: job-1"), "not before delivery");
    assert_eq!(host.deliver_queue_ready(), 1);
    assert!(host.logs().iter().any(|l| l.message == "queue item: job-1"), "{:?}", host.logs());
}

#[test]
fn envoy_unregistered_queue_is_not_found() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::get("/").header("x-enqueue", "job-1")).unwrap();
    assert_eq!(outcome.upstream_header("x-enqueue-result"), Some("no_queue"));
}

#[test]
fn kong_has_no_shared_queues() {
    let host = host(Profile::Kong);
    let mut vm = host.load_vm(echo_module(), VmOptions::new("echo_root")).unwrap();
    let error = vm.configure(b"queue").unwrap_err();
    assert!(error.is_trap(), "the SDK panics on Unimplemented: {error}");
    assert!(vm.is_failed());
}
