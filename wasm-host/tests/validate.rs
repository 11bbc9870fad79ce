//! The built request-validation module (target/wasm32-wasip1/release/gatewarden_validate.wasm)
//! driven through the Wasm test host, Envoy and Kong profiles: bodies in one chunk and in many
//! reach the upstream unchanged; invalid JSON, schema violations (problem body with pointer,
//! schema location and keyword), a missing body, a body past the limit (never read), Kong's
//! spilled body by `failure_mode`; a policy swapped while a request waits for its body; dry run;
//! a refused update; hostile nesting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;

use gatewarden_wasm_host::{Host, LogLevel, Module, Outcome, Phase, Profile, Progress, Request, Vm, VmOptions};
use serde_json::{json, Value};

const VM_ID: &str = "gatewarden_validate";
const PROFILES: [Profile; 2] = [Profile::Envoy, Profile::Kong];
/// The policy crate's fixed bodies, written out here so that a change to them shows.
const INVALID_JSON_BODY: &str =
    r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"the request body is not valid JSON"}"#;
const SCHEMA_VIOLATION_BODY: &str =
    r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"the request body does not match the schema"}"#;
const BODY_MISSING_BODY: &str = r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"the request body is required"}"#;
const BODY_TOO_LARGE_BODY: &str =
    r#"{"type":"about:blank","title":"Content Too Large","status":413,"detail":"the request body is larger than allowed"}"#;
const BODY_UNAVAILABLE_BODY: &str =
    r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the request body cannot be validated"}"#;
/// The policy's default `max_body_bytes` (512 KiB).
const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-validate"))
}

/// An order: `sku` like `ABC-12`, `qty` an integer from 1 to `max_qty`, nothing else.
fn order_schema(max_qty: u32) -> Value {
    json!({
        "type": "object",
        "required": ["sku", "qty"],
        "additionalProperties": false,
        "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
            "qty": {"type": "integer", "minimum": 1, "maximum": max_qty}
        }
    })
}

/// Version `version`: rule `orders` (`/orders`) validates the body against [`order_schema`], with
/// the extra rule fields in `extra`; every other path (the default) is not validated.
fn policy(version: &str, max_qty: u32, extra: Value) -> Value {
    let mut rule = json!({"name": "orders", "match": {"path_prefix": "/orders"}, "body_schema": order_schema(max_qty)});
    for (k, v) in extra.as_object().unwrap() {
        rule[k] = v.clone();
    }
    json!({"policy_version": version, "rules": [rule]})
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "policy refused: {:#?}", host.logs());
    vm
}

/// A JSON POST with its `content-length`.
fn post(path: &str, body: &[u8]) -> Request {
    Request::new("POST", path)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .body(body.to_vec())
}

fn counter(host: &Host, vm: &Vm, name: &str) -> u64 {
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    host.metric_value(&format!("gatewarden_validate_{name}"))
}

/// Times the module read the request body out of the host.
fn body_reads(host: &Host) -> usize {
    host.call_count("proxy_get_buffer_bytes")
}

fn decision_lines(host: &Host) -> Vec<Value> {
    host.logs()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l.message).ok())
        .filter(|v| v["gatewarden"] == "decision")
        .collect()
}

/// Allowed after its body: the upstream got exactly `body`; no header changed (the headers went
/// on before the body), so no decision header either.
fn assert_forwarded(out: &Outcome, body: &[u8], what: &str) {
    assert_eq!(out.status, 200, "{what}: {out:?}");
    assert!(out.local_response.is_none(), "{what}: {out:?}");
    let upstream = out.upstream_request.as_ref().unwrap_or_else(|| panic!("{what}: did not reach the upstream: {out:?}"));
    assert_eq!(upstream.body.as_deref(), Some(body), "{what}: the body reached the upstream unchanged");
    assert_eq!(out.upstream_header("x-gatewarden-validate"), None, "{what}: no decision header after the body");
}

/// Denied locally with `status`, reason `reason`, a problem+json body; returns the body.
fn assert_denied(out: &Outcome, status: u16, reason: &str, what: &str) -> String {
    let local = out.local_response.as_ref().unwrap_or_else(|| panic!("{what}: expected a local {status}, got {out:?}"));
    assert_eq!(local.status, status, "{what}: {out:?}");
    assert_eq!(local.details, format!("gatewarden_validate_{reason}"), "{what}");
    assert!(out.upstream_request.as_ref().and_then(|u| u.body.as_ref()).is_none(), "{what}: no body byte reached the upstream");
    let types: Vec<&str> = local.headers.iter().filter(|(k, _)| k == "content-type").map(|(_, v)| v.as_str()).collect();
    assert_eq!(types, ["application/problem+json"], "{what}: one content type, RFC 9457's");
    String::from_utf8(local.body.clone()).unwrap()
}

