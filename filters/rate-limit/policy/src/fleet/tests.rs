//! Native tests of fleet limits: configuration errors, descriptors per key part, answers to
//! decisions, failure modes, and lease accounting with injected time against an in-test service
//! that follows the contract (GCRA, deny-if-any).

use gatewarden_policy::document::{compile, FilterPolicy};
use gatewarden_policy::facts::RequestFacts;
use serde_json::{json, Value};

use super::contract::ContractService;
use super::*;
use crate::gcra;
use crate::policy::{RateLimitOutcome, RateLimitPolicy, RateLimitReason};
use crate::rls::{Code, DescriptorStatus, Duration as PbDuration, RateLimit, RateLimitResponse, Unit};
use crate::table::MemoryTable;

const S: u64 = gcra::US_PER_SECOND;
const T0: u64 = 1_764_000_000 * S;
const SEED: u64 = 7;

/// Rule `api`: a local limit of 100/s and two fleet limits (10/min, 1000/day), every kind of key
/// part; `on_missing_key: shared` so a missing claim header is an omitted entry. Rule `tight`: a
/// local limit of 1/s before one fleet limit. Rule `solo`: a fleet limit only.
fn doc(fleet: Value) -> Value {
    json!({
        "policy_version": "f1",
        "fleet": fleet,
        "rules": [
            {"name": "api", "match": {"path_prefix": "/api"},
             "limits": [{"name": "local", "rate": 100, "per": "1s"},
                        {"name": "global", "rate": 10, "per": "1m", "scope": "fleet"},
                        {"name": "daily", "rate": 1000, "per": "1d", "scope": "fleet"}],
             "key": ["client_address", {"header": "X-Tenant"}, {"claim_header": "x-user"}, "path", "method", "rule"],
             "on_missing_key": "shared", "headers_on_allowed": true},
            {"name": "tight", "match": {"path_prefix": "/tight"},
             "limits": [{"name": "one", "rate": 1, "per": "1s"}, {"name": "fleet", "rate": 100, "per": "1s", "scope": "fleet"}]},
            {"name": "solo", "match": {"path_prefix": "/solo"},
             "limits": [{"name": "shared", "rate": 100, "per_seconds": 10, "scope": "fleet"}],
             "key": [{"header": "x-api-key"}], "cost": {"header": "x-cost", "max": 50, "default": 1}}
        ]
    })
}

fn service() -> Value {
    json!({"service": {"cluster": "rls", "address": "127.0.0.1:8081"}})
}

fn policy(v: &Value) -> RateLimitPolicy {
    compile::<RateLimitPolicy>(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

fn refused(v: &Value) -> String {
    match compile::<RateLimitPolicy>(v.to_string().as_bytes()) {
        Ok(_) => panic!("accepted: {v}"),
        Err(e) => e.to_string(),
    }
}

fn decide(p: &RateLimitPolicy, t: &mut MemoryTable, now: u64, path: &str, extra: &[(&str, &str)]) -> RateLimitOutcome {
    let mut h = vec![(":method".to_owned(), "POST".to_owned()), (":path".to_owned(), path.to_owned())];
    h.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    p.decide(&RequestFacts::new(&h, Some("192.0.2.7:4242")), now, SEED, t)
}

/// Decides locally and returns the fleet check it leaves.
fn check(p: &RateLimitPolicy, t: &mut MemoryTable, now: u64, path: &str, extra: &[(&str, &str)]) -> FleetCheck {
    let out = decide(p, t, now, path, extra);
    assert_eq!(out.decision.reason(), None, "local limits admit: {out:?}");
    *out.fleet.unwrap_or_else(|| panic!("no fleet check for {path}"))
}

fn asked(step: FleetStep) -> FleetCall {
    match step {
        FleetStep::Call(c) => c,
        FleetStep::Done { outcome, note } => panic!("expected a call, got {note:?}: {outcome:?}"),
    }
}

fn done(step: FleetStep) -> (RateLimitOutcome, FleetNote) {
    match step {
        FleetStep::Done { outcome, note } => (outcome, note),
        FleetStep::Call(c) => panic!("expected a decision, got a call: {:?}", c.request),
    }
}

fn header<'a>(o: &'a RateLimitOutcome, name: &str) -> Option<&'a str> {
    o.response_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn status(code: Code, limit: Option<(u32, Unit)>, remaining: u32, reset_s: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: limit.map(|(rate, unit)| RateLimit { name: String::new(), requests_per_unit: rate, unit: unit as i32 }),
        limit_remaining: remaining,
        duration_until_reset: Some(PbDuration { seconds: reset_s, nanos: 0 }),
        quota: None,
    }
}

