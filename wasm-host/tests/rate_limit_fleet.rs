//! The built rate-limit module's fleet limits through the Wasm test host: the `ShouldRateLimit`
//! call over gRPC (Envoy) and `POST /json` (Kong, or Envoy with `protocol: http`) with scripted
//! answers on both profiles, timeouts and failures per `fleet.failure_mode`, gRPC refused on
//! Kong at configure time, local limits shedding load before the call, and lease mode against an
//! in-test service that follows the contract (calls per request, never more than the limit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_policy::document::compile;
use gatewarden_rate_limit_policy::fleet::contract::ContractService;
use gatewarden_rate_limit_policy::rls::{
    self, json as rls_json, Code, DescriptorStatus, Duration as PbDuration, RateLimit, RateLimitRequest, RateLimitResponse, Unit,
};
use gatewarden_rate_limit_policy::RateLimitPolicy;
use gatewarden_wasm_host::{GrpcResponse, Host, HttpResponse, Module, Outcome, Profile, Progress, Request, Settle, Vm, VmOptions};
use serde_json::{json, Value};

const VM_ID: &str = "gatewarden_rate_limit";
const CLUSTER: &str = "rls";
const ADDRESS: &str = "127.0.0.1:8081";
const SERVICE_METHOD: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const PROFILES: [Profile; 2] = [Profile::Envoy, Profile::Kong];

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-rate-limit"))
}

/// Rule `api`: a local limit of 3 per second, then a fleet limit of 10 per minute, keyed by
/// `x-api-key` then the client address. `fleet` merged into the fleet section.
fn policy(fleet: Value) -> Value {
    let mut section = json!({"service": {"cluster": CLUSTER, "address": ADDRESS, "timeout_ms": 150}});
    for (k, v) in fleet.as_object().unwrap() {
        section[k] = v.clone();
    }
    json!({
        "policy_version": "fleet1",
        "fleet": section,
        "rules": [{
            "name": "api", "match": {"path_prefix": "/api"},
            "limits": [{"name": "local", "rate": 3, "per": "1s"}, {"name": "global", "rate": 10, "per": "1m", "scope": "fleet"}],
            "key": [{"header": "x-api-key"}, "client_address"]
        }],
        "default": {"limits": [{"name": "shared", "rate": 100, "per_seconds": 10, "scope": "fleet"}], "key": [{"header": "x-api-key"}]}
    })
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

fn host(profile: Profile) -> Host {
    let host = Host::new(profile);
    host.set_time(t0());
    host.add_cluster(CLUSTER);
    host
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "policy refused: {:#?}", host.logs());
    vm
}

fn api(key: &str) -> Request {
    Request::get("/api/orders").source("192.0.2.1:1").header("x-api-key", key)
}

/// A counter of every VM of `host` (each VM tallies its own and flushes them on its tick).
fn counter(host: &Host, _vm: &Vm, name: &str) -> u64 {
    host.tick().unwrap();
    host.metric_value(&format!("gatewarden_rate_limit_{name}"))
}

fn status(code: Code, remaining: u32, reset_s: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit { name: "api/global".into(), requests_per_unit: 10, unit: Unit::Minute as i32 }),
        limit_remaining: remaining,
        duration_until_reset: Some(PbDuration { seconds: reset_s, nanos: 0 }),
        quota: None,
    }
}

fn answer(code: Code, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    RateLimitResponse { overall_code: code as i32, statuses, ..RateLimitResponse::default() }
}

/// Scripts `response` for every call of `profile`'s protocol (gRPC on Envoy, `/json` on Kong).
fn script(host: &Host, profile: Profile, response: &RateLimitResponse) {
    match profile {
        Profile::Envoy => host.script_grpc_response(CLUSTER, SERVICE_METHOD, GrpcResponse::ok(rls::encode_response(response))),
        Profile::Kong => {
            let status = if response.overall_code == Code::OverLimit as i32 { 429 } else { 200 };
            let body = rls_json::response_to_json(response);
            host.script_http_response(ADDRESS, "/json", HttpResponse::new(status).header("content-type", "application/json").body(body));
        }
    }
}

/// The requests the module sent, decoded, in order.
fn sent(host: &Host, profile: Profile) -> Vec<RateLimitRequest> {
    match profile {
        Profile::Envoy => host.grpc_calls().iter().map(|c| rls::decode_request(&c.message).unwrap()).collect(),
        Profile::Kong => {
            host.http_calls().iter().filter(|c| c.upstream == ADDRESS).map(|c| rls_json::request_from_json(&c.body).unwrap()).collect()
        }
    }
}

fn calls(host: &Host, profile: Profile) -> usize {
    sent(host, profile).len()
}

