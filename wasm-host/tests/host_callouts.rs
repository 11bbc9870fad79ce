//! dispatch_http_call: target validation per profile, scripted responses, ordering.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{configured_vm, host};
use gatewarden_wasm_host::{HttpResponse, Phase, Profile, Progress, Request};
use std::time::Duration;

#[test]
fn envoy_answers_scripted_callout_after_delivery() {
    let host = host(Profile::Envoy);
    host.script_http_response("lookup_cluster", "/lookup", HttpResponse::new(200).body("FR"));
    let mut vm = configured_vm(&host, "t");
    let mut request = vm.start_request(Request::get("/").header("x-callout", "lookup_cluster")).unwrap();
    assert_eq!(request.poll().unwrap(), Progress::Paused(Phase::RequestHeaders));
    assert_eq!(request.paused_at(), Some(Phase::RequestHeaders));

    let pending = host.pending_calls();
    assert_eq!(pending.len(), 1, "one callout pending");
    let call = &pending[0];
    assert_eq!(call.upstream, "lookup_cluster");
    assert_eq!(call.path(), "/lookup");
    assert_eq!(call.body, b"q");
    assert_eq!(call.timeout, Duration::from_millis(1500));

    // Still paused until the response is delivered.
    assert_eq!(request.poll().unwrap(), Progress::Paused(Phase::RequestHeaders));
    let delivered = host.deliver_pending_calls().unwrap();
    assert_eq!(delivered.len(), 1);
    let Progress::Done(outcome) = request.poll().unwrap() else { panic!("request should have resumed") };
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.upstream_header("x-callout-status"), Some("200"));
    assert_eq!(outcome.upstream_header("x-callout-body"), Some("FR"));
    assert!(host.pending_calls().is_empty());
}

#[test]
fn failed_or_unscripted_callout_delivers_no_headers() {
    let host = host(Profile::Envoy);
    host.script_http_failure("lookup_cluster", "*");
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::get("/").header("x-callout", "lookup_cluster")).unwrap();
    assert_eq!(outcome.upstream_header("x-callout-status"), Some("failed"));

    let host = common::host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::get("/").header("x-callout", "lookup_cluster")).unwrap();
    assert_eq!(outcome.upstream_header("x-callout-status"), Some("failed"), "no script = failure");
}

#[test]
fn envoy_rejects_unknown_cluster_and_kong_rejects_cluster_names() {
    let envoy = host(Profile::Envoy);
    let mut vm = configured_vm(&envoy, "t");
    let outcome = vm.http_request(Request::get("/").header("x-callout", "no_such_cluster")).unwrap();
    assert_eq!(outcome.upstream_header("x-callout-error"), Some("BadArgument"));
    assert_eq!(outcome.status, 200);
    let outcome = vm.http_request(Request::get("/").header("x-callout", "geo.internal:8080")).unwrap();
    assert_eq!(outcome.upstream_header("x-callout-error"), Some("BadArgument"), "envoy wants a cluster");

    let kong = host(Profile::Kong);
    kong.script_http_response("geo.internal:8080", "/lookup", HttpResponse::new(204));
    let mut vm = configured_vm(&kong, "t");
    let outcome = vm.http_request(Request::get("/").header("x-callout", "lookup_cluster")).unwrap();
    assert_eq!(outcome.upstream_header("x-callout-error"), Some("BadArgument"), "kong wants host:port");
    let outcome = vm.http_request(Request::get("/").header("x-callout", "geo.internal:8080")).unwrap();
    assert_eq!(outcome.upstream_header("x-callout-status"), Some("204"));
    assert_eq!(kong.http_calls().len(), 1, "only the valid call is recorded");
}

#[test]
fn paused_request_stays_paused_without_delivery() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    let mut first = vm.start_request(Request::get("/a").header("x-callout", "lookup_cluster")).unwrap();
    let mut second = vm.start_request(Request::get("/b").header("x-callout", "lookup_cluster")).unwrap();
    assert_ne!(first.context_id(), second.context_id());
    assert_eq!(host.pending_calls().len(), 2);
    assert!(matches!(first.poll().unwrap(), Progress::Paused(_)));
    host.deliver_pending_calls().unwrap();
    assert!(matches!(first.poll().unwrap(), Progress::Done(_)));
    assert!(matches!(second.poll().unwrap(), Progress::Done(_)));
}

#[test]
fn trap_in_callout_response_fails_the_paused_request() {
    let host = host(Profile::Envoy);
    host.script_http_response("lookup_cluster", "*", HttpResponse::new(200));
    let mut vm = configured_vm(&host, "t");
    // The callout response handler adds headers; a request whose context is gone is skipped.
    let mut request = vm.start_request(Request::get("/").header("x-callout", "lookup_cluster")).unwrap();
    drop(vm.http_request(Request::get("/").header("x-panic", "1")).unwrap());
    assert!(vm.is_failed());
    assert!(host.deliver_pending_calls().unwrap().is_empty(), "a failed VM gets no delivery");
    let Progress::Done(outcome) = request.poll().unwrap() else { panic!("must end") };
    assert_eq!(outcome.status, 503);
    assert!(outcome.trapped());
}