fn response(code: Code, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    RateLimitResponse { overall_code: code as i32, statuses, ..RateLimitResponse::default() }
}

fn entries(d: &crate::rls::RateLimitDescriptor) -> Vec<(&str, &str)> {
    d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect()
}

// ---- configuration ----

#[test]
fn config_errors_name_the_field_and_quote_the_value() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"service": {}}), r#"fleet.service: give "cluster" (an Envoy cluster), "address" (host:port, Kong's engine) or both"#),
        (json!({"service": {"cluster": "a b"}}), r#"fleet.service.cluster: invalid cluster "a b""#),
        (json!({"service": {"address": "rls"}}), r#"fleet.service.address: invalid address "rls": host:port is required"#),
        (json!({"service": {"address": "h:0"}}), r#"fleet.service.address: invalid address "h:0""#),
        (json!({"service": {"address": "::1:80"}}), r#"fleet.service.address: invalid address "::1:80""#),
        (json!({"service": {"cluster": "rls", "authority": "a b"}}), r#"fleet.service.authority: invalid authority "a b""#),
        (json!({"service": {"cluster": "rls", "timeout_ms": 0}}), "fleet.service.timeout_ms: 0 is not between 1 and 10000"),
        (json!({"service": {"cluster": "rls", "timeout_ms": 10_001}}), "fleet.service.timeout_ms: 10001 is not between 1 and 10000"),
        (json!({"service": {"cluster": "rls"}, "domain": "a b"}), r#"fleet.domain: invalid domain "a b""#),
        (
            json!({"service": {"cluster": "rls"}, "lease": {"units": 1, "lease_ms": 100}}),
            "fleet.lease.units: 1 is not between 2 and 100000",
        ),
        (
            json!({"service": {"cluster": "rls"}, "lease": {"units": 100_001, "lease_ms": 100}}),
            "fleet.lease.units: 100001 is not between 2 and 100000",
        ),
        (
            json!({"service": {"cluster": "rls"}, "lease": {"units": 5, "lease_ms": 0}}),
            "fleet.lease.lease_ms: 0 is not between 1 and 60000",
        ),
        (
            json!({"service": {"cluster": "rls"}, "lease": {"units": 11, "lease_ms": 100}}),
            r#"fleet.lease.units: 11 is more than the burst 10 of fleet limit "api/global" (rules[0].limits[1]): a lease could never be granted"#,
        ),
    ];
    for (fleet, want) in cases {
        let e = refused(&doc(fleet.clone()));
        assert!(e.starts_with(want), "for {fleet}:\n  got  {e}\n  want {want}…");
    }
    assert!(refused(&json!({"policy_version": "x", "fleet": {"service": {"cluster": "c"}, "protocol": "grpc"}})).contains("unknown field"));
}

#[test]
fn a_fleet_limit_needs_the_fleet_section() {
    let mut d = doc(service());
    d.as_object_mut().unwrap().remove("fleet");
    assert_eq!(refused(&d), r#"rules[0].limits[1].scope: "fleet" needs the policy's "fleet" section (the rate limit service)"#);
    // A policy with local limits only needs none, and decides without a fleet check.
    let p = policy(&json!({"policy_version": "l", "default": {"limits": [{"name": "l", "rate": 1, "per": "1s"}]}}));
    assert!(p.fleet().is_none());
    let out = decide(&p, &mut MemoryTable::new(64), T0, "/", &[]);
    assert!(out.fleet.is_none() && out.decision.reason().is_none());
}

#[test]
fn a_fixed_cost_above_a_fleet_burst_is_refused() {
    let mut d = doc(service());
    d["rules"][1]["cost"] = json!(101);
    d["rules"][1]["limits"][0]["burst"] = json!(200);
    let e = refused(&d);
    assert!(e.starts_with("rules[1].cost: 101 is more than the burst 100 of limit \"fleet\""), "{e}");
}

#[test]
fn target_per_proxy_and_protocol() {
    let p = policy(&doc(service()));
    let f = p.fleet().unwrap();
    let envoy = f.target(Proxy::Envoy).unwrap();
    assert_eq!(
        (envoy.protocol, envoy.upstream.as_str(), envoy.authority.as_str(), envoy.timeout),
        (FleetProtocol::Grpc, "rls", "rls", Duration::from_millis(200))
    );
    let kong = f.target(Proxy::NgxWasmModule).unwrap();
    assert_eq!((kong.protocol, kong.upstream.as_str()), (FleetProtocol::Http, "127.0.0.1:8081"));

    let p = policy(&doc(json!({"service": {"cluster": "rls", "protocol": "http", "authority": "rls.internal", "timeout_ms": 50}})));
    let t = p.fleet().unwrap().target(Proxy::Envoy).unwrap();
    assert_eq!((t.protocol, t.authority.as_str(), t.timeout), (FleetProtocol::Http, "rls.internal", Duration::from_millis(50)));
    assert_eq!(
        p.fleet().unwrap().target(Proxy::NgxWasmModule).unwrap_err(),
        "fleet.service.address: ngx_wasm_module calls host:port; give the rate limit service's address"
    );
    let p = policy(&doc(json!({"service": {"address": "10.0.0.1:8081", "protocol": "grpc"}})));
    assert_eq!(
        p.fleet().unwrap().target(Proxy::NgxWasmModule).unwrap_err(),
        "fleet.service.protocol: gRPC callouts are not available on ngx_wasm_module; use \"http\""
    );
    assert_eq!(
        p.fleet().unwrap().target(Proxy::Envoy).unwrap_err(),
        "fleet.service.cluster: Envoy calls a cluster; give the rate limit service's cluster name"
    );
}

#[test]
fn failure_mode_defaults_to_the_policy_s() {
    let mut d = doc(service());
    assert_eq!(policy(&d).fleet().unwrap().failure_mode, FleetFailureMode::Deny);
    d["failure_mode"] = json!("allow");
    assert_eq!(policy(&d).fleet().unwrap().failure_mode, FleetFailureMode::Allow);
    d["fleet"]["failure_mode"] = json!("local");
    assert_eq!(policy(&d).fleet().unwrap().failure_mode, FleetFailureMode::Local);
}

// ---- descriptors ----

#[test]
fn descriptors_follow_the_contract_per_key_part() {
    let p = policy(&doc(service()));
    let mut t = MemoryTable::new(64);
    let c = check(&p, &mut t, T0, "/api/orders", &[("x-tenant", "acme"), ("x-user", "u-1")]);
    let call = asked(crate::fleet::start(p.fleet().unwrap(), c, &mut Leases::default(), T0));
    let r = &call.request;
    assert_eq!((r.domain.as_str(), r.hits_addend), ("gatewarden", 1));
    assert_eq!(r.descriptors.len(), 2, "one per fleet limit, none for the local one");
    let tail = [
        ("remote_address", "192.0.2.7"),
        ("x-tenant", "acme"),
        ("x-user", "u-1"),
        ("path", "/api/orders"),
        ("method", "POST"),
        ("rule", "api"),
    ];
    let mut want = vec![("gatewarden_limit", "api/global")];
    want.extend(tail);
    assert_eq!(entries(&r.descriptors[0]), want);
    want[0] = ("gatewarden_limit", "api/daily");
    assert_eq!(entries(&r.descriptors[1]), want);
    assert!(r.descriptors.iter().all(|d| d.limit.is_none()));

    // A missing part under `shared` has no entry; the others keep their order.
    let c = check(&p, &mut t, T0, "/api/orders", &[("x-tenant", "acme")]);
    let call = asked(crate::fleet::start(p.fleet().unwrap(), c, &mut Leases::default(), T0));
    let keys: Vec<&str> = call.request.descriptors[0].entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["gatewarden_limit", "remote_address", "x-tenant", "path", "method", "rule"]);

    // The domain, and the cost as hits_addend.
    let mut d = doc(service());
    d["fleet"]["domain"] = json!("edge");
    let p = policy(&d);
    let c = check(&p, &mut t, T0, "/solo", &[("x-api-key", "k"), ("x-cost", "7")]);
    let call = asked(crate::fleet::start(p.fleet().unwrap(), c, &mut Leases::default(), T0));
    assert_eq!((call.request.domain.as_str(), call.request.hits_addend), ("edge", 7));
    assert_eq!(entries(&call.request.descriptors[0]), [("gatewarden_limit", "solo/shared"), ("x-api-key", "k")]);
}

#[test]
fn missing_key_part_under_deny_or_allow_never_calls() {
    let mut d = doc(service());
    d["rules"][2]["on_missing_key"] = json!("deny");
    let p = policy(&d);
    let out = decide(&p, &mut MemoryTable::new(64), T0, "/solo", &[]);
    assert_eq!((out.reason, out.fleet.is_none()), (Some(RateLimitReason::KeyMissing), true));
    d["rules"][2]["on_missing_key"] = json!("allow");
    let p = policy(&d);
    let out = decide(&p, &mut MemoryTable::new(64), T0, "/solo", &[]);
    assert_eq!((out.reason, out.fleet.is_none()), (None, true), "unlimited: no fleet check");
}

#[test]
fn a_request_denied_locally_never_calls_out() {
    let p = policy(&doc(service()));
    let mut t = MemoryTable::new(64);
    let _ = check(&p, &mut t, T0, "/tight", &[]);
    let out = decide(&p, &mut t, T0, "/tight", &[]);
    assert_eq!(out.reason, Some(RateLimitReason::Limited));
    assert!(out.fleet.is_none(), "denied locally: no fleet check");
    assert_eq!(out.violated.iter().map(|v| &**v).collect::<Vec<_>>(), ["one"]);
}

#[test]
fn a_zero_cost_request_is_not_sent() {
    let p = policy(&doc(service()));
    let c = check(&p, &mut MemoryTable::new(64), T0, "/solo", &[("x-api-key", "k"), ("x-cost", "0")]);
    let (out, note) = done(crate::fleet::start(p.fleet().unwrap(), c, &mut Leases::default(), T0));
    assert_eq!((out.reason, note), (None, FleetNote::NotChecked));
}

// ---- answers ----

fn resume(
    p: &RateLimitPolicy,
    pending: FleetPending,
    answer: FleetAnswer,
    leases: &mut Leases,
    now: u64,
    t: &mut MemoryTable,
) -> FleetStep {
    crate::fleet::resume(p.fleet().unwrap(), pending, answer, leases, now, t, p.header().failure_mode)
}

#[test]
fn ok_allows_and_over_limit_denies_naming_the_violated_limits() {
    let p = policy(&doc(service()));
    let mut t = MemoryTable::new(64);
    let mut leases = Leases::default();
    let f = p.fleet().unwrap();
    let extra = [("x-tenant", "acme")];

    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/api", &extra), &mut leases, T0));
    let ok = response(Code::Ok, vec![status(Code::Ok, Some((10, Unit::Minute)), 9, 6), status(Code::Ok, Some((1000, Unit::Day)), 999, 87)]);
    let (out, note) = done(resume(&p, c.pending, FleetAnswer::Response(ok), &mut leases, T0, &mut t));
    assert_eq!((out.reason, note), (None, FleetNote::Answered));
    // headers_on_allowed: the local limit's state and the fleet's from the statuses.
    assert_eq!(header(&out, "ratelimit-policy"), Some(r#""local";q=100;w=1, "global";q=10;w=60, "daily";q=1000;w=86400"#));
    assert_eq!(header(&out, "ratelimit"), Some(r#""local";r=99;t=1, "global";r=9;t=6, "daily";r=999;t=87"#));

    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/api", &extra), &mut leases, T0));
    let over = response(
        Code::OverLimit,
        vec![status(Code::Ok, Some((10, Unit::Minute)), 3, 40), status(Code::OverLimit, Some((1000, Unit::Day)), 0, 30)],
    );
    let (out, _) = done(resume(&p, c.pending, FleetAnswer::Response(over), &mut leases, T0, &mut t));
    assert_eq!(out.reason, Some(RateLimitReason::FleetLimited));
    assert_eq!(out.decision.verdict, gatewarden_policy::Verdict::Deny(RateLimitReason::FleetLimited.denial()));
    assert_eq!(out.decision.reason(), Some("fleet_limited"));
    assert_eq!(out.violated.iter().map(|v| &**v).collect::<Vec<_>>(), ["daily"]);
    let body: Value = serde_json::from_str(out.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["violated-policies"], json!(["daily"]));
    assert_eq!(body["status"], 429);
    assert_eq!(header(&out, "retry-after"), Some("30"), "the violated descriptor's duration_until_reset, not the other's 40");
    assert_eq!(header(&out, "content-type"), Some("application/problem+json"));

    // OVER_LIMIT with no statuses: every fleet limit of the rule is named, no Retry-After.
    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/api", &extra), &mut leases, T0));
    let (out, _) = done(resume(&p, c.pending, FleetAnswer::Response(response(Code::OverLimit, vec![])), &mut leases, T0, &mut t));
    assert_eq!(out.violated.iter().map(|v| &**v).collect::<Vec<_>>(), ["global", "daily"]);
    assert_eq!(header(&out, "retry-after"), None);
}

#[test]
fn the_denial_s_status_and_body_are_the_429_problem() {
    let d = RateLimitReason::FleetLimited.denial();
    assert_eq!((d.status, d.body), (429, crate::response::LIMITED_BODY));
    let d = RateLimitReason::FleetUnavailable.denial();
    assert_eq!((d.status, d.reason), (503, "fleet_unavailable"));
    assert!(
        RateLimitReason::ALL.contains(&RateLimitReason::FleetLimited) && RateLimitReason::ALL.contains(&RateLimitReason::FleetUnavailable)
    );
}

#[test]
fn unusable_answers_are_failures() {
    assert_eq!(FleetAnswer::from_grpc(14, b""), FleetAnswer::Failed(FleetFailure::GrpcStatus(14)));
    assert!(matches!(FleetAnswer::from_grpc(0, b"\xff\xff\xff"), FleetAnswer::Failed(FleetFailure::Unreadable(_))));
    assert!(matches!(FleetAnswer::from_http(503, b"upstream connect error"), FleetAnswer::Failed(FleetFailure::Unreadable(_))));
    assert!(matches!(FleetAnswer::from_http(200, b"<html>"), FleetAnswer::Failed(FleetFailure::Unreadable(_))));
    let ok = response(Code::Ok, vec![]);
    assert_eq!(FleetAnswer::from_grpc(0, &crate::rls::encode_response(&ok)), FleetAnswer::Response(ok.clone()));
    assert_eq!(FleetAnswer::from_http(200, crate::rls::json::response_to_json(&ok).as_bytes()), FleetAnswer::Response(ok));
}

#[test]
fn each_failure_follows_failure_mode() {
    let failures = || {
        vec![
            FleetAnswer::Failed(FleetFailure::Call("timeout")),
            FleetAnswer::Failed(FleetFailure::Call("failed")),
            FleetAnswer::from_grpc(14, b""),
            FleetAnswer::from_http(500, b"Internal Server Error\n"),
            FleetAnswer::Response(response(Code::Unknown, vec![])),
            FleetAnswer::Response(RateLimitResponse { overall_code: 9, ..RateLimitResponse::default() }),
        ]
    };
    for (mode, want) in [("allow", None), ("deny", Some(RateLimitReason::FleetUnavailable)), ("local", None)] {
        let mut d = doc(service());
        d["fleet"]["failure_mode"] = json!(mode);
        let p = policy(&d);
        let mut t = MemoryTable::new(64);
        for answer in failures() {
            let c = asked(crate::fleet::start(
                p.fleet().unwrap(),
                check(&p, &mut t, T0, "/solo", &[("x-api-key", mode)]),
                &mut Leases::default(),
                T0,
            ));
            let (out, note) = done(resume(&p, c.pending, answer.clone(), &mut Leases::default(), T0, &mut t));
            assert_eq!(out.reason, want, "{mode} on {answer:?}");
            let FleetNote::Failed { failure, mode: m } = note else { panic!("{mode}: not a failure: {note:?}") };
            assert_eq!(m, p.fleet().unwrap().failure_mode);
            assert!(!failure.kind().is_empty() && !failure.to_string().is_empty());
        }
    }
}

#[test]
fn local_failure_mode_enforces_the_fleet_limit_on_this_gateway() {
    let mut d = doc(service());
    d["fleet"]["failure_mode"] = json!("local");
    let p = policy(&d);
    let mut t = MemoryTable::new(64);
    let f = p.fleet().unwrap();
    // `solo`: 100 per 10 s. With the service down, this gateway alone admits exactly 100.
    let mut verdicts = Vec::new();
    for _ in 0..102 {
        let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/solo", &[("x-api-key", "k")]), &mut Leases::default(), T0));
        let (out, _) = done(resume(&p, c.pending, FleetAnswer::Failed(FleetFailure::Call("timeout")), &mut Leases::default(), T0, &mut t));
        verdicts.push(out.reason);
    }
    assert_eq!(verdicts.iter().filter(|v| v.is_none()).count(), 100);
    assert_eq!(verdicts[100], Some(RateLimitReason::FleetLimited));
    // Its bucket is not the key's local bucket: another rule's local limits are unaffected, and
    // one refilled unit comes back after T = 100 ms.
    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0 + S / 10, "/solo", &[("x-api-key", "k")]), &mut Leases::default(), T0));
    let (out, _) =
        done(resume(&p, c.pending, FleetAnswer::Failed(FleetFailure::Call("failed")), &mut Leases::default(), T0 + S / 10, &mut t));
    assert_eq!(out.reason, None);
}

#[test]
fn local_limits_stay_charged_when_the_fleet_denies() {
    let p = policy(&doc(service()));
    let mut t = MemoryTable::new(64);
    let c = check(&p, &mut t, T0, "/tight", &[]);
    let c = asked(crate::fleet::start(p.fleet().unwrap(), c, &mut Leases::default(), T0));
    let (out, _) =
        done(resume(&p, c.pending, FleetAnswer::Response(response(Code::OverLimit, vec![])), &mut Leases::default(), T0, &mut t));
    assert_eq!(out.reason, Some(RateLimitReason::FleetLimited));
    assert_eq!(decide(&p, &mut t, T0, "/tight", &[]).reason, Some(RateLimitReason::Limited), "the local unit was spent");
}

// ---- lease mode ----

/// Runs one request of `key` on a worker with `leases` through the service; returns whether it
/// was admitted.
fn run(p: &RateLimitPolicy, t: &mut MemoryTable, leases: &mut Leases, svc: &mut ContractService, now: u64, key: &str) -> bool {
    let c = check(p, t, now, "/solo", &[("x-api-key", key)]);
    let mut step = crate::fleet::start(p.fleet().unwrap(), c, leases, now);
    loop {
        match step {
            FleetStep::Done { outcome, .. } => return outcome.reason.is_none(),
            FleetStep::Call(call) => {
                let answer = svc.answer(&call.request, now);
                step = resume(p, call.pending, FleetAnswer::Response(answer), leases, now, t);
            }
        }
    }
}

fn lease_policy(units: u32, lease_ms: u64) -> RateLimitPolicy {
    let mut d = doc(service());
    d["fleet"]["lease"] = json!({"units": units, "lease_ms": lease_ms});
    policy(&d)
}

#[test]
fn a_lease_is_spent_locally_then_renewed() {
    let p = lease_policy(5, 1_000);
    let mut t = MemoryTable::new(64);
    let mut svc = ContractService::new(&p);
    let mut leases = Leases::default();
    let c = asked(crate::fleet::start(p.fleet().unwrap(), check(&p, &mut t, T0, "/solo", &[("x-api-key", "k")]), &mut leases, T0));
    assert_eq!(c.request.hits_addend, 5, "asks for K");
    let answer = svc.answer(&c.request, T0);
    let (out, note) = done(resume(&p, c.pending, FleetAnswer::Response(answer), &mut leases, T0, &mut t));
    assert_eq!((out.reason, note), (None, FleetNote::Answered));
    assert_eq!(leases.units(out.key.as_ref().unwrap().fingerprint, T0), 4, "K minus the cost");
    for i in 0..4 {
        let (out, note) =
            done(crate::fleet::start(p.fleet().unwrap(), check(&p, &mut t, T0, "/solo", &[("x-api-key", "k")]), &mut leases, T0));
        assert_eq!((out.reason, note), (None, FleetNote::Lease), "request {i} from the lease");
    }
    assert_eq!(svc.calls, 1);
    assert!(run(&p, &mut t, &mut leases, &mut svc, T0, "k"));
    assert_eq!(svc.calls, 2, "spent: a new lease");

    // Unused units expire: 999 ms later the lease still serves, at 1000 ms it does not.
    assert!(run(&p, &mut t, &mut leases, &mut svc, T0 + 999_000, "k"));
    assert_eq!(svc.calls, 2);
    assert!(run(&p, &mut t, &mut leases, &mut svc, T0 + 1_000_000, "k"));
    assert_eq!(svc.calls, 3, "expired: a new lease");

    // A cost above K is asked for as is, leasing nothing.
    let c = asked(crate::fleet::start(
        p.fleet().unwrap(),
        check(&p, &mut t, T0, "/solo", &[("x-api-key", "big"), ("x-cost", "9")]),
        &mut leases,
        T0,
    ));
    assert_eq!((c.request.hits_addend, c.pending.lease), (9, false));
}

#[test]
fn a_refused_lease_asks_for_the_cost_unless_the_statuses_say_it_is_short() {
    let p = lease_policy(10, 1_000);
    let mut t = MemoryTable::new(64);
    let f = p.fleet().unwrap();
    let mut leases = Leases::default();
    let limit = Some((100, Unit::Second));
    // 3 units left: K refused, the cost (1) asked for next, and granted without a lease.
    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/solo", &[("x-api-key", "k")]), &mut leases, T0));
    let over = response(Code::OverLimit, vec![status(Code::OverLimit, limit, 3, 1)]);
    let again = asked(resume(&p, c.pending, FleetAnswer::Response(over), &mut leases, T0, &mut t));
    assert_eq!((again.request.hits_addend, again.pending.lease), (1, false));
    let ok = response(Code::Ok, vec![status(Code::Ok, limit, 2, 1)]);
    let (out, _) = done(resume(&p, again.pending, FleetAnswer::Response(ok), &mut leases, T0, &mut t));
    assert_eq!(out.reason, None);
    assert_eq!(leases.units(out.key.as_ref().unwrap().fingerprint, T0), 0, "no lease from a cost-only grant");
    // 0 units left: denied at once, no second call.
    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/solo", &[("x-api-key", "k")]), &mut leases, T0));
    let over = response(Code::OverLimit, vec![status(Code::OverLimit, limit, 0, 1)]);
    let (out, _) = done(resume(&p, c.pending, FleetAnswer::Response(over), &mut leases, T0, &mut t));
    assert_eq!(out.reason, Some(RateLimitReason::FleetLimited));
    // Refused: for T (100 ms, the limit's emission interval) the key is denied without a call.
    let (out, note) =
        done(crate::fleet::start(f, check(&p, &mut t, T0 + 99_999, "/solo", &[("x-api-key", "k")]), &mut leases, T0 + 99_999));
    assert_eq!((out.reason, note), (Some(RateLimitReason::FleetLimited), FleetNote::Refused));
    assert_eq!(out.violated.iter().map(|v| &**v).collect::<Vec<_>>(), ["shared"]);
    assert_eq!(header(&out, "retry-after"), Some("1"), "1 µs, rounded up to a second");
    assert_eq!(
        asked(crate::fleet::start(f, check(&p, &mut t, T0 + 100_000, "/solo", &[("x-api-key", "k")]), &mut leases, T0 + 100_000))
            .request
            .hits_addend,
        10,
        "then it asks again"
    );
    // A status without a limit says nothing: the cost is asked for.
    let c = asked(crate::fleet::start(f, check(&p, &mut t, T0, "/solo", &[("x-api-key", "k2")]), &mut leases, T0));
    let over = response(Code::OverLimit, vec![status(Code::OverLimit, None, 0, 1)]);
    assert_eq!(asked(resume(&p, c.pending, FleetAnswer::Response(over), &mut leases, T0, &mut t)).request.hits_addend, 1);
}

/// Three workers, each with its own leases and local table, take turns on one key: `n`
/// requests `gap_us` apart. Returns (admitted, service calls, units granted).
fn three_workers(p: &RateLimitPolicy, n: u64, gap_us: u64) -> (u64, usize, u64) {
    let mut svc = ContractService::new(p);
    let mut tables: Vec<MemoryTable> = (0..3).map(|_| MemoryTable::new(64)).collect();
    let mut leases: Vec<Leases> = (0..3).map(|_| Leases::default()).collect();
    let mut admitted = 0;
    for i in 0..n {
        let w = (i % 3) as usize;
        if run(p, &mut tables[w], &mut leases[w], &mut svc, T0 + i * gap_us, "shared-key") {
            admitted += 1;
        }
    }
    (admitted, svc.calls, svc.granted)
}

#[test]
fn lease_mode_never_admits_more_than_the_fleet_limit_under_overload() {
    // `solo`: 100 per 10 s (burst 100, one unit per 100 ms); 2,000 requests in 2 s.
    for (units, lease_ms) in [(10, 1_000), (7, 250), (2, 5_000)] {
        let (admitted, calls, granted) = three_workers(&lease_policy(units, lease_ms), 2_000, 1_000);
        // GCRA over 2 s: at most the burst plus one unit per 100 ms (the last at t = 1.999 s: 19).
        assert!(granted <= 119, "K={units}: the service granted {granted}");
        assert!(admitted <= granted, "K={units}: admitted {admitted} > granted {granted}");
        // What is lost is at most what the three workers hold at the end or let expire.
        let periods = 1 + 2_000 / lease_ms;
        assert!(granted - admitted <= 3 * u64::from(units) * periods, "K={units}: admitted {admitted} of {granted}");
        // A refusal is repeated without a call for T (100 ms) per worker: 105 to 145 calls for
        // 2,000 requests here (1,929 to 1,969 without), and no unit lost: all 119 admitted.
        assert!(calls <= 150, "K={units}: {calls} calls for 2000 requests");
        assert_eq!(admitted, 119, "K={units}");
    }
}

#[test]
fn lease_mode_costs_one_call_per_k_requests_per_worker_under_the_limit() {
    // 90 requests 100 ms apart (9 per second, under the 10 per second of `solo`).
    let (admitted, calls, granted) = three_workers(&lease_policy(10, 10_000), 90, 100_000);
    assert_eq!(admitted, 90, "all under the limit");
    assert_eq!(calls, 9, "three workers, 30 requests each, one call per 10");
    assert_eq!(granted, 90);
    // Without a lease: one call per request.
    let (admitted, calls, _) = three_workers(&policy(&doc(service())), 90, 100_000);
    assert_eq!((admitted, calls), (90, 90));
    // A lease shorter than a worker's gap between requests (300 ms) expires unspent: every
    // request asks for 10 and wastes 9, so the fleet bucket drains (100 units in the first 10
    // requests), then a refused lease is followed by a call for the cost: more calls than
    // requests. Still all admitted (under the limit), never more than granted.
    let (admitted, calls, granted) = three_workers(&lease_policy(10, 250), 30, 100_000);
    assert_eq!(admitted, 30);
    assert!(calls > 30 && granted >= 100, "calls {calls}, granted {granted}");
}

#[test]
fn lease_table_is_bounded_and_merges_conservatively() {
    let mut l = Leases::new(4);
    for k in 1..=10u64 {
        l.grant(k, 5, T0, T0 + k * S);
        assert!(l.len() <= 4, "bounded: {}", l.len());
    }
    assert_eq!(l.units(10, T0), 5, "the newest kept");
    assert_eq!(l.units(1, T0), 0, "the soonest-expiring evicted first");
    assert!(!l.spend(1, 1, T0));
    // Expired entries go first when full.
    let mut l = Leases::new(2);
    l.grant(1, 5, T0, T0 + S);
    l.grant(2, 5, T0, T0 + 10 * S);
    l.grant(3, 5, T0 + 2 * S, T0 + 3 * S);
    assert_eq!((l.units(2, T0 + 2 * S), l.units(3, T0 + 2 * S)), (5, 5));
    // A grant on unexpired units adds them and keeps the earlier expiry.
    let mut l = Leases::new(8);
    l.grant(1, 3, T0, T0 + S);
    l.grant(1, 4, T0 + S / 2, T0 + S / 2 + S);
    assert_eq!(l.units(1, T0 + S / 2), 7);
    assert_eq!(l.units(1, T0 + S), 0, "merged units expire with the first grant");
    assert!(l.spend(1, 0, T0) && !l.spend(1, 8, T0));
    // A refusal never drops units granted to a request of the key in flight at the same time.
    l.refuse(1, T0, T0 + S, 1);
    assert_eq!((l.units(1, T0), l.refused(1, T0)), (7, None));
    assert!(l.spend(1, 7, T0));
    l.refuse(1, T0, T0 + S / 10, 1);
    assert_eq!(l.refused(1, T0), Some(Refusal { until_us: T0 + S / 10, violated: 1 }));
    assert!(l.refused(1, T0 + S / 10).is_none(), "over at its end");
    l.grant(1, 4, T0, T0 + S);
    assert_eq!((l.units(1, T0), l.refused(1, T0)), (4, None), "a grant ends a refusal");
    // Nothing granted for zero units or a lease already over.
    l.grant(9, 0, T0, T0 + S);
    l.grant(10, 5, T0, T0);
    assert_eq!((l.units(9, T0), l.units(10, T0)), (0, 0));
}

#[test]
fn fleet_limits_lists_every_rule_s_fleet_limits_for_the_service() {
    let p = policy(&doc(service()));
    let names: Vec<String> = p.fleet_limits().into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["api/global", "api/daily", "tight/fleet", "solo/shared"]);
    let l = p.fleet_limits().into_iter().find(|l| l.name == "solo/shared").unwrap().limit;
    assert_eq!((l.rate, l.period_seconds, l.burst), (100, 10, 100));
}