fn assert_denied(out: &Outcome, status: u16, reason: &str) {
    let local = out.local_response.as_ref().unwrap_or_else(|| panic!("expected a local {status}, got {out:?}"));
    assert_eq!((local.status, local.details.as_str()), (status, format!("gatewarden_rate_limit_{reason}").as_str()), "{out:?}");
    assert!(out.upstream_request.is_none());
}

#[test]
fn ok_allows_and_the_request_follows_the_contract_on_both_hosts() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(json!({})));
        script(&host, profile, &answer(Code::Ok, vec![status(Code::Ok, 9, 6)]));
        let out = vm.http_request(api("alice")).unwrap();
        assert_eq!(out.status, 200, "{profile:?}: {out:?}");
        let requests = sent(&host, profile);
        assert_eq!(requests.len(), 1, "{profile:?}: one call");
        let r = &requests[0];
        assert_eq!((r.domain.as_str(), r.hits_addend, r.descriptors.len()), ("gatewarden", 1, 1), "{profile:?}");
        let entries: Vec<(&str, &str)> = r.descriptors[0].entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(entries, [("gatewarden_limit", "api/global"), ("x-api-key", "alice"), ("remote_address", "192.0.2.1")], "{profile:?}");
        match profile {
            Profile::Envoy => {
                let call = host.grpc_calls().pop().unwrap();
                assert_eq!(call.upstream, CLUSTER);
                assert_eq!(format!("{}/{}", call.service, call.method), SERVICE_METHOD);
                assert_eq!(call.timeout, Duration::from_millis(150));
                assert!(host.http_calls().is_empty(), "Envoy: gRPC only");
            }
            Profile::Kong => {
                let call = host.http_calls().pop().unwrap();
                let h = |n: &str| call.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                assert_eq!((h(":method"), h(":path"), h(":authority")), (Some("POST".into()), Some("/json".into()), Some(ADDRESS.into())));
                assert_eq!(h("content-type").as_deref(), Some("application/json"));
                assert_eq!(call.timeout, Duration::from_millis(150));
                assert_eq!(host.call_count("proxy_grpc_call"), 0, "Kong: never gRPC");
            }
        }
        assert_eq!(counter(&host, &vm, "fleet_calls"), 1, "{profile:?}");
        assert_eq!(counter(&host, &vm, "allowed"), 1, "{profile:?}");
    }
}

#[test]
fn over_limit_is_a_429_naming_the_fleet_limit() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(json!({})));
        host.clear_logs();
        script(&host, profile, &answer(Code::OverLimit, vec![status(Code::OverLimit, 0, 42)]));
        let out = vm.http_request(api("alice")).unwrap();
        assert_denied(&out, 429, "fleet_limited");
        let body: Value = serde_json::from_slice(&out.response_body).unwrap();
        assert_eq!(body["violated-policies"], json!(["global"]), "{profile:?}");
        assert_eq!(out.response_header("retry-after"), Some("42"), "{profile:?}: duration_until_reset");
        assert_eq!(out.response_header("content-type"), Some("application/problem+json"), "{profile:?}");
        assert_eq!(counter(&host, &vm, "denied_fleet_limited"), 1, "{profile:?}");
        let lines: Vec<Value> = host
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l.message).ok())
            .filter(|v| v["gatewarden"] == "decision")
            .collect();
        assert_eq!(lines.len(), 1, "{profile:?}: {lines:?}");
        assert_eq!((lines[0]["reason"].as_str(), lines[0]["rule"].as_str()), (Some("fleet_limited"), Some("api")));
        let detail = lines[0]["detail"].as_str().unwrap();
        assert!(detail.contains("limits=global") && detail.contains("scope=fleet"), "{profile:?}: {detail}");
    }
}

#[test]
fn envoy_can_call_the_json_endpoint_too() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &policy(json!({"service": {"cluster": CLUSTER, "protocol": "http", "authority": "rls.internal"}})));
    let body = rls_json::response_to_json(&answer(Code::Ok, vec![]));
    host.script_http_response(CLUSTER, "/json", HttpResponse::new(200).body(body));
    assert_eq!(vm.http_request(api("a")).unwrap().status, 200);
    let call = host.http_calls().pop().unwrap();
    assert_eq!(call.upstream, CLUSTER);
    assert!(call.headers.contains(&(":authority".into(), "rls.internal".into())));
    assert!(host.grpc_calls().is_empty());
}