const VALID: &[u8] = br#"{"sku": "ABC-12", "qty": 2}"#;

#[test]
fn valid_body_in_one_chunk_reaches_the_upstream_unchanged() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({})));
        host.clear_calls();
        let out = vm.http_request(post("/orders", VALID)).unwrap();
        assert_forwarded(&out, VALID, &format!("{profile:?}"));
        assert_eq!(body_reads(&host), 1, "{profile:?}: the body is read once");
        assert_eq!(counter(&host, &vm, "allowed"), 1, "{profile:?}");
        assert!(decision_lines(&host).is_empty(), "{profile:?}: no denial line");
    }
}

#[test]
fn envoy_valid_body_in_many_chunks_reaches_the_upstream_unchanged() {
    let host = Host::new(Profile::Envoy);
    let mut vm = vm(&host, &policy("v1", 5, json!({})));
    // The pattern's value split over chunks, and chunks of one byte.
    for chunk in [1, 3, 7, 16] {
        host.clear_calls();
        let out = vm.http_request(post("/orders", VALID).chunked(chunk)).unwrap();
        assert_forwarded(&out, VALID, &format!("chunks of {chunk}"));
        assert_eq!(body_reads(&host), 1, "chunks of {chunk}: read once, at the end of the stream");
    }
    // An invalid body in chunks is judged whole.
    let out = vm.http_request(post("/orders", br#"{"sku": "ABC-12", "qty": 9}"#).chunked(4)).unwrap();
    assert_denied(&out, 400, "schema_violation", "chunked violation");
}

#[test]
fn a_route_without_a_schema_passes_its_body_unread() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({})));
        host.clear_calls();
        let body = b"not json at all \x00\xff";
        let out = vm.http_request(post("/other", body)).unwrap();
        assert_eq!(out.status, 200, "{profile:?}");
        assert_eq!(out.upstream_request.as_ref().unwrap().body.as_deref(), Some(&body[..]), "{profile:?}");
        assert_eq!(body_reads(&host), 0, "{profile:?}: never read");
        // Decided on its headers: the decision header goes upstream.
        assert_eq!(out.upstream_header("x-gatewarden-validate"), Some("allow; rule=default; version=v1"), "{profile:?}");
    }
}

#[test]
fn invalid_json_is_400_with_the_fixed_problem_body() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({})));
        // (An empty body is no body: `content-length: 0` is `body_missing` on both hosts.)
        for body in [&b"{\"sku\": "[..], b"[1,2", b"\xff\xfe", b"{} {}"] {
            let out = vm.http_request(post("/orders", body)).unwrap();
            let problem = assert_denied(&out, 400, "invalid_json", &format!("{profile:?} {body:?}"));
            assert_eq!(problem, INVALID_JSON_BODY, "{profile:?}");
        }
        assert_eq!(counter(&host, &vm, "denied_invalid_json"), 4, "{profile:?}");
        let line = decision_lines(&host).pop().unwrap();
        assert_eq!(
            (line["reason"].as_str(), line["rule"].as_str(), line["policy_version"].as_str()),
            (Some("invalid_json"), Some("orders"), Some("v1"))
        );
        assert_eq!(line.get("detail"), None, "{profile:?}: no error to name: {line}");
    }
}

