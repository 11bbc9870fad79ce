//! The glue's request pipeline (shared/glue: pipeline.rs, waiting.rs) through the test-only
//! `pipeline` module (wasm-host/test-modules/pipeline): bodies in chunks (Envoy) or whole (Kong,
//! or spilled and unreadable), HTTP and gRPC callouts answered, timed out and failed, gRPC
//! refused on Kong at configure time, a client that goes away while its request waits, and a
//! headers-only filter that pays nothing for any of it.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use gatewarden_wasm_host::{
    Failure, GrpcResponse, Host, HttpResponse, Module, Outcome, Phase, Profile, Progress, Request, Settle, Vm, VmOptions,
};
use std::time::Duration;

const HTTP_UPSTREAM_KONG: &str = "127.0.0.1:9001";

fn http_upstream(profile: Profile) -> &'static str {
    match profile {
        Profile::Envoy => "authz",
        Profile::Kong => HTTP_UPSTREAM_KONG,
    }
}

/// A policy with rules `/body` (body, max 64 bytes), `/http` (HTTP callout), `/grpc` (gRPC
/// callout, Envoy only), `/all` (body, then HTTP, then gRPC) and `/plain` (nothing: decides on
/// the headers).
fn policy(profile: Profile, failure_mode: &str, grpc: bool) -> String {
    let http = format!(r#"{{"upstream": "{}", "path": "/check", "timeout_ms": 500, "max_response_bytes": 64}}"#, http_upstream(profile));
    let grpc_step = r#"{"upstream": "authz_grpc", "service": "test.Authz", "method": "Check", "timeout_ms": 300}"#;
    let mut rules = vec![
        r#"{"name": "body", "match": {"path_prefix": "/body"}, "body": {"max_bytes": 64}}"#.to_owned(),
        format!(r#"{{"name": "http", "match": {{"path_prefix": "/http"}}, "http": {http}}}"#),
        r#"{"name": "plain", "match": {"path_prefix": "/plain"}}"#.to_owned(),
    ];
    if grpc {
        rules.push(format!(r#"{{"name": "grpc", "match": {{"path_prefix": "/grpc"}}, "grpc": {grpc_step}}}"#));
        rules.push(format!(
            r#"{{"name": "all", "match": {{"path_prefix": "/all"}}, "body": {{"max_bytes": 64}}, "http": {http}, "grpc": {grpc_step}}}"#
        ));
    }
    format!(r#"{{"policy_version": "p1", "failure_mode": "{failure_mode}", "rules": [{}]}}"#, rules.join(", "))
}

fn host(profile: Profile) -> Host {
    let host = Host::new(profile);
    host.add_cluster("authz");
    host.add_cluster("authz_grpc");
    host
}

fn pipeline_vm(host: &Host, config: &str) -> Vm {
    let mut vm = host.load_vm(common::pipeline_module(), VmOptions::new("gatewarden_test_pipeline")).expect("module loads");
    assert!(vm.configure(config.as_bytes()).expect("configure runs"), "policy refused: {config}");
    vm
}

fn post(path: &str, body: &[u8]) -> Request {
    Request::new("POST", path).header("content-length", &body.len().to_string()).body(body.to_vec())
}

/// Requests parked and callout tokens pending in the module's runtime.
fn waiting(vm: &Vm) -> (u32, u32) {
    let (parked, tokens, _) = runtime_maps(vm);
    (parked, tokens)
}

/// Requests parked, callout tokens pending, abandoned tokens remembered.
fn runtime_maps(vm: &Vm) -> (u32, u32, u32) {
    let v = vm.call_export_u32("gatewarden_test_waiting").expect("probe export");
    (v >> 20, (v >> 10) & 1023, v & 1023)
}

fn counter(host: &Host, vm: &Vm, name: &str) -> u64 {
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    host.metric_value(&format!("gatewarden_test_pipeline_{name}"))
}

fn body_calls(host: &Host) -> usize {
    host.call_count("proxy_get_buffer_bytes")
}

fn assert_denied(outcome: &Outcome, status: u16, reason: &str) {
    let local = outcome.local_response.as_ref().unwrap_or_else(|| panic!("expected a local {status}, got {outcome:?}"));
    assert_eq!(local.status, status, "status of {outcome:?}");
    assert_eq!(local.details, format!("gatewarden_test_pipeline_{reason}"), "reason of {outcome:?}");
    assert!(outcome.upstream_request.is_none(), "a denied request must not reach the upstream");
}

// ---- bodies ----

/// A request decided after its body: allowed with its body, and with no header changed (its
/// headers went on before the body; no decision header either).
fn assert_allowed_after_body(outcome: &Outcome, body: &[u8]) {
    assert_eq!(outcome.status, 200, "{outcome:?}");
    let upstream = outcome.upstream_request.as_ref().expect("reached the upstream");
    assert_eq!(upstream.body.as_deref(), Some(body));
    assert_eq!(outcome.upstream_header("x-pipeline"), None, "no header changes after the body");
    assert_eq!(outcome.upstream_header("x-gatewarden-test-pipeline"), None, "no decision header after the body");
}

#[test]
fn body_in_one_chunk_is_read_once_and_forwarded() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    host.clear_logs();
    let outcome = vm.http_request(post("/body", b"hello")).unwrap();
    assert_allowed_after_body(&outcome, b"hello");
    assert_eq!(counter(&host, &vm, "allowed"), 1);
    assert_eq!(waiting(&vm), (0, 0));
    // A decision on the headers still sends the decision header.
    let outcome = vm.http_request(Request::get("/plain")).unwrap();
    assert_eq!(outcome.upstream_header("x-gatewarden-test-pipeline"), Some("allow; rule=plain; version=p1"));
}

#[test]
fn envoy_body_in_many_chunks_is_buffered_until_end_of_stream() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    let body: Vec<u8> = (0..60u8).map(|i| b'a' + i % 20).collect();
    host.clear_calls();
    let outcome = vm.http_request(post("/body", &body).chunked(7)).unwrap();
    assert_allowed_after_body(&outcome, &body);
    assert_eq!(body_calls(&host), 1, "the body is read once, at end of stream");

    // "deny" split across two chunks is still seen: the decision is on the whole body.
    let mut body = b"xxxxxde".to_vec();
    body.extend_from_slice(b"nyxxxx");
    let outcome = vm.http_request(post("/body", &body).chunked(7)).unwrap();
    assert_denied(&outcome, 403, "body_denied");
    assert_eq!(counter(&host, &vm, "denied_body_denied"), 1);
}

#[test]
fn body_past_max_bytes_is_refused_as_soon_as_it_exceeds() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    host.clear_calls();
    // 200 bytes in chunks of 16: the fifth chunk brings 80 > 64 bytes.
    let outcome = vm.http_request(post("/body", &[b'x'; 200]).chunked(16)).unwrap();
    assert_denied(&outcome, 413, "body_too_large");
    assert_eq!(body_calls(&host), 0, "a body past the limit is never read");
    assert_eq!(counter(&host, &vm, "body_too_large"), 1);
    // Exactly at the limit is fine.
    let outcome = vm.http_request(post("/body", &[b'x'; 64]).chunked(16)).unwrap();
    assert_allowed_after_body(&outcome, &[b'x'; 64]);
}

#[test]
fn request_without_body_resolves_on_the_headers() {
    for profile in [Profile::Envoy, Profile::Kong] {
        let host = host(profile);
        let mut vm = pipeline_vm(&host, &policy(profile, "deny", profile == Profile::Envoy));
        let outcome = vm.http_request(Request::get("/body")).unwrap();
        assert_eq!(outcome.status, 200, "{profile:?}: {outcome:?}");
        assert_eq!(outcome.upstream_header("x-pipeline"), Some("body=0;http=-;grpc=-"), "{profile:?}");
        assert_eq!(waiting(&vm), (0, 0), "{profile:?}");
    }
}

#[test]
fn kong_body_arrives_once_whole() {
    let host = host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "deny", false));
    host.clear_calls();
    let outcome = vm.http_request(post("/body", b"fine body")).unwrap();
    assert_allowed_after_body(&outcome, b"fine body");
    assert_eq!(body_calls(&host), 1, "one body read");
    let outcome = vm.http_request(post("/body", b"please deny")).unwrap();
    assert_denied(&outcome, 403, "body_denied");
    let outcome = vm.http_request(post("/body", &[b'x'; 65])).unwrap();
    assert_denied(&outcome, 413, "body_too_large");
}