#[test]
fn a_request_denied_by_a_local_limit_never_calls_out() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(json!({})));
        script(&host, profile, &answer(Code::Ok, vec![status(Code::Ok, 9, 6)]));
        let statuses: Vec<u16> = (0..5).map(|_| vm.http_request(api("k")).unwrap().status).collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429], "{profile:?}: the local 3 per second");
        assert_eq!(calls(&host, profile), 3, "{profile:?}: no call for a local denial");
        assert_eq!(counter(&host, &vm, "denied_limited"), 2);
    }
}

/// How a test settles a call on a profile.
type SettleFor = fn(Profile) -> Settle;

/// Every way a call can fail, per profile: the module's answer and the counters.
#[test]
fn timeouts_and_failures_follow_the_fleet_failure_mode() {
    let ways: [(&str, SettleFor); 4] = [
        ("timeout", |_| Settle::Timeout),
        ("reset", |_| Settle::Fail),
        ("5xx or grpc error", |p| match p {
            Profile::Envoy => Settle::Grpc(GrpcResponse::status(13)),
            Profile::Kong => Settle::Http(HttpResponse::new(503).body("upstream connect error")),
        }),
        ("garbage", |p| match p {
            Profile::Envoy => Settle::Grpc(GrpcResponse::ok(vec![0xff, 0xff, 0xff])),
            Profile::Kong => Settle::Http(HttpResponse::new(200).body("<html>")),
        }),
    ];
    for profile in PROFILES {
        for (mode, status) in [("allow", 200), ("deny", 503), ("local", 200)] {
            let host = host(profile);
            let mut vm = vm(&host, &policy(json!({"failure_mode": mode})));
            for (i, (what, settle)) in ways.iter().enumerate() {
                let mut request = vm.start_request(api(&format!("{mode}-{i}"))).unwrap();
                let token = *host.pending_tokens().last().unwrap_or_else(|| panic!("{profile:?} {mode} {what}: no call"));
                assert!(host.settle_call(token, settle(profile)).unwrap());
                let Progress::Done(out) = request.poll().unwrap() else { panic!("{profile:?} {mode} {what}: still waiting") };
                assert_eq!(out.status, status, "{profile:?} {mode} {what}: {out:?}");
                if mode == "deny" {
                    assert_denied(&out, 503, "fleet_unavailable");
                }
                assert!(host.pending_tokens().is_empty(), "{profile:?} {mode} {what}: no hang");
            }
            assert_eq!(counter(&host, &vm, &format!("fleet_failure_{mode}")), 4, "{profile:?} {mode}");
            assert!(counter(&host, &vm, "callout_timeout") >= 1, "{profile:?} {mode}");
            let warned = host.logs().iter().any(|l| l.message.contains("rate limit service gave no usable answer"));
            assert!(warned, "{profile:?} {mode}: the failure is logged");
        }
    }
}

#[test]
fn local_failure_mode_enforces_the_fleet_limit_on_the_gateway_alone() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(json!({"failure_mode": "local"})));
        // No script: every call fails (Envoy: UNAVAILABLE; Kong: no answer). `default`: 100 per 10 s.
        let statuses: Vec<u16> = (0..102)
            .map(|_| vm.http_request(Request::get("/other").source("192.0.2.1:1").header("x-api-key", "k")).unwrap().status)
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100, "{profile:?}");
        assert_eq!(statuses[100..], [429, 429], "{profile:?}");
        assert_eq!(counter(&host, &vm, "denied_fleet_limited"), 2, "{profile:?}");
    }
}

#[test]
fn kong_refuses_grpc_and_envoy_refuses_a_policy_without_a_cluster() {
    let host = host(Profile::Kong);
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(policy(json!({"service": {"address": ADDRESS, "protocol": "grpc"}})).to_string().as_bytes()).unwrap());
    let refused = host
        .logs()
        .iter()
        .any(|l| l.message.contains("policy refused: fleet.service.protocol: gRPC callouts are not available on ngx_wasm_module"));
    assert!(refused, "{:#?}", host.logs());
    assert_denied(&vm.http_request(api("a")).unwrap(), 503, "no_policy");
    assert_eq!(host.call_count("proxy_grpc_call"), 0);

    let host = self::host(Profile::Envoy);
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(!vm.configure(policy(json!({"service": {"address": ADDRESS}})).to_string().as_bytes()).unwrap());
    assert!(host.logs().iter().any(|l| l.message.contains("policy refused: fleet.service.cluster:")), "{:#?}", host.logs());
    // Without any fleet limit the section is not used: accepted.
    let mut local_only = policy(json!({"service": {"address": ADDRESS}}));
    local_only["rules"][0]["limits"] = json!([{"name": "local", "rate": 3, "per": "1s"}]);
    local_only["default"] = json!({});
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(local_only.to_string().as_bytes()).unwrap(), "{:#?}", host.logs());
    assert_eq!(vm.http_request(api("a")).unwrap().status, 200);
}