#[test]
fn schema_violation_is_400_listing_pointer_schema_location_and_keyword() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({})));
        let body = br#"{"sku": "lowercase-secret", "qty": 0}"#;
        let out = vm.http_request(post("/orders", body).source("192.0.2.7:4000")).unwrap();
        let problem: Value = serde_json::from_str(&assert_denied(&out, 400, "schema_violation", &format!("{profile:?}"))).unwrap();
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["detail"], "the request body does not match the schema");
        let mut errors: Vec<(String, String, String)> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["pointer"].as_str().unwrap().to_owned(),
                    e["schema"].as_str().unwrap().to_owned(),
                    e["keyword"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        errors.sort();
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            errors,
            [s("/qty", "/properties/qty/minimum", "minimum"), s("/sku", "/properties/sku/pattern", "pattern")],
            "{profile:?}: {problem}"
        );
        assert!(!problem.to_string().contains("lowercase-secret"), "{profile:?}: the value is not echoed: {problem}");
        assert_eq!(counter(&host, &vm, "denied_schema_violation"), 1, "{profile:?}");
        // The log line names the first error's place and keyword, never a value from the body.
        let line = decision_lines(&host).pop().unwrap();
        assert_eq!(line["reason"], "schema_violation", "{profile:?}");
        assert_eq!(line["rule"], "orders");
        assert_eq!(line["policy_version"], "v1");
        assert_eq!(line["client"], "192.0.2.7", "{profile:?}: the client, read after the body");
        let detail = line["detail"].as_str().unwrap();
        assert!(
            [
                "pointer=/qty; schema=/properties/qty/minimum; keyword=minimum",
                "pointer=/sku; schema=/properties/sku/pattern; keyword=pattern"
            ]
            .contains(&detail),
            "{profile:?}: {detail}"
        );
        assert!(host.logs().iter().all(|l| !l.message.contains("lowercase-secret")), "{profile:?}: no body value logged");
    }
}

#[test]
fn not_verbose_hides_the_list_and_max_errors_bounds_it() {
    let host = Host::new(Profile::Envoy);
    let mut vm = vm(&host, &policy("v1", 5, json!({"verbose": false})));
    let out = vm.http_request(post("/orders", br#"{"qty": 0, "x": 1}"#)).unwrap();
    assert_eq!(assert_denied(&out, 400, "schema_violation", "quiet"), SCHEMA_VIOLATION_BODY);
    // The log still names the first error.
    assert!(decision_lines(&host).pop().unwrap()["detail"].as_str().unwrap().starts_with("pointer="));

    let mut vm = self::vm(&host, &policy("v2", 5, json!({"max_errors": 2})));
    // Four errors: qty's minimum, sku missing, x and y not allowed.
    let out = vm.http_request(post("/orders", br#"{"qty": 0, "x": 1, "y": 2}"#)).unwrap();
    let problem: Value = serde_json::from_str(&assert_denied(&out, 400, "schema_violation", "bounded")).unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
}

#[test]
fn a_missing_body_is_400_body_missing() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({})));
        host.clear_calls();
        let out = vm.http_request(Request::new("POST", "/orders").header("content-type", "application/json")).unwrap();
        assert_eq!(assert_denied(&out, 400, "body_missing", &format!("{profile:?}")), BODY_MISSING_BODY);
        assert_eq!(body_reads(&host), 0, "{profile:?}");
        assert_eq!(counter(&host, &vm, "denied_body_missing"), 1, "{profile:?}");
    }
}

/// Envoy, a body without `content-length` that grows past the limit: refused as soon as the
/// buffered size exceeds it, and not one byte of it is read into the VM.
#[test]
fn envoy_body_growing_past_the_limit_is_413_and_never_read() {
    let host = Host::new(Profile::Envoy);
    let mut vm = vm(&host, &policy("v1", 5, json!({})));
    host.clear_calls();
    let big = vec![b' '; DEFAULT_MAX_BODY_BYTES + 100 * 1024];
    let request = Request::new("POST", "/orders").header("content-type", "application/json").body(big).chunked(64 * 1024);
    let out = vm.http_request(request).unwrap();
    assert_eq!(assert_denied(&out, 413, "body_too_large", "growing"), BODY_TOO_LARGE_BODY);
    assert_eq!(body_reads(&host), 0, "the module was given 0 bytes of it");
    assert_eq!(counter(&host, &vm, "body_too_large"), 1, "the glue's counter");
    assert_eq!(counter(&host, &vm, "denied_body_too_large"), 1, "the reason's counter");
    // Exactly at the limit it is read (and judged: blanks are not JSON).
    host.clear_calls();
    let at_limit = vec![b' '; DEFAULT_MAX_BODY_BYTES];
    let request = Request::new("POST", "/orders").header("content-type", "application/json").body(at_limit).chunked(64 * 1024);
    let out = vm.http_request(request).unwrap();
    assert_denied(&out, 400, "invalid_json", "at the limit");
    assert_eq!(body_reads(&host), 1);
}