#[test]
fn kong_spilled_body_fails_by_failure_mode() {
    let host = host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "deny", false));
    let outcome = vm.http_request(post("/body", b"on disk").spilled()).unwrap();
    assert_denied(&outcome, 503, "body_unavailable");
    assert_eq!(counter(&host, &vm, "body_unavailable"), 1);

    let host = self::host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "allow", false));
    let outcome = vm.http_request(post("/body", b"on disk").spilled()).unwrap();
    assert_allowed_after_body(&outcome, b"on disk");
    assert_eq!(counter(&host, &vm, "body_unavailable"), 1);
}

// ---- HTTP callouts ----

#[test]
fn http_callout_answer_decides_on_both_hosts() {
    for profile in [Profile::Envoy, Profile::Kong] {
        let upstream = http_upstream(profile);
        let host = host(profile);
        let mut vm = pipeline_vm(&host, &policy(profile, "deny", profile == Profile::Envoy));
        host.script_http_response(upstream, "/check", HttpResponse::new(200).body("ok"));
        let outcome = vm.http_request(post("/http", b"payload")).unwrap();
        assert_eq!(outcome.status, 200, "{profile:?}: {outcome:?}");
        assert_eq!(outcome.upstream_header("x-pipeline"), Some("body=-;http=200;grpc=-"), "{profile:?}");
        let call = host.http_calls().pop().unwrap();
        assert_eq!(call.body, b"/http", "{profile:?}: without a body step the path is sent");
        assert_eq!(crate_header(&call.headers, ":method"), Some("POST"));

        host.script_http_response(upstream, "/check", HttpResponse::new(403));
        assert_denied(&vm.http_request(post("/http", b"x")).unwrap(), 403, "callout_denied");
        host.script_http_response(upstream, "/check", HttpResponse::new(200).body("deny it"));
        assert_denied(&vm.http_request(post("/http", b"x")).unwrap(), 403, "callout_denied");
        host.script_http_response(upstream, "/check", HttpResponse::new(500));
        assert_denied(&vm.http_request(post("/http", b"x")).unwrap(), 503, "callout_failed");
        assert_eq!(waiting(&vm), (0, 0), "{profile:?}");
    }
}

