//! "Requests in flight keep the policy they started with" (docs/rollout-and-approvals.md), where
//! a request really waits: the test-only `pipeline` module (wasm-host/test-modules/pipeline)
//! parks a request on an HTTP callout under policy p1, p2 is configured while it waits (Envoy
//! profile: a new root context, the old one retired), and the callout's answer resumes it: it
//! finishes by p1's rule and carries p1's version, while new requests are decided by p2.
//! On Kong a policy change is a reload with new workers (the old worker finishes its requests):
//! scripts/e2e/test_claims.py holds a request across an update on both real hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use gatewarden_wasm_host::{Host, HttpResponse, Phase, Profile, Progress, Request, Settle, Vm, VmOptions};

const HEADER: &str = "x-gatewarden-test-pipeline";

/// p1: `/http` waits for a callout to `authz`. p2: `/http` decides on the headers.
fn p1() -> &'static str {
    r#"{"policy_version": "p1", "rules": [{"name": "http", "match": {"path_prefix": "/http"},
        "http": {"upstream": "authz", "path": "/check", "timeout_ms": 500}}]}"#
}

fn p2() -> &'static str {
    r#"{"policy_version": "p2", "rules": [{"name": "plain", "match": {"path_prefix": "/http"}}]}"#
}

fn configured(host: &Host) -> Vm {
    let mut vm = host.load_vm(common::pipeline_module(), VmOptions::new("gatewarden_test_pipeline")).unwrap();
    assert!(vm.configure(p1().as_bytes()).unwrap(), "{:#?}", host.logs());
    vm
}

#[test]
fn a_waiting_request_finishes_under_the_policy_it_started_with() {
    let host = Host::new(Profile::Envoy);
    host.add_cluster("authz");
    let mut vm = configured(&host);
    let root_p1 = vm.serving_root();

    let mut waiting = vm.start_request(Request::get("/http")).unwrap();
    assert_eq!(waiting.poll().unwrap(), Progress::Paused(Phase::RequestHeaders));
    let token = host.pending_tokens()[0];

    assert!(vm.configure(p2().as_bytes()).unwrap(), "{:#?}", host.logs());
    assert_ne!(vm.serving_root(), root_p1, "p2 is served by a new root context");

    // A new request: p2 decides on the headers, no callout.
    let calls = host.http_calls().len();
    let fresh = vm.http_request(Request::get("/http")).unwrap();
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(fresh.upstream_header(HEADER), Some("allow; rule=plain; version=p2"));
    assert_eq!(host.http_calls().len(), calls, "p2 makes no callout");

    // The waiting request resumes on its callout's answer and ends by p1's rule.
    assert!(host.settle_call(token, Settle::Http(HttpResponse::new(200).body("ok"))).unwrap());
    let Progress::Done(outcome) = waiting.poll().unwrap() else { panic!("not resumed: {:#?}", host.logs()) };
    assert_eq!(outcome.status, 200, "{outcome:?}");
    assert_eq!(outcome.upstream_header(HEADER), Some("allow; rule=http; version=p1"));
    assert_eq!(outcome.upstream_header("x-pipeline"), Some("body=-;http=200;grpc=-"));

    // And p1's callout still decides a denial for the request it was made for.
    let mut vm = configured(&host);
    let mut waiting = vm.start_request(Request::get("/http")).unwrap();
    assert!(matches!(waiting.poll().unwrap(), Progress::Paused(_)));
    let token = *host.pending_tokens().last().unwrap();
    assert!(vm.configure(p2().as_bytes()).unwrap());
    assert!(host.settle_call(token, Settle::Http(HttpResponse::new(403))).unwrap());
    let Progress::Done(outcome) = waiting.poll().unwrap() else { panic!("not resumed") };
    let local = outcome.local_response.as_ref().expect("denied");
    assert_eq!((local.status, local.details.as_str()), (403, "gatewarden_test_pipeline_callout_denied"));
    let line = host
        .logs()
        .into_iter()
        .rev()
        .find(|l| l.message.contains(r#""reason":"callout_denied""#))
        .unwrap_or_else(|| panic!("no denial line: {:#?}", host.logs()));
    assert!(line.message.contains(r#""policy_version":"p1""#), "logged with the version that decided: {}", line.message);
}