#[test]
fn kong_spilled_body_is_503_body_unavailable_or_let_through_with_failure_mode_allow() {
    let host = Host::new(Profile::Kong);
    let mut vm = vm(&host, &policy("v1", 5, json!({})));
    let out = vm.http_request(post("/orders", VALID).spilled()).unwrap();
    assert_eq!(assert_denied(&out, 503, "body_unavailable", "deny"), BODY_UNAVAILABLE_BODY);
    assert_eq!(counter(&host, &vm, "body_unavailable"), 1);
    assert_eq!(counter(&host, &vm, "denied_body_unavailable"), 1);

    let host = Host::new(Profile::Kong);
    let mut allow = policy("v1", 5, json!({}));
    allow["failure_mode"] = json!("allow");
    let mut vm = self::vm(&host, &allow);
    // Even a body that would be invalid: it cannot be read, so it goes on unvalidated.
    let invalid = br#"{"qty": 99}"#;
    let out = vm.http_request(post("/orders", invalid).spilled()).unwrap();
    assert_forwarded(&out, invalid, "failure_mode allow");
    assert_eq!(counter(&host, &vm, "body_unavailable"), 1, "counted");
    assert_eq!(counter(&host, &vm, "allowed"), 1);
    assert_eq!(counter(&host, &vm, "denied_body_unavailable"), 0);
    assert_eq!(counter(&host, &vm, "unvalidated_body_unavailable"), 1, "let through unvalidated");
    assert_eq!(decision_lines(&host).pop().unwrap()["decision"], "allow_unvalidated");
    let warned = host.logs_at_least(LogLevel::Warn);
    assert!(warned.iter().any(|l| l.message.contains("cannot be read here") && l.message.contains("failure_mode decides")), "{warned:?}");
    // A body that can be read is still validated under failure_mode allow.
    let out = vm.http_request(post("/orders", invalid)).unwrap();
    assert_denied(&out, 400, "schema_violation", "readable");
}

/// A new policy arrives while a request waits for its body: the request is decided by the
/// policy it started under (v1, at most 3); the next request by the new one (v2, at most 10).
#[test]
fn a_policy_swapped_while_a_request_waits_for_its_body_leaves_that_request_to_the_old_one() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 3, json!({})));
        let body = br#"{"sku": "ABC-12", "qty": 5}"#;
        let mut held = vm.start_request(post("/orders", body).chunked(8).hold_body_after(8)).unwrap();
        assert_eq!(held.paused_at(), None, "{profile:?}: the headers went on for the body to come");
        assert!(matches!(held.poll().unwrap(), Progress::Paused(Phase::RequestBody)), "{profile:?}: waiting for the body");

        assert!(vm.configure(policy("v2", 10, json!({})).to_string().as_bytes()).unwrap(), "{profile:?}");
        let out = match held.release_body().unwrap() {
            Progress::Done(out) => *out,
            p => panic!("{profile:?}: {p:?}"),
        };
        assert_denied(&out, 400, "schema_violation", &format!("{profile:?} held"));
        let line = decision_lines(&host).pop().unwrap();
        assert_eq!(line["policy_version"], "v1", "{profile:?}: the policy it started under decides it");

        let out = vm.http_request(post("/orders", body)).unwrap();
        assert_forwarded(&out, body, &format!("{profile:?} after the swap"));
    }
}

#[test]
fn dry_run_lets_an_invalid_body_through_and_counts_it() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut dry = policy("d1", 5, json!({}));
        dry["mode"] = json!("dry_run");
        let mut vm = vm(&host, &dry);
        let body = br#"{"sku": "ABC-12", "qty": 0}"#;
        let out = vm.http_request(post("/orders", body)).unwrap();
        assert_forwarded(&out, body, &format!("{profile:?}"));
        assert_eq!(counter(&host, &vm, "dry_run_denied_schema_violation"), 1, "{profile:?}");
        assert_eq!(counter(&host, &vm, "denied_schema_violation"), 0, "{profile:?}");
        let line = decision_lines(&host).pop().unwrap();
        assert_eq!((line["decision"].as_str(), line["reason"].as_str()), (Some("dry_run_deny"), Some("schema_violation")), "{profile:?}");
    }
}

const BAD_POLICY: &str = r#"{"policy_version": "v2", "default": {"body_schema": {"properties": {"qty": {"type": "integr"}}}}}"#;