fn crate_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn http_callout_timeout_and_failure_follow_failure_mode() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    let mut request = vm.start_request(Request::get("/http")).unwrap();
    assert_eq!(request.poll().unwrap(), Progress::Paused(Phase::RequestHeaders));
    assert_eq!(waiting(&vm), (1, 1), "one request parked, one token");
    let token = host.pending_tokens()[0];
    assert!(host.settle_call(token, Settle::Timeout).unwrap());
    let Progress::Done(outcome) = request.poll().unwrap() else { panic!("not resumed") };
    assert_denied(&outcome, 503, "callout_failed");
    assert_eq!(counter(&host, &vm, "callout_timeout"), 1);

    let mut request = vm.start_request(Request::get("/http")).unwrap();
    let token = host.pending_tokens()[0];
    assert!(host.settle_call(token, Settle::Fail).unwrap());
    let Progress::Done(outcome) = request.poll().unwrap() else { panic!("not resumed") };
    assert_denied(&outcome, 503, "callout_failed");
    assert_eq!(counter(&host, &vm, "callout_failed"), 1, "a reset before the deadline is no timeout");
    assert_eq!(counter(&host, &vm, "callout_timeout"), 1);
    assert_eq!(waiting(&vm), (0, 0));

    let host = self::host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "allow", true));
    let mut request = vm.start_request(Request::get("/http")).unwrap();
    let token = host.pending_tokens()[0];
    host.settle_call(token, Settle::Timeout).unwrap();
    let Progress::Done(outcome) = request.poll().unwrap() else { panic!("not resumed") };
    assert_eq!(outcome.status, 200, "failure_mode allow lets it through: {outcome:?}");
    assert_eq!(outcome.upstream_header("x-pipeline-failure"), Some("callout_failed"));
}