// ---- lease mode, against a service that follows the contract ----

fn host_now_us(host: &Host) -> u64 {
    host.now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Runs one request through `vm`, answering each call it makes from `svc`; returns the status
/// and the number of calls it made.
fn through_service(host: &Host, profile: Profile, vm: &mut Vm, svc: &mut ContractService, request: Request) -> (u16, usize) {
    let before = calls(host, profile);
    let mut handle = vm.start_request(request).unwrap();
    loop {
        match handle.poll().unwrap() {
            Progress::Done(out) => return (out.status, calls(host, profile) - before),
            Progress::Paused(_) => {
                let token = *host.pending_tokens().first().expect("paused without a call");
                let r = sent(host, profile).pop().unwrap();
                let a = svc.answer(&r, host_now_us(host));
                let settle = match profile {
                    Profile::Envoy => Settle::Grpc(GrpcResponse::ok(rls::encode_response(&a))),
                    Profile::Kong => {
                        let status = if a.overall_code == Code::OverLimit as i32 { 429 } else { 200 };
                        Settle::Http(HttpResponse::new(status).body(rls_json::response_to_json(&a)))
                    }
                };
                assert!(host.settle_call(token, settle).unwrap());
            }
        }
    }
}

#[test]
fn lease_mode_two_workers_never_admit_more_than_the_limit_and_call_once_per_k() {
    for profile in PROFILES {
        // `default`: 100 per 10 s (burst 100). K = 10, leases of 5 s.
        let p = policy(json!({"lease": {"units": 10, "lease_ms": 5_000}}));
        let host = host(profile);
        let mut vms = [vm(&host, &p), vm(&host, &p)];
        let mut svc = ContractService::new(&compile::<RateLimitPolicy>(p.to_string().as_bytes()).unwrap());
        let other = |key: &str| Request::get("/other").source("192.0.2.1:1").header("x-api-key", key);
        // 80 requests, all within the limit: one call per 10 requests per worker.
        let mut total_calls = 0;
        for i in 0..80 {
            let (status, n) = through_service(&host, profile, &mut vms[i % 2], &mut svc, other("k"));
            assert_eq!(status, 200, "{profile:?}: request {i}");
            total_calls += n;
        }
        assert_eq!(total_calls, 8, "{profile:?}: 80 requests, K=10, two workers");
        assert_eq!(counter(&host, &vms[0], "fleet_lease_spent"), 72, "{profile:?}");
        // Then 100 more at once: the fleet limit holds across both workers.
        let mut admitted = 80;
        let mut calls_over = 0;
        for i in 0..100 {
            let (status, n) = through_service(&host, profile, &mut vms[i % 2], &mut svc, other("k"));
            calls_over += n;
            if status == 200 {
                admitted += 1;
            }
        }
        assert!(admitted <= svc.granted && svc.granted <= 100, "{profile:?}: admitted {admitted}, granted {}", svc.granted);
        assert!(admitted >= 100 - 2 * 10, "{profile:?}: at most the two workers' leases unspent: {admitted}");
        // Each worker: one lease of the last 20 units, then one refusal repeated without a call
        // (the clock does not move: T = 100 ms never passes).
        assert_eq!(calls_over, 4, "{profile:?}");
        assert_eq!(counter(&host, &vms[0], "fleet_lease_refused"), 100 - 20 - 2, "{profile:?}");
        // Leases expire: 5 s later a worker calls again even with units left.
        host.advance(Duration::from_secs(5));
        let (_, n) = through_service(&host, profile, &mut vms[0], &mut svc, other("k"));
        assert_eq!(n, 1, "{profile:?}: expired lease");
    }
}

#[test]
fn headers_on_allowed_carry_the_fleet_limit_s_state_after_the_call() {
    for profile in PROFILES {
        let host = host(profile);
        let mut p = policy(json!({}));
        p["rules"][0]["headers_on_allowed"] = json!(true);
        let mut vm = vm(&host, &p);
        script(&host, profile, &answer(Code::Ok, vec![status(Code::Ok, 7, 18)]));
        let out = vm.http_request(api("h")).unwrap();
        assert_eq!(out.status, 200, "{profile:?}: {out:?}");
        assert_eq!(out.response_header("ratelimit-policy"), Some(r#""local";q=3;w=1, "global";q=10;w=60"#), "{profile:?}");
        assert_eq!(out.response_header("ratelimit"), Some(r#""local";r=2;t=1, "global";r=7;t=18"#), "{profile:?}");
    }
}