#[test]
fn envoy_refuses_a_bad_update_and_the_last_good_policy_keeps_serving() {
    let host = Host::new(Profile::Envoy);
    let mut vm = vm(&host, &policy("v1", 5, json!({})));
    assert!(!vm.configure(BAD_POLICY.as_bytes()).unwrap(), "bad policy accepted");
    let refusal = host.logs_at_least(LogLevel::Error).into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(refusal.message.contains(r#"default.body_schema.properties.qty.type"#), "{}", refusal.message);
    assert!(refusal.message.contains(r#""integr""#), "the bad value quoted: {}", refusal.message);
    assert_eq!(host.metric_value("gatewarden_validate_config_rejected"), 1);
    let out = vm.http_request(post("/orders", br#"{"sku": "ABC-12", "qty": 9}"#)).unwrap();
    assert_denied(&out, 400, "schema_violation", "v1 still serving");
    assert_eq!(decision_lines(&host).pop().unwrap()["policy_version"], "v1");
}

/// Kong: a policy change is an nginx reload (new VMs); a refusal there would stop every route,
/// so the VM is accepted and this filter's requests fail closed.
#[test]
fn kong_accepts_the_vm_of_a_bad_policy_and_fails_its_requests_closed() {
    let host = Host::new(Profile::Kong);
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(BAD_POLICY.as_bytes()).unwrap(), "the VM must be accepted on Kong");
    let refusal = host.logs_at_least(LogLevel::Error).into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(refusal.message.contains(r#"default.body_schema.properties.qty.type"#), "{}", refusal.message);
    let out = vm.http_request(post("/orders", VALID)).unwrap();
    assert_eq!(out.status, 503);
    assert!(out.upstream_request.is_none());
    assert_eq!(counter(&host, &vm, "no_policy"), 1);
}

#[test]
fn hostile_nesting_is_400_invalid_json_without_a_trap() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({})));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let out = vm.http_request(post("/orders", deep.as_bytes()).chunked(1024)).unwrap();
        assert!(!out.trapped(), "{profile:?}: {out:?}");
        assert_denied(&out, 400, "invalid_json", &format!("{profile:?}"));
        // The VM still serves.
        assert_forwarded(&vm.http_request(post("/orders", VALID)).unwrap(), VALID, &format!("{profile:?} after"));
    }
}

#[test]
fn every_reason_has_its_counters_from_the_start() {
    let host = Host::new(Profile::Envoy);
    let _vm = vm(&host, &policy("v1", 5, json!({})));
    let reasons = [
        "invalid_json",
        "schema_violation",
        "invalid_parameter",
        "body_missing",
        "body_too_large",
        "unsupported_media_type",
        "unknown_path",
        "method_not_allowed",
        "body_unavailable",
        "document_unavailable",
    ];
    let metrics = host.metrics();
    for reason in reasons {
        for outcome in ["denied", "dry_run_denied"] {
            let name = format!("gatewarden_validate_{outcome}_{reason}");
            assert!(metrics.contains_key(&name), "{name} defined: {:?}", metrics.keys().collect::<Vec<_>>());
        }
    }
}

// ---- the plain form's header checks: decided before any body byte ----

/// A rule's `max_body_bytes`, `allowed_content_types`: refused on the headers, so the held body is
/// never needed (the request is done without `release_body`).
#[test]
fn content_length_past_the_limit_and_a_wrong_content_type_are_refused_on_the_headers() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &policy("v1", 5, json!({"max_body_bytes": 64})));
        host.clear_calls();
        let big = vec![b'x'; 1000];
        let mut request = vm.start_request(post("/orders", &big).hold_body_after(0)).unwrap();
        let Progress::Done(out) = request.poll().unwrap() else { panic!("{profile:?}: waited for the body") };
        assert_eq!(assert_denied(&out, 413, "body_too_large", &format!("{profile:?}")), BODY_TOO_LARGE_BODY);
        assert!(out.upstream_request.is_none(), "{profile:?}: decided before the upstream");

        let text = Request::new("POST", "/orders")
            .header("content-type", "text/plain")
            .header("content-length", "2")
            .body(b"hi".to_vec())
            .source("192.0.2.8:4000");
        let mut request = vm.start_request(text.hold_body_after(0)).unwrap();
        let Progress::Done(out) = request.poll().unwrap() else { panic!("{profile:?}: waited for the body") };
        assert_denied(&out, 415, "unsupported_media_type", &format!("{profile:?}"));
        assert_eq!(decision_lines(&host).pop().unwrap()["client"], "192.0.2.8", "{profile:?}: the client, on the headers");
        assert_eq!(body_reads(&host), 0, "{profile:?}");
        assert_eq!(counter(&host, &vm, "denied_body_too_large"), 1, "{profile:?}");
        assert_eq!(counter(&host, &vm, "denied_unsupported_media_type"), 1, "{profile:?}");
    }
}