/// ngx_wasm_module 3bed278 aborts the worker on a local response sent where a callout with a
/// body got an answer without one (shared/glue/src/waiting.rs explains why). On Kong the glue
/// first starts a 1-byte-body callout that the local response cancels (as the engine does), or,
/// when the decision may still go on, waits for a bodiless callout that fails at once; Envoy
/// gets neither.
#[test]
fn kong_callout_answer_without_a_body_takes_the_way_around_the_engine_defect() {
    const SPARE: &str = "127.0.0.1:1";
    for profile in [Profile::Envoy, Profile::Kong] {
        // A denial after a timeout, and after an empty 403: the extra callout is cancelled.
        let host = host(profile);
        let mut vm = pipeline_vm(&host, &policy(profile, "deny", false));
        host.script_http_response(http_upstream(profile), "/check", HttpResponse::new(403));
        for how in [Settle::Timeout, Settle::Http(HttpResponse::new(403))] {
            let before = host.http_calls().len();
            let mut request = vm.start_request(Request::get("/http")).unwrap();
            let token = host.pending_tokens()[0];
            assert!(host.settle_call(token, how).unwrap());
            let Progress::Done(outcome) = request.poll().unwrap() else { panic!("not resumed") };
            assert!(outcome.local_response.is_some(), "{profile:?}: {outcome:?}");
            let spare: Vec<_> = host.http_calls().into_iter().skip(before).filter(|c| c.upstream == SPARE).collect();
            match profile {
                Profile::Envoy => assert!(spare.is_empty(), "Envoy needs no extra callout"),
                Profile::Kong => {
                    assert_eq!(spare.len(), 1, "one preempting callout");
                    assert_eq!(spare[0].body, b"-", "with a body, to take the engine's free buffer");
                }
            }
            assert!(host.pending_calls().is_empty(), "{profile:?}: the local response cancelled it");
            assert_eq!(waiting(&vm), (0, 0));
        }

        // failure_mode allow and a header sent twice: on Kong the decision waits for a bodiless
        // callout (act might still refuse the request there), then goes on.
        let host = self::host(profile);
        let mut vm = pipeline_vm(&host, &policy(profile, "allow", false));
        let mut request = vm.start_request(Request::get("/http").header("x-twice", "1").header("x-twice", "2")).unwrap();
        let token = host.pending_tokens()[0];
        assert!(host.settle_call(token, Settle::Timeout).unwrap());
        if profile == Profile::Kong {
            assert!(matches!(request.poll().unwrap(), Progress::Paused(_)), "waits for the settling callout");
            let spare = host.pending_calls();
            assert_eq!(spare.len(), 1);
            assert_eq!((spare[0].upstream.as_str(), spare[0].body.is_empty()), (SPARE, true), "bodiless");
            assert_eq!(waiting(&vm), (1, 1));
            host.deliver_pending_calls().unwrap(); // refused: nothing listens there
        }
        let Progress::Done(outcome) = request.poll().unwrap() else { panic!("{profile:?}: not resumed") };
        assert_eq!(outcome.status, 200, "{profile:?}: {outcome:?}");
        assert_eq!(outcome.upstream_header("x-pipeline-failure"), Some("callout_failed"));
        assert_eq!(counter(&host, &vm, "callout_timeout"), 1, "{profile:?}: counted once");
        assert_eq!(waiting(&vm), (0, 0));

        // Without a header sent twice an allow needs no extra callout on either host.
        let before = host.http_calls().len();
        let mut request = vm.start_request(Request::get("/http")).unwrap();
        let token = host.pending_tokens()[0];
        assert!(host.settle_call(token, Settle::Timeout).unwrap());
        let Progress::Done(outcome) = request.poll().unwrap() else { panic!("not resumed") };
        assert_eq!(outcome.status, 200, "{profile:?}: {outcome:?}");
        assert_eq!(host.http_calls().len(), before + 1, "{profile:?}: only the real callout");
    }
}

#[test]
fn http_callout_that_cannot_start_or_answers_too_much_fails_closed() {
    let host = Host::new(Profile::Envoy); // no cluster "authz": the dispatch is refused
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", false));
    let outcome = vm.http_request(Request::get("/http")).unwrap();
    assert_denied(&outcome, 503, "callout_failed");
    assert_eq!(counter(&host, &vm, "callout_dispatch_failed"), 1);

    let host = self::host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    host.script_http_response("authz", "/check", HttpResponse::new(200).body(vec![b'k'; 65]));
    host.clear_calls();
    let outcome = vm.http_request(Request::get("/http")).unwrap();
    assert_denied(&outcome, 503, "callout_failed");
    assert_eq!(counter(&host, &vm, "callout_too_large"), 1);
    assert_eq!(body_calls(&host), 0, "an answer past the limit is never read");
}

#[test]
fn kong_delivers_a_request_callout_on_the_root_context_and_the_token_routes_it() {
    let host = host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "deny", false));
    host.script_http_response(HTTP_UPSTREAM_KONG, "/check", HttpResponse::new(200));
    // Two requests wait at once; each answer must reach its own request.
    let mut first = vm.start_request(Request::get("/http/1")).unwrap();
    let mut second = vm.start_request(Request::get("/http/2")).unwrap();
    assert_eq!(waiting(&vm), (2, 2));
    let tokens = host.pending_tokens();
    host.settle_call(tokens[1], Settle::Http(HttpResponse::new(403))).unwrap();
    assert!(matches!(first.poll().unwrap(), Progress::Paused(_)), "the first still waits");
    let Progress::Done(denied) = second.poll().unwrap() else { panic!("second not resumed") };
    assert_denied(&denied, 403, "callout_denied");
    host.settle_call(tokens[0], Settle::Http(HttpResponse::new(200))).unwrap();
    let Progress::Done(allowed) = first.poll().unwrap() else { panic!("first not resumed") };
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(waiting(&vm), (0, 0));
}

// ---- gRPC callouts ----

#[test]
fn grpc_callout_scripted_answers() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    host.script_grpc_response("authz_grpc", "test.Authz/Check", GrpcResponse::ok("fine"));
    let outcome = vm.http_request(post("/grpc", b"q")).unwrap();
    assert_eq!(outcome.status, 200, "{outcome:?}");
    assert_eq!(outcome.upstream_header("x-pipeline-grpc"), Some("fine"), "the answer is echoed");
    let call = host.grpc_calls().pop().unwrap();
    assert_eq!((call.service.as_str(), call.method.as_str()), ("test.Authz", "Check"));
    assert_eq!(call.message, b"/grpc");
    assert_eq!(call.timeout, Duration::from_millis(300));
    assert_eq!(crate_header(&call.metadata, "x-pipeline-test"), Some("1"));

    host.script_grpc_response("authz_grpc", "test.Authz/Check", GrpcResponse::ok("deny"));
    assert_denied(&vm.http_request(post("/grpc", b"q")).unwrap(), 403, "grpc_denied");
    host.script_grpc_response("authz_grpc", "test.Authz/Check", GrpcResponse::status(7));
    assert_denied(&vm.http_request(post("/grpc", b"q")).unwrap(), 503, "grpc_failed");

    let mut request = vm.start_request(Request::get("/grpc")).unwrap();
    let token = host.pending_tokens()[0];
    host.settle_call(token, Settle::Timeout).unwrap();
    let Progress::Done(outcome) = request.poll().unwrap() else { panic!("not resumed") };
    assert_denied(&outcome, 503, "grpc_failed");
    assert_eq!(counter(&host, &vm, "callout_timeout"), 1);
    assert_eq!(waiting(&vm), (0, 0));
}