/// Envoy, no `content-length`: the rule's limit (64) stops the body as soon as it is passed.
#[test]
fn envoy_chunks_past_the_rules_limit_are_413_and_never_read() {
    let host = Host::new(Profile::Envoy);
    let mut vm = vm(&host, &policy("v1", 5, json!({"max_body_bytes": 64})));
    host.clear_calls();
    let request = Request::new("POST", "/orders").header("content-type", "application/json").body(vec![b' '; 200]).chunked(16);
    let out = vm.http_request(request).unwrap();
    assert_denied(&out, 413, "body_too_large", "chunks");
    assert_eq!(body_reads(&host), 0, "the module was given 0 bytes");
    // 64 bytes exactly are read.
    let body = format!("{:<64}", r#"{"sku": "ABC-12", "qty": 2}"#);
    let request = Request::new("POST", "/orders").header("content-type", "application/json").body(body.as_bytes().to_vec()).chunked(16);
    assert_forwarded(&vm.http_request(request).unwrap(), body.as_bytes(), "at the limit");
    assert_eq!(body_reads(&host), 1);
}

// ---- the OpenAPI form ----

/// A small API: `POST /api/orders` (an order body), `GET /api/orders/{id}` (`id` an integer,
/// `verbose` a boolean query parameter).
fn openapi_doc() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "orders", "version": "1"},
        "servers": [{"url": "https://shop.example/api"}],
        "paths": {
            "/orders": {
                "post": {
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}}},
                    "responses": {"201": {"description": "created"}}
                }
            },
            "/orders/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                "get": {
                    "parameters": [{"name": "verbose", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": {"200": {"description": "the order"}}
                }
            }
        },
        "components": {"schemas": {"Order": order_schema(5)}}
    })
}

fn openapi_policy(version: &str, openapi: Value) -> Value {
    json!({"policy_version": version, "rules": [{"name": "api", "match": {"path_prefix": "/api"}, "openapi": openapi}]})
}

#[test]
fn openapi_routes_validate_bodies_and_parameters_with_404_and_405() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = vm(&host, &openapi_policy("o1", json!({"document": openapi_doc()})));
        let what = |w: &str| format!("{profile:?}: {w}");
        assert_forwarded(&vm.http_request(post("/api/orders", VALID)).unwrap(), VALID, &what("valid order"));
        let out = vm.http_request(post("/api/orders", br#"{"sku": "ABC-12", "qty": 9}"#)).unwrap();
        let problem: Value = serde_json::from_str(&assert_denied(&out, 400, "schema_violation", &what("qty 9"))).unwrap();
        assert_eq!(problem["errors"][0]["pointer"], "/qty", "{problem}");
        assert_eq!(problem["errors"][0]["keyword"], "maximum", "{problem}");

        let ok = vm.http_request(Request::get("/api/orders/7?verbose=true")).unwrap();
        assert_eq!(ok.status, 200, "{}", what("GET with valid parameters"));
        assert_eq!(ok.upstream_header("x-gatewarden-validate"), Some("allow; rule=api; version=o1"), "decided on the headers");
        let out = vm.http_request(Request::get("/api/orders/seven?verbose=maybe")).unwrap();
        let problem: Value = serde_json::from_str(&assert_denied(&out, 400, "invalid_parameter", &what("bad parameters"))).unwrap();
        assert!(problem["errors"].as_array().is_some_and(|e| !e.is_empty()), "{problem}");
        assert!(!problem.to_string().contains("maybe"), "the value is not echoed: {problem}");

        let out = vm.http_request(Request::new("DELETE", "/api/orders/7")).unwrap();
        assert_denied(&out, 405, "method_not_allowed", &what("DELETE"));
        assert_eq!(out.local_response.as_ref().unwrap().header("allow"), Some("GET"), "{}", what("Allow"));
        let out = vm.http_request(Request::get("/api/customers")).unwrap();
        assert_denied(&out, 404, "unknown_path", &what("unknown path"));
        for reason in ["schema_violation", "invalid_parameter", "method_not_allowed", "unknown_path"] {
            assert_eq!(counter(&host, &vm, &format!("denied_{reason}")), 1, "{}", what(reason));
        }
    }
}

#[test]
fn openapi_unknown_routes_with_pass_go_through_unvalidated_counted_and_logged() {
    let host = Host::new(Profile::Envoy);
    let openapi = json!({"document": openapi_doc(), "unknown_path": "pass", "unknown_method": "pass"});
    let mut vm = vm(&host, &openapi_policy("o1", openapi));
    let out = vm.http_request(Request::get("/api/customers").header("x-request-id", "req-7")).unwrap();
    assert_eq!(out.status, 200);
    let out = vm.http_request(Request::new("DELETE", "/api/orders/7")).unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(counter(&host, &vm, "unvalidated_unknown_path"), 1);
    assert_eq!(counter(&host, &vm, "unvalidated_method_not_allowed"), 1);
    assert_eq!(counter(&host, &vm, "allowed"), 2);
    let lines = decision_lines(&host);
    let line = lines.iter().find(|l| l["reason"] == "unknown_path").expect("logged");
    assert_eq!(line["decision"], "allow_unvalidated");
    assert_eq!(
        (line["rule"].as_str(), line["policy_version"].as_str(), line["request_id"].as_str()),
        (Some("api"), Some("o1"), Some("req-7"))
    );
}

const DOCS_PATH: &str = "/specs/orders.json";

fn docs_upstream(profile: Profile) -> &'static str {
    match profile {
        Profile::Envoy => "specs",
        Profile::Kong => "127.0.0.1:9002",
    }
}