#[test]
fn body_then_http_then_grpc_carry_the_body() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    host.script_http_response("authz", "/check", HttpResponse::new(200));
    host.script_grpc_response("authz_grpc", "*", GrpcResponse::ok("ok!"));
    let outcome = vm.http_request(post("/all", b"the body").chunked(3)).unwrap();
    assert_allowed_after_body(&outcome, b"the body");
    assert_eq!(host.http_calls().pop().unwrap().body, b"the body");
    assert_eq!(host.grpc_calls().pop().unwrap().message, b"the body");
}

#[test]
fn kong_refuses_a_grpc_policy_at_configure_time() {
    let host = host(Profile::Kong);
    let mut vm = host.load_vm(common::pipeline_module(), VmOptions::new("gatewarden_test_pipeline")).unwrap();
    // On Kong the root accepts the VM without a policy (a false return would stop nginx).
    assert!(vm.configure(policy(Profile::Kong, "deny", true).as_bytes()).unwrap());
    let refused = host
        .logs()
        .into_iter()
        .any(|l| l.message.contains("policy refused: rules[3].grpc: gRPC callouts are not available on ngx_wasm_module"));
    assert!(refused, "refusal logged with the field path: {:?}", host.logs());
    let outcome = vm.http_request(Request::get("/plain")).unwrap();
    assert_denied(&outcome, 503, "no_policy");
    assert_eq!(host.call_count("proxy_grpc_call"), 0);
    assert!(!vm.is_failed());
}

#[test]
fn kong_profile_traps_on_grpc_call_like_the_engine() {
    // What the configure-time refusal protects from: the Kong profile's proxy_grpc_call traps.
    let wat = r#"(module
        (import "env" "proxy_grpc_call" (func $g (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (drop (call $g (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1)
                           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 64)))
            (i32.const 1)))"#;
    let module = Module::new(&wat::parse_str(wat).unwrap()).unwrap();
    let host = Host::new(Profile::Kong);
    let mut vm = host.load_vm(&module, VmOptions::new("x")).unwrap();
    let err = vm.configure(b"{}").unwrap_err();
    assert!(err.to_string().contains("function not yet implemented"), "{err}");
}

// ---- a client that goes away, and headers-only filters ----

#[test]
fn client_gone_while_waiting_leaves_nothing_behind() {
    for profile in [Profile::Envoy, Profile::Kong] {
        let host = host(profile);
        let mut vm = pipeline_vm(&host, &policy(profile, "deny", profile == Profile::Envoy));
        let mut request = vm.start_request(Request::get("/http")).unwrap();
        assert_eq!(waiting(&vm), (1, 1), "{profile:?}");
        let outcome = request.reset().unwrap();
        assert_eq!(outcome.failure, Some(Failure::ClientGone));
        assert_eq!(waiting(&vm), (0, 0), "{profile:?}: the parked request and its token are gone");
        assert!(host.pending_tokens().is_empty(), "{profile:?}: the host cancelled the callout");
        assert_eq!(counter(&host, &vm, "waiting_abandoned"), 1, "{profile:?}");
        // The next request still works.
        host.script_http_response(http_upstream(profile), "/check", HttpResponse::new(200));
        let outcome = vm.http_request(Request::get("/http")).unwrap();
        assert_eq!(outcome.status, 200, "{profile:?}: {outcome:?}");
        assert!(!vm.is_failed());
    }
}

#[test]
fn client_gone_while_the_body_streams_leaves_nothing_behind() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    // The body rule waits for more body than a paused request gets before the client leaves:
    // here the request pauses at end of stream on a callout instead.
    let mut request = vm.start_request(post("/all", b"abc").chunked(1)).unwrap();
    assert_eq!(request.paused_at(), Some(Phase::RequestBody));
    assert_eq!(waiting(&vm), (1, 1));
    request.reset().unwrap();
    assert_eq!(waiting(&vm), (0, 0));
}

#[test]
fn headers_only_filter_pays_nothing_for_a_body() {
    let module = common::filter_module("gatewarden-ip-geo");
    let host = Host::new(Profile::Envoy);
    let mut vm = host.load_vm(&module, VmOptions::new("gatewarden_ip_geo")).unwrap();
    assert!(vm.configure(br#"{"policy_version": "1", "default": {"allow": ["0.0.0.0/0"]}}"#).unwrap());
    vm.http_request(Request::get("/").source("192.0.2.1:1000")).unwrap(); // warm-up
    host.clear_calls();
    let before = vm.fuel_used();
    let outcome = vm.http_request(Request::get("/").source("192.0.2.1:1000")).unwrap();
    let headers_only = (host.calls().len(), vm.fuel_used() - before);
    assert_eq!(outcome.status, 200);
    host.clear_calls();
    let before = vm.fuel_used();
    let outcome = vm.http_request(post("/", &[b'x'; 4096]).source("192.0.2.1:1000").chunked(512)).unwrap();
    let with_body = (host.calls().len(), vm.fuel_used() - before);
    assert_eq!(outcome.status, 200);
    assert_eq!(with_body.0, headers_only.0, "no host call for the 8 body chunks");
    // Each body chunk costs one export call that returns at once (a few instructions).
    assert!(with_body.1 < headers_only.1 + 8 * 64, "body chunks cost {} instructions more", with_body.1 - headers_only.1);
}

#[test]
fn a_late_answer_to_a_gone_request_is_dropped_and_counted() {
    let host = host(Profile::Envoy);
    host.deliver_late_answers(true); // neither real host does: the glue must not rely on it
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    let mut request = vm.start_request(Request::get("/http")).unwrap();
    let token = host.pending_tokens()[0];
    request.reset().unwrap();
    assert_eq!(runtime_maps(&vm), (0, 0, 1), "the parked request is gone, its token remembered");
    host.clear_calls();
    assert!(host.settle_call(token, Settle::Http(HttpResponse::new(200))).unwrap(), "delivered late");
    assert_eq!(host.call_count("proxy_get_header_map_pairs"), 0, "the late answer is not read");
    assert_eq!(counter(&host, &vm, "callout_late"), 1);
    assert_eq!(runtime_maps(&vm), (0, 0, 0), "nothing left behind");
    assert!(!vm.is_failed());
}

#[test]
fn abandoned_tokens_are_bounded() {
    let host = host(Profile::Envoy);
    host.deliver_late_answers(true);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    for _ in 0..100 {
        let mut request = vm.start_request(Request::get("/http")).unwrap();
        request.reset().unwrap();
    }
    assert_eq!(runtime_maps(&vm), (0, 0, 64), "at most 64 tokens remembered");
    assert_eq!(counter(&host, &vm, "waiting_abandoned"), 100);
}

#[test]
fn a_decision_after_the_body_that_changes_headers_fails_closed() {
    let host = host(Profile::Envoy);
    let config = r#"{"policy_version": "p1", "rules": [
        {"name": "bad", "match": {"path_prefix": "/bad"}, "body": {"max_bytes": 64}, "always_set_header": true}]}"#;
    let mut vm = pipeline_vm(&host, config);
    let outcome = vm.http_request(post("/bad", b"fine")).unwrap();
    assert_denied(&outcome, 503, "host_error");
    assert_eq!(counter(&host, &vm, "waiting_failed"), 1);
    // Without a body the decision is made on the headers: the header may be set.
    let outcome = vm.http_request(Request::get("/bad")).unwrap();
    assert_eq!(outcome.upstream_header("x-pipeline"), Some("body=0;http=-;grpc=-"));
}