/// `openapi.source`: 503 `document_unavailable` until the first copy is loaded; one fetch for
/// two workers; a copy that does not compile is refused and the last good one keeps serving.
#[test]
fn a_fetched_openapi_document_is_loaded_by_every_worker_and_a_bad_copy_is_refused() {
    for profile in PROFILES {
        let host = Host::new(profile);
        let upstream = docs_upstream(profile);
        host.add_cluster(upstream);
        let source = json!({"cluster": upstream, "path": DOCS_PATH, "refresh_seconds": 60});
        let policy = openapi_policy("r1", json!({"source": source}));
        let mut workers = [vm(&host, &policy), vm(&host, &policy)];
        let what = |w: &str| format!("{profile:?}: {w}");
        let out = workers[0].http_request(post("/api/orders", VALID)).unwrap();
        assert_denied(&out, 503, "document_unavailable", &what("before the first fetch"));

        host.script_http_response(upstream, DOCS_PATH, gatewarden_wasm_host::HttpResponse::new(200).body(openapi_doc().to_string()));
        host.tick().unwrap();
        host.deliver_pending_calls().unwrap();
        host.tick().unwrap(); // the other worker loads the published copy
        assert_eq!(host.http_calls().len(), 1, "{}", what("one fetch for two workers"));
        for vm in &mut workers {
            assert_forwarded(&vm.http_request(post("/api/orders", VALID)).unwrap(), VALID, &what("loaded"));
            let out = vm.http_request(post("/api/orders", br#"{"qty": 9}"#)).unwrap();
            assert_denied(&out, 400, "schema_violation", &what("validated by the fetched document"));
        }
        assert_eq!(host.metric_value("gatewarden_validate_openapi_loaded"), 2, "{}", what("loaded by both"));

        // The next copy does not compile (a $ref to nowhere): refused, the last good one serves.
        let mut bad = openapi_doc();
        bad["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
            json!({"$ref": "#/components/schemas/Nope"});
        host.script_http_response(upstream, DOCS_PATH, gatewarden_wasm_host::HttpResponse::new(200).body(bad.to_string()));
        host.advance(std::time::Duration::from_secs(61));
        host.tick().unwrap();
        host.deliver_pending_calls().unwrap();
        host.tick().unwrap();
        assert_eq!(host.http_calls().len(), 2, "{}", what("refetched after refresh_seconds"));
        assert_eq!(host.metric_value("gatewarden_validate_openapi_fetch_failed"), 1, "{}", what("the bad copy is refused"));
        for vm in &mut workers {
            assert_forwarded(&vm.http_request(post("/api/orders", VALID)).unwrap(), VALID, &what("last good copy"));
        }

        // A policy update with the same source keeps the loaded copy: no 503 in between.
        let policy2 = openapi_policy("r2", json!({"source": source, "unknown_path": "pass"}));
        assert!(workers[0].configure(policy2.to_string().as_bytes()).unwrap());
        assert_forwarded(&workers[0].http_request(post("/api/orders", VALID)).unwrap(), VALID, &what("after the update"));
        assert_eq!(workers[0].http_request(Request::get("/api/customers")).unwrap().status, 200, "{}", what("compiled with r2's options"));
    }
}

/// The policy crate's bounds on schemas applying in place of each other
/// (`gatewarden_validate_policy::{MAX_IN_PLACE_REFS, MAX_IN_PLACE_DEPTH}`), written out here.
const MAX_IN_PLACE_REFS: usize = 4;
const MAX_IN_PLACE_DEPTH: usize = 9;

/// `$defs` `a0` … `a{n}`, each applying the next in place through `keyword` (`allOf`, `anyOf`,
/// `oneOf`); the last an object whose `c` starts the chain again and whose `v` is an integer,
/// wrapped in `wraps` inline `allOf`s.
fn in_place_chain(n: usize, keyword: &str, wraps: usize) -> Value {
    let mut defs = serde_json::Map::new();
    for i in 0..n {
        defs.insert(format!("a{i}"), json!({keyword: [{"$ref": format!("#/$defs/a{}", i + 1)}]}));
    }
    let level = json!({"type": "object", "properties": {"c": {"$ref": "#/$defs/a0"}, "v": {"type": "integer"}}});
    defs.insert(format!("a{n}"), (0..wraps).fold(level, |s, _| json!({"allOf": [s]})));
    json!({"$defs": defs, "$ref": "#/$defs/a0"})
}

/// A body schema whose `$defs` chain 5,000 deep through `allOf` (validating it overflowed the
/// native stack; in a VM, a trap on a policy the filter had accepted) is refused when the policy
/// is configured, at its path; Envoy keeps the last good policy, Kong fails the route closed.
#[test]
fn a_schema_recursing_in_place_without_bound_is_refused_at_configure_time() {
    let hostile = json!({"policy_version": "v2", "rules": [{"name": "orders", "match": {"path_prefix": "/orders"}, "body_schema": in_place_chain(5_000, "allOf", 0)}]});
    for profile in PROFILES {
        let host = Host::new(profile);
        let mut vm = match profile {
            Profile::Envoy => vm(&host, &policy("v1", 5, json!({}))),
            _ => host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap(),
        };
        let accepted = vm.configure(hostile.to_string().as_bytes()).unwrap();
        assert_eq!(accepted, profile == Profile::Kong, "{profile:?}: Envoy refuses the update, Kong accepts the VM");
        let refusal =
            host.logs_at_least(LogLevel::Error).into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
        assert!(refusal.message.contains("rules[0].body_schema.$defs.a4995.allOf[0]"), "{profile:?}: {}", refusal.message);
        assert!(refusal.message.contains("in-place $refs"), "{profile:?}: {}", refusal.message);
        let body = (0..100).fold(json!({"v": 1}), |c, _| json!({"c": c})).to_string();
        let out = vm.http_request(post("/orders", body.as_bytes())).unwrap();
        assert!(!out.trapped(), "{profile:?}: {out:?}");
        match profile {
            // v1 still serves: this body is no order.
            Profile::Envoy => drop(assert_denied(&out, 400, "schema_violation", "v1 still serving")),
            _ => assert_eq!(out.status, 503, "{profile:?}: fails closed"),
        }
    }
}

/// The worst the bounds allow (crate gatewarden_validate_policy::refs): every level of a body
/// nested 127 deep (serde_json's limit) passes through 4 in-place `$ref`s and 9 steps; valid
/// and invalid bodies (the error list is the deeper path) are decided without a trap. (Measured
/// with this host's 512 KiB Wasm stack, 127 levels: a `oneOf` chain traps from 17 steps, 15 pass;
/// `allOf` traps from 27, 23 pass; the earlier bound let 16 `$ref`s through `allOf`, 31 steps a level: it trapped.)
#[test]
fn the_worst_in_place_recursion_the_bounds_allow_validates_without_a_trap() {
    for keyword in ["allOf", "anyOf", "oneOf"] {
        let p = json!({"policy_version": "v1", "rules": [{"name": "orders", "match": {"path_prefix": "/orders"}, "body_schema": in_place_chain(MAX_IN_PLACE_REFS - 1, keyword, MAX_IN_PLACE_DEPTH - (2 * MAX_IN_PLACE_REFS - 1))}]});
        let deep = |leaf: Value| (0..126).fold(json!({"v": leaf}), |c, _| json!({"c": c})).to_string();
        for profile in PROFILES {
            let what = format!("{profile:?} {keyword}");
            let host = Host::new(profile);
            let mut vm = vm(&host, &p);
            let good = deep(json!(1));
            let out = vm.http_request(post("/orders", good.as_bytes())).unwrap();
            assert!(!out.trapped(), "{what}: {out:?}");
            assert_forwarded(&out, good.as_bytes(), &what);
            let out = vm.http_request(post("/orders", deep(json!("x")).as_bytes())).unwrap();
            assert!(!out.trapped(), "{what}: {out:?}");
            assert_denied(&out, 400, "schema_violation", &what);
        }
    }
}