#[test]
fn envoy_body_that_ends_with_trailers_is_decided_at_the_trailers() {
    let host = host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    let trailers = vec![("x-checksum".to_string(), "1".to_string())];
    let outcome = vm.http_request(post("/body", b"please deny").chunked(4).trailers(trailers.clone())).unwrap();
    assert_denied(&outcome, 403, "body_denied");
    let outcome = vm.http_request(post("/body", b"fine").chunked(4).trailers(trailers)).unwrap();
    assert_allowed_after_body(&outcome, b"fine");
    assert_eq!(waiting(&vm), (0, 0));
}

#[test]
fn kong_chunked_body_is_unavailable_so_failure_mode_decides() {
    // ngx_wasm_module calls no body callback for a chunked request whose body is empty: the
    // filter cannot wait for one (it would pass undecided), so any chunked body counts as
    // unreadable there.
    let host = host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "deny", false));
    let chunked = |body: &[u8]| Request::new("POST", "/body").header("transfer-encoding", "chunked").body(body.to_vec());
    assert_denied(&vm.http_request(chunked(b"")).unwrap(), 503, "body_unavailable");
    assert_denied(&vm.http_request(chunked(b"fine")).unwrap(), 503, "body_unavailable");
    assert_eq!(counter(&host, &vm, "body_unavailable"), 2);
    // The same on Envoy is read (Envoy ends every body with end_of_stream or trailers).
    let host = self::host(Profile::Envoy);
    let mut vm = pipeline_vm(&host, &policy(Profile::Envoy, "deny", true));
    let outcome = vm.http_request(Request::new("POST", "/body").header("transfer-encoding", "chunked").body(b"fine".to_vec())).unwrap();
    assert_allowed_after_body(&outcome, b"fine");
}

#[test]
fn a_request_the_upstream_answers_before_the_decision_gets_503() {
    // A host that lets a request go on without the body callback the glue waits for (here: the
    // Kong profile, a content-length without a body) must not hand the upstream's answer over.
    let host = host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "deny", false));
    let outcome = vm.http_request(Request::new("POST", "/body").header("content-length", "5")).unwrap();
    let local = outcome.local_response.as_ref().expect("a local response replaces the upstream's");
    assert_eq!((local.status, local.details.as_str()), (503, "gatewarden_test_pipeline_host_error"));
    assert_eq!(counter(&host, &vm, "waiting_failed"), 1);
    assert_eq!(waiting(&vm), (0, 0));
}

#[test]
fn kong_http2_request_without_content_length_may_have_a_body_so_it_is_unavailable() {
    // HTTP/2 needs no content-length for a body: on Kong the filter cannot tell "no body" from a
    // body whose callback may never come, so failure_mode decides; on HTTP/1.1 it is no body.
    let host = host(Profile::Kong);
    let mut vm = pipeline_vm(&host, &policy(Profile::Kong, "deny", false));
    let h2 = Request::new("POST", "/body").property("request.protocol", "HTTP/2.0").body(b"x".to_vec());
    assert_denied(&vm.http_request(h2).unwrap(), 503, "body_unavailable");
    let outcome = vm.http_request(Request::get("/body")).unwrap();
    assert_eq!(outcome.upstream_header("x-pipeline"), Some("body=0;http=-;grpc=-"), "HTTP/1.1 GET: no body");
    // A rule without a body step reads nothing of this.
    host.clear_calls();
    vm.http_request(Request::get("/plain")).unwrap();
    assert_eq!(host.call_count("proxy_get_property"), 0, "no property read for a request that needs no body");
}
