//! The built JWT module (target/wasm32-wasip1/release/gatewarden_jwt.wasm) driven through the
//! Wasm test host: inline keys (every fixture algorithm, 401/403 and `WWW-Authenticate`, headers
//! passed upstream, forged headers stripped, CORS preflight, dry run), remote JWKS fetched once
//! for all workers, `failure_mode`, key rotation and kid floods (bounded early refetches),
//! refused updates, the Kong profile, and hostile input.
//!
//! Tokens and keys: filters/jwt/policy/tests/fixtures/jwt (made by make_fixtures.py; claims iss
//! https://idp.example.com, aud api, sub user-1, iat 1700000000, exp 4102444800).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_wasm_host::{Host, HttpResponse, Module, Outcome, Profile, Request, Vm, VmOptions};
use serde_json::{json, Value};

const CLUSTER: &str = "jwks";
const KONG_UPSTREAM: &str = "idp.internal:8080";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const ISS: &str = "https://idp.example.com";
/// A little after the fixtures' iat.
const NOW: u64 = 1_700_000_100;
/// The fixtures' exp.
const EXP: u64 = 4_102_444_800;
const UNAUTHORIZED_BODY: &str = r#"{"error":"unauthorized","message":"authentication required"}"#;
const FORBIDDEN_BODY: &str = r#"{"error":"forbidden","message":"access denied by policy"}"#;

/// The release module (see `common::filter_module`), compiled once per test binary.
fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-jwt"))
}

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../../filters/jwt/policy/tests/fixtures/jwt/tokens.json")).unwrap()
}

fn jwks() -> Value {
    serde_json::from_str(include_str!("../../filters/jwt/policy/tests/fixtures/jwt/jwks.json")).unwrap()
}

/// The JWKS without the keys of these kids.
fn jwks_without(kids: &[&str]) -> Value {
    let mut j = jwks();
    j["keys"].as_array_mut().unwrap().retain(|k| !kids.contains(&k["kid"].as_str().unwrap_or("")));
    j
}

/// The fixture token named `name` (an algorithm: RS256, ES256, EdDSA …).
fn token(name: &str) -> String {
    let f = fixtures();
    let t = f["tokens"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("no fixture {name}"));
    t["token"].as_str().unwrap().to_string()
}

/// A token with the fixtures' claims and header `{"alg":"RS256","kid":kid}`; its signature is
/// junk (an unknown kid is found before any signature check).
fn token_with_kid(kid: &str) -> String {
    let payload = token("RS256").split('.').nth(1).unwrap().to_string();
    let header = common::b64url(json!({"alg": "RS256", "kid": kid}).to_string().as_bytes());
    format!("{header}.{payload}.{}", common::b64url(&[7; 256]))
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn host(profile: Profile) -> Host {
    let host = Host::new(profile);
    host.add_cluster(CLUSTER);
    host.set_time(at(NOW));
    host
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let mut vm = host.load_vm(module(), VmOptions::new("gatewarden_jwt").vm_id("gatewarden_jwt")).unwrap();
    assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "policy refused: {:#?}", host.logs());
    vm
}

fn provider(keys: Value) -> Value {
    let mut p = json!({
        "issuer": ISS,
        "audiences": ["api"],
        "forward_payload_header": "x-jwt-payload",
        "claim_to_headers": [{"claim": "sub", "header": "x-user"}]
    });
    p.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
    p
}

fn policy_with(provider: Value) -> Value {
    json!({
        "policy_version": "j1",
        "realm": "api",
        "providers": {"idp": provider},
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "requires": {"provider": "idp"}, "scopes": ["admin"]},
            {"name": "tenant", "match": {"path_prefix": "/tenant"}, "requires": {"provider": "idp"}, "claims": [{"name": "sub", "equals": "user-2"}]}
        ],
        "default": {"requires": {"provider": "idp"}}
    })
}

fn inline_policy() -> Value {
    policy_with(provider(json!({"local_jwks": jwks()})))
}

fn remote_policy(cluster: &str) -> Value {
    policy_with(provider(json!({"remote_jwks": {"cluster": cluster, "path": JWKS_PATH}})))
}

fn jwks_response(j: &Value) -> HttpResponse {
    HttpResponse::new(200).header("content-type", "application/json").body(j.to_string())
}

fn get(vm: &mut Vm, path: &str, token: Option<&str>) -> Outcome {
    let mut r = Request::get(path).source("10.0.0.1:5000").header("x-request-id", "req-1");
    if let Some(t) = token {
        r = r.header("authorization", &bearer(t));
    }
    vm.http_request(r).unwrap()
}

fn decision_lines(host: &Host) -> Vec<Value> {
    host.logs().iter().filter_map(|l| l.message.find("{\"gatewarden\"").map(|i| serde_json::from_str(&l.message[i..]).unwrap())).collect()
}

fn last_reason(host: &Host) -> String {
    decision_lines(host).pop().map(|l| l["reason"].as_str().unwrap().to_string()).unwrap_or_default()
}

/// Asserts a local denial and returns it.
fn assert_denied(out: &Outcome, status: u16, www_authenticate: Option<&str>, what: &str) {
    let local = out.local_response.as_ref().unwrap_or_else(|| panic!("{what}: not denied: {out:?}"));
    assert_eq!(local.status, status, "{what}");
    let body = if status == 403 { FORBIDDEN_BODY } else { UNAUTHORIZED_BODY };
    assert_eq!(local.body, body.as_bytes(), "{what}");
    assert_eq!(local.header("content-type"), Some("application/json"), "{what}");
    assert_eq!(local.header("www-authenticate"), www_authenticate, "{what}");
    assert!(out.upstream_request.is_none(), "{what}");
}

/// Ticks every VM, delivering callouts between, until `vms` VMs loaded a JWKS generation.
fn load_jwks(host: &Host, vms: u64) {
    for _ in 0..10 {
        host.tick().unwrap();
        host.deliver_pending_calls().unwrap();
        if host.metric_value("gatewarden_jwt_jwks_loaded") >= vms {
            return;
        }
        host.advance(Duration::from_millis(250));
    }
    panic!("JWKS not loaded by {vms} VMs; logs: {:#?}", host.logs());
}

#[test]
fn inline_jwks_every_fixture_algorithm_and_hostile_fixture() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &inline_policy());
    let f = fixtures();
    for t in f["tokens"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        host.clear_logs();
        let out = get(&mut vm, "/api", Some(t["token"].as_str().unwrap()));
        match t["expect"].as_str().unwrap() {
            "allow" => assert_eq!(out.status, 200, "{name}: {out:?} {:#?}", host.logs()),
            reason => {
                assert_denied(&out, 401, Some(r#"Bearer realm="api", error="invalid_token""#), name);
                assert_eq!(last_reason(&host), reason, "{name}");
            }
        }
    }
}

#[test]
fn inline_jwks_valid_expired_bad_signature_missing() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &inline_policy());
    let rs = token("RS256");

    host.clear_calls();
    let out = get(&mut vm, "/api", Some(&rs));
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        !host.calls().iter().any(|c| c.name == "proxy_get_property"),
        "an allowed JWT request does not read the peer address: {:?}",
        host.calls().iter().map(|c| c.name).collect::<Vec<_>>()
    );
    assert_eq!(out.upstream_header("x-gatewarden-jwt"), Some("allow; rule=default; version=j1"));
    assert_eq!(out.upstream_header("x-user"), Some("user-1"), "claim_to_headers");
    assert_eq!(out.upstream_header("x-jwt-payload"), rs.split('.').nth(1), "forward_payload_header: the base64url payload");
    assert_eq!(out.upstream_header("authorization"), None, "the token is not forwarded by default");

    // Missing: 401 without error=; the denial's log line reads the peer address (once).
    host.clear_calls();
    let out = get(&mut vm, "/api", None);
    assert_denied(&out, 401, Some(r#"Bearer realm="api""#), "missing");
    assert_eq!(host.calls().iter().filter(|c| c.name == "proxy_get_property").count(), 1);
    let line = decision_lines(&host).pop().unwrap();
    assert_eq!(
        (line["reason"].as_str(), line["rule"].as_str(), line["policy_version"].as_str()),
        (Some("missing"), Some("default"), Some("j1"))
    );
    assert_eq!((line["client"].as_str(), line["request_id"].as_str()), (Some("10.0.0.1"), Some("req-1")));
    assert!(!host.logs().iter().any(|l| l.message.contains(&rs)), "a token is never logged");

    // Bad signature: one signature character changed.
    let mut parts: Vec<String> = rs.split('.').map(str::to_string).collect();
    let sig = parts[2].clone().into_bytes();
    let mut flipped = sig.clone();
    flipped[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(flipped).unwrap();
    let out = get(&mut vm, "/api", Some(&parts.join(".")));
    assert_denied(&out, 401, Some(r#"Bearer realm="api", error="invalid_token""#), "bad signature");
    assert_eq!(last_reason(&host), "bad_signature");

    // Expired: the clock at exp + skew (60 s). The token is cached from the first request: the
    // cache never serves a token past its exp.
    host.set_time(at(EXP + 60));
    let out = get(&mut vm, "/api", Some(&rs));
    assert_denied(&out, 401, Some(r#"Bearer realm="api", error="invalid_token""#), "expired");
    assert_eq!(last_reason(&host), "expired");
    host.set_time(at(EXP + 59));
    assert_eq!(get(&mut vm, "/api", Some(&rs)).status, 200, "still within the clock skew");

    vm.tick().unwrap(); // tallied counters reach the host on the tick
    assert_eq!(host.metric_value("gatewarden_jwt_denied_missing"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_denied_bad_signature"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_denied_expired"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_allowed"), 2);
}

#[test]
fn forbidden_on_scope_and_claim_failures() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &inline_policy());
    let es = token("ES256");
    let out = get(&mut vm, "/admin", Some(&es));
    assert_denied(&out, 403, Some(r#"Bearer realm="api", error="insufficient_scope""#), "scope");
    assert_eq!(last_reason(&host), "scope");
    let out = get(&mut vm, "/tenant", Some(&es));
    assert_eq!(out.local_response.as_ref().map(|l| l.status), Some(403), "{out:?}");
    assert_eq!(out.local_response.as_ref().unwrap().body, FORBIDDEN_BODY.as_bytes());
    assert_eq!(last_reason(&host), "claim");
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    assert_eq!(host.metric_value("gatewarden_jwt_denied_scope"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_denied_claim"), 1);
}

#[test]
fn forged_output_headers_are_stripped_and_preflight_passes() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &inline_policy());
    let forged = |path: &str, token: Option<&str>| {
        let mut r = Request::get(path)
            .source("10.0.0.1:5000")
            .header("x-user", "admin")
            .header("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9")
            .header("x-gatewarden-jwt", "allow; spoofed");
        if let Some(t) = token {
            r = r.header("authorization", &bearer(t));
        }
        r
    };
    // A route without requirements: the forged headers go, the decision header is ours.
    let out = vm.http_request(forged("/public/x", None)).unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_header("x-user"), None);
    assert_eq!(out.upstream_header("x-jwt-payload"), None);
    assert_eq!(out.upstream_header("x-gatewarden-jwt"), Some("allow; rule=public; version=j1"));
    // With a valid token: the verified values replace the forged ones.
    let rs = token("EdDSA");
    let out = vm.http_request(forged("/api", Some(&rs))).unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_header("x-user"), Some("user-1"));
    assert_eq!(out.upstream_header("x-jwt-payload"), rs.split('.').nth(1));
    let up = out.upstream_request.as_ref().unwrap();
    assert_eq!(up.headers.iter().filter(|(k, _)| k == "x-user").count(), 1, "one x-user: {:?}", up.headers);

    // CORS preflight passes without a token; a plain OPTIONS does not.
    let pre = Request::new("OPTIONS", "/api")
        .source("10.0.0.1:5000")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST");
    assert_eq!(vm.http_request(pre).unwrap().status, 200);
    let plain = Request::new("OPTIONS", "/api").source("10.0.0.1:5000");
    assert_eq!(vm.http_request(plain).unwrap().status, 401);
}

#[test]
fn dry_run_lets_requests_through_and_strips_forgeries() {
    let host = host(Profile::Envoy);
    let mut policy = inline_policy();
    policy["mode"] = json!("dry_run");
    let mut vm = vm(&host, &policy);
    let r = Request::get("/api").source("10.0.0.1:5000").header("x-user", "admin");
    let out = vm.http_request(r).unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_header("x-gatewarden-jwt"), Some("dry_run_deny; reason=missing; rule=default; version=j1"));
    assert_eq!(out.upstream_header("x-user"), None, "forged header stripped in dry run too");
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    assert_eq!(host.metric_value("gatewarden_jwt_dry_run_denied_missing"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_denied"), 0);
}

#[test]
fn remote_jwks_is_fetched_once_for_every_worker() {
    let host = host(Profile::Envoy);
    // A key with bad parameters is skipped (and logged), not fatal to the set.
    let mut set = jwks();
    set["keys"].as_array_mut().unwrap().push(json!({"kty": "RSA", "kid": "weak", "n": "AQAB", "e": "AQAB"}));
    host.script_http_response(CLUSTER, JWKS_PATH, jwks_response(&set));
    let mut vms: Vec<Vm> = (0..3).map(|_| vm(&host, &remote_policy(CLUSTER))).collect();
    load_jwks(&host, 3);
    assert!(host.logs().iter().any(|l| l.message.contains(r#"keys[6] (kid "weak") skipped"#)), "{:#?}", host.logs());
    assert_eq!(host.http_calls().len(), 1, "one fetch for three workers: {:?}", host.http_calls());
    let call = &host.http_calls()[0];
    assert_eq!((call.upstream.as_str(), call.path()), (CLUSTER, JWKS_PATH));
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_succeeded"), 1);
    for vm in &mut vms {
        assert_eq!(get(vm, "/api", Some(&token("ES256"))).status, 200);
        assert_eq!(get(vm, "/api", Some(&token("RS256"))).status, 200);
    }
    // Not refreshed before cache_duration_seconds (default 600), then once.
    host.advance(Duration::from_secs(300));
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 1);
    host.advance(Duration::from_secs(301));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 2, "refreshed after cache_duration_seconds");
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_succeeded"), 2);
}

#[test]
fn jwks_endpoint_failing_follows_failure_mode() {
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(503).body("down"));
    let mut worker = vm(&host, &remote_policy(CLUSTER));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_failed"), 1);
    let out = get(&mut worker, "/api", Some(&token("RS256")));
    assert_denied(&out, 401, Some(r#"Bearer realm="api""#), "jwks unavailable");
    assert_eq!(last_reason(&host), "jwks_unavailable");
    assert_eq!(get(&mut worker, "/public", None).status, 200, "routes without requirements work");

    // An invalid JWKS is refused like a failed fetch; then the endpoint recovers after retry_seconds.
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(200).body(r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#));
    host.advance(Duration::from_secs(11));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_failed"), 2);
    assert!(host.logs().iter().any(|l| l.message.contains("invalid content: no usable key")), "{:#?}", host.logs());
    host.script_http_response(CLUSTER, JWKS_PATH, jwks_response(&jwks()));
    host.advance(Duration::from_secs(11));
    load_jwks(&host, 1);
    assert_eq!(get(&mut worker, "/api", Some(&token("RS256"))).status, 200);

    // failure_mode allow: the requirement passes while no key set is loaded.
    let host2 = self::host(Profile::Envoy);
    host2.script_http_failure(CLUSTER, JWKS_PATH);
    let mut policy = remote_policy(CLUSTER);
    policy["failure_mode"] = json!("allow");
    let mut vm2 = vm(&host2, &policy);
    host2.tick().unwrap();
    host2.deliver_pending_calls().unwrap();
    assert_eq!(host2.metric_value("gatewarden_jwt_jwks_fetch_failed"), 1);
    let out = get(&mut vm2, "/api", Some(&token("RS256")));
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.upstream_header("x-gatewarden-jwt"), Some("allow; rule=default; version=j1"));
}

#[test]
fn key_rotation_refetches_once_then_accepts_the_new_kid() {
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, JWKS_PATH, jwks_response(&jwks_without(&["ec256"])));
    let mut vms: Vec<Vm> = (0..3).map(|_| vm(&host, &remote_policy(CLUSTER))).collect();
    load_jwks(&host, 3);
    assert_eq!(host.http_calls().len(), 1);
    let es = token("ES256");
    let rs = token("RS256");
    assert_eq!(get(&mut vms[0], "/api", Some(&rs)).status, 200, "warm the token cache");

    // The issuer rotates in ec256: the first request fails with unknown_kid and asks for keys.
    host.script_http_response(CLUSTER, JWKS_PATH, jwks_response(&jwks()));
    host.advance(Duration::from_secs(1));
    for vm in &mut vms {
        assert_eq!(get(vm, "/api", Some(&es)).status, 401);
    }
    assert_eq!(last_reason(&host), "unknown_kid");
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 2, "exactly one early refetch for three workers: {:?}", host.http_calls());
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_early"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_loaded"), 6, "every worker loaded the new set");
    for vm in &mut vms {
        assert_eq!(get(vm, "/api", Some(&es)).status, 200, "the new kid is accepted");
        assert_eq!(get(vm, "/api", Some(&rs)).status, 200);
    }

    // The key of rsa1 is withdrawn: a cached token of it stops validating once the set changes.
    host.script_http_response(CLUSTER, JWKS_PATH, jwks_response(&jwks_without(&["rsa1"])));
    host.advance(Duration::from_secs(601));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 3);
    assert_eq!(get(&mut vms[0], "/api", Some(&rs)).status, 401, "cache cleared on the key set change");
    assert_eq!(last_reason(&host), "unknown_kid");
}

#[test]
fn kid_flood_costs_at_most_one_refetch_per_interval() {
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, JWKS_PATH, jwks_response(&jwks()));
    let mut policy = remote_policy(CLUSTER);
    policy["providers"]["idp"]["remote_jwks"]["unknown_kid_refetch_seconds"] = json!(30);
    let mut vms: Vec<Vm> = (0..3).map(|_| vm(&host, &policy)).collect();
    load_jwks(&host, 3);
    assert_eq!(host.http_calls().len(), 1);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut flood = |vms: &mut Vec<Vm>, host: &Host| {
        for i in 0..100 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let out = get(&mut vms[i % 3], "/api", Some(&token_with_kid(&format!("{seed:x}"))));
            assert_eq!(out.status, 401);
            if i % 10 == 9 {
                host.tick().unwrap();
                host.deliver_pending_calls().unwrap();
                host.advance(Duration::from_millis(200));
            }
        }
    };
    flood(&mut vms, &host);
    assert_eq!(last_reason(&host), "unknown_kid");
    assert_eq!(host.http_calls().len(), 2, "one early refetch for 100 unknown kids on 3 workers");
    // Still within the interval (about 5 s have passed): nothing more.
    host.advance(Duration::from_secs(20));
    flood(&mut vms, &host);
    assert_eq!(host.http_calls().len(), 2, "no second refetch within unknown_kid_refetch_seconds");
    // After the interval: one more.
    host.advance(Duration::from_secs(10));
    flood(&mut vms, &host);
    assert_eq!(host.http_calls().len(), 3);
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_early"), 2);
    assert_eq!(get(&mut vms[0], "/api", Some(&token("RS256"))).status, 200, "real tokens still pass");
}

/// Envoy keeps the last good policy; on Kong a policy change is a reload (a new VM), where the
/// filter accepts the VM and fails its own requests closed (a refused VM stops every route).
#[test]
fn refused_policy_keeps_the_old_one_on_envoy_and_fails_closed_on_kong() {
    let mut bad = inline_policy();
    bad["policy_version"] = json!("j2");
    bad["default"] = json!({"requires": {"provider": "nobody"}});
    let bad = bad.to_string();

    let envoy = host(Profile::Envoy);
    let mut vm = vm(&envoy, &inline_policy());
    assert!(!vm.configure(bad.as_bytes()).unwrap(), "bad policy accepted on Envoy");
    let err = envoy.logs().into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(err.message.contains("nobody"), "{}", err.message);
    assert_eq!(envoy.metric_value("gatewarden_jwt_config_rejected"), 1);
    let ok = get(&mut vm, "/api", Some(&token("RS256")));
    let missing = get(&mut vm, "/api", None);
    assert_eq!((ok.status, missing.status), (200, 401), "Envoy keeps serving j1");
    assert_eq!(ok.upstream_header("x-gatewarden-jwt"), Some("allow; rule=default; version=j1"));

    let kong = host(Profile::Kong);
    let mut vm = kong.load_vm(module(), VmOptions::new("gatewarden_jwt").vm_id("gatewarden_jwt")).unwrap();
    assert!(vm.configure(bad.as_bytes()).unwrap(), "Kong: the VM is accepted");
    let err = kong.logs().into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(err.message.contains("nobody") && err.message.contains("denied with 503"), "{}", err.message);
    let ok = get(&mut vm, "/api", Some(&token("RS256")));
    let missing = get(&mut vm, "/api", None);
    assert_eq!((ok.status, missing.status), (503, 503), "Kong fails this filter's requests closed");
    kong.tick().unwrap();
    assert_eq!(kong.metric_value("gatewarden_jwt_config_rejected"), 1);
    assert_eq!(kong.metric_value("gatewarden_jwt_no_policy"), 2);
}

#[test]
fn kong_profile_fetches_from_host_port() {
    let host = Host::new(Profile::Kong);
    host.set_time(at(NOW));
    host.script_http_response(KONG_UPSTREAM, JWKS_PATH, jwks_response(&jwks_without(&["ed1"])));
    let mut vms: Vec<Vm> = (0..2).map(|_| vm(&host, &remote_policy(KONG_UPSTREAM))).collect();
    load_jwks(&host, 2);
    assert_eq!(host.http_calls().len(), 1);
    assert_eq!(host.http_calls()[0].upstream, KONG_UPSTREAM);
    for vm in &mut vms {
        assert_eq!(get(vm, "/api", Some(&token("PS256"))).status, 200);
        assert_eq!(get(vm, "/api", Some(&token("EdDSA"))).status, 401);
    }
    // Rotation on Kong: the early refetch overwrites shared data with the current CAS.
    host.script_http_response(KONG_UPSTREAM, JWKS_PATH, jwks_response(&jwks()));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 2, "{:#?}", host.logs());
    for vm in &mut vms {
        assert_eq!(get(vm, "/api", Some(&token("EdDSA"))).status, 200);
    }
}

#[test]
fn hostile_inputs_never_trap_the_vm() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &inline_policy());
    let long = "A".repeat(100_000);
    let rs = token("RS256");
    let payload = rs.split('.').nth(1).unwrap();
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let hostile: Vec<String> = vec![
        String::new(),
        long.clone(),
        format!("{long}.{long}.{long}"),
        ".".repeat(10_000),
        "a.b.c".into(),
        "\u{0}\u{ff}.\u{1}.x".into(),
        format!("{}.{payload}.AAAA", common::b64url(nested.as_bytes())),
        format!("{}.{payload}.AAAA", common::b64url(br#"{"alg":"RS256","kid":"rsa1","crit":["x"]}"#)),
        format!("{}.{}.AAAA", common::b64url(br#"{"alg":"ES256","kid":"ec256"}"#), common::b64url(nested.as_bytes())),
        format!("{}.{}.{}", common::b64url(br#"{"alg":"ES256","kid":"ec256"}"#), payload, common::b64url(&[0xff; 64])),
        format!("{}.{}.{}", common::b64url(br#"{"alg":"EdDSA","kid":"ed1"}"#), payload, common::b64url(&[0; 3])),
    ];
    for t in &hostile {
        for path in ["/api", "/admin?access_token=x", "/api?access_token=%ff%00"] {
            let out = get(&mut vm, path, Some(t));
            assert!(!out.trapped(), "trapped on token {t:.40}");
            assert_eq!(out.status, 401, "token {t:.40}");
        }
    }
    // Many headers: 431 before any token is looked at.
    let mut r = Request::get("/api").source("10.0.0.1:1");
    for i in 0..300 {
        r = r.header(&format!("x-h{i}"), "v");
    }
    let out = vm.http_request(r).unwrap();
    assert!(!out.trapped());
    assert_eq!(out.status, 431);
    // Odd peers and cookies.
    for peer in ["garbage", "", "[::1"] {
        let r = Request::get("/api").source(peer).header("cookie", &format!("a={long}; ;;=;")).header("authorization", "Bearer");
        let out = vm.http_request(r).unwrap();
        assert!(!out.trapped());
        assert_eq!(out.status, 401);
    }
    for config in [
        "",
        "{",
        "null",
        "[]",
        &format!("{{\"policy_version\":\"{long}\"}}"),
        r#"{"policy_version":"v","providers":{"p":{"issuer":"i","local_jwks":{"keys":[]}}}}"#,
    ] {
        assert!(!vm.configure(config.as_bytes()).unwrap(), "accepted {config:.40}");
        assert!(!vm.is_failed(), "trapped on config {config:.40}");
    }
    assert_eq!(get(&mut vm, "/api", Some(&rs)).status, 200, "still serving the first policy");
}

/// Under `requires_any: [other, idp]`, an expired idp token is logged and counted as `expired`
/// (idp's reason), not as the first alternative's `issuer`; the log's client is the one the
/// policy's `client_address` resolves, and a malformed `x-forwarded-for` changes no decision.
#[test]
fn decision_log_has_the_token_s_own_reason_and_the_resolved_client() {
    let host = host(Profile::Envoy);
    let mut policy = inline_policy();
    policy["client_address"] = json!({"xff_num_trusted_hops": 1});
    policy["providers"]["other"] = json!({"issuer": "https://other.example.com", "local_jwks": jwks()});
    policy["default"] = json!({"requires": {"requires_any": [{"provider": "other"}, {"provider": "idp"}]}});
    let mut vm = vm(&host, &policy);
    let rs = token("RS256");
    let request = |xff: &str, token: Option<&str>| {
        let mut r = Request::get("/api").source("10.0.0.1:5000").header("x-request-id", "req-9").header("x-forwarded-for", xff);
        if let Some(t) = token {
            r = r.header("authorization", &bearer(t));
        }
        r
    };

    host.set_time(at(EXP + 60));
    let out = vm.http_request(request("6.6.6.6, 203.0.113.9", Some(&rs))).unwrap();
    assert_denied(&out, 401, Some(r#"Bearer realm="api", error="invalid_token""#), "expired");
    let line = decision_lines(&host).pop().unwrap();
    assert_eq!((line["reason"].as_str(), line["client"].as_str()), (Some("expired"), Some("203.0.113.9")), "{line}");
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    assert_eq!(host.metric_value("gatewarden_jwt_denied_expired"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_denied_issuer"), 0);

    // A malformed x-forwarded-for: authentication is unchanged, the client is unknown.
    host.set_time(at(NOW));
    let out = vm.http_request(request("10.9.9.9, bogus", Some(&rs))).unwrap();
    assert_eq!(out.status, 200, "{out:?} {:#?}", host.logs());
    let out = vm.http_request(request("10.9.9.9, bogus", None)).unwrap();
    assert_denied(&out, 401, Some(r#"Bearer realm="api""#), "missing");
    let line = decision_lines(&host).pop().unwrap();
    assert_eq!(
        (line["reason"].as_str(), line["client"].as_str(), line["detail"].as_str()),
        (Some("missing"), Some(""), Some("client_address=malformed_forwarded_for; peer=10.0.0.1")),
        "{line}"
    );
}

/// A verified token is cut from the query and from every `cookie` header (HTTP/2 sends one per
/// cookie): the glue removes every cookie header, then sets what is left as one.
#[test]
fn the_token_is_cut_from_the_query_and_every_cookie_header() {
    cut_from_query_and_cookies(Profile::Envoy);
}

/// On Kong a header sent several times cannot be cleaned (the engine forwards the copies it marks
/// deleted), so the request fails closed; one cookie header is cut as on Envoy.
#[test]
fn on_kong_a_token_in_one_of_several_cookie_headers_fails_closed() {
    let host = host(Profile::Kong);
    let mut p = provider(json!({"local_jwks": jwks()}));
    p["from_cookies"] = json!(["session"]);
    let mut vm = vm(&host, &policy_with(p));
    let rs = token("RS256");
    let several = Request::get("/api").source("10.0.0.1:5000").header("cookie", "theme=dark").header("cookie", &format!("session={rs}"));
    let out = vm.http_request(several).unwrap();
    assert_eq!(out.status, 503, "{out:?}");
    assert_eq!(out.upstream_request, None);
    assert!(host.logs().iter().any(|l| l.message.contains(r#"header "cookie" was sent more than once"#)), "{:#?}", host.logs());
    let one = Request::get("/api").source("10.0.0.1:5000").header("cookie", &format!("theme=dark; session={rs}; lang=en"));
    let out = vm.http_request(one).unwrap();
    assert_eq!(out.status, 200, "{:#?}", host.logs());
    assert_eq!(out.upstream_header("cookie"), Some("theme=dark; lang=en"));
    host.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_host_error"), 1);
}

fn cut_from_query_and_cookies(profile: Profile) {
    let host = host(profile);
    let mut p = provider(json!({"local_jwks": jwks()}));
    p["from_headers"] = json!([{"name": "authorization", "value_prefix": "Bearer "}]);
    p["from_params"] = json!(["access_token"]);
    p["from_cookies"] = json!(["session"]);
    let mut vm = vm(&host, &policy_with(p));
    let rs = token("RS256");
    let r = Request::get(&format!("/api?x=1&access_token={rs}"))
        .source("10.0.0.1:5000")
        .header("cookie", "theme=dark")
        .header("cookie", &format!("session={rs}"))
        .header("cookie", "lang=en");
    let out = vm.http_request(r).unwrap();
    assert_eq!(out.status, 200, "{out:?} {:#?}", host.logs());
    let up = out.upstream_request.as_ref().unwrap();
    assert_eq!(out.upstream_header(":path"), Some("/api?x=1"));
    let cookies: Vec<&str> = up.headers.iter().filter(|(k, _)| k == "cookie").map(|(_, v)| v.as_str()).collect();
    assert_eq!(cookies, vec!["theme=dark; lang=en"]);
    assert!(!up.headers.iter().any(|(_, v)| v.contains(&rs)), "{:?}", up.headers);
    assert_eq!(out.upstream_header("x-user"), Some("user-1"));
}

/// `provider_and_audiences` through the module: the requirement's audiences replace the
/// provider's, the copy verifies with the provider's remote key set, and it fetches nothing of
/// its own (one fetch, for the provider).
#[test]
fn provider_and_audiences_uses_the_provider_s_keys_with_other_audiences() {
    for (profile, upstream) in [(Profile::Envoy, CLUSTER), (Profile::Kong, KONG_UPSTREAM)] {
        let host = host(profile);
        if profile == Profile::Kong {
            host.add_cluster(KONG_UPSTREAM);
        }
        host.script_http_response(upstream, JWKS_PATH, jwks_response(&jwks()));
        let mut policy = remote_policy(upstream);
        let pa = |auds: Value| json!({"provider_and_audiences": {"provider": "idp", "audiences": auds}});
        policy["rules"].as_array_mut().unwrap().splice(
            0..0,
            [
                json!({"name": "billing", "match": {"path_prefix": "/billing"}, "requires": pa(json!(["billing"]))}),
                json!({"name": "api-too", "match": {"path_prefix": "/api-too"}, "requires": pa(json!(["billing", "api"]))}),
            ],
        );
        let mut vm = vm(&host, &policy);
        load_jwks(&host, 1);
        let es = token("ES256"); // aud "api"
        assert_eq!(get(&mut vm, "/api-too", Some(&es)).status, 200, "{profile:?}");
        assert_eq!(get(&mut vm, "/other", Some(&es)).status, 200, "{profile:?}: the provider's own audiences elsewhere");
        let out = get(&mut vm, "/billing", Some(&es));
        assert_denied(&out, 403, None, "billing audience");
        assert_eq!(last_reason(&host), "audience");
        assert_eq!(host.http_calls().len(), 1, "{profile:?}: {:?}", host.http_calls());
    }
}

/// Kong's engine forwards a request header the module removed (nginx's proxy_pass ignores the
/// deleted mark): the glue empties a header before removing it there, so neither the token nor a
/// client's forged claim header reaches the upstream with its value.
#[test]
fn on_kong_a_stripped_token_and_a_forged_claim_header_reach_the_upstream_empty() {
    for profile in [Profile::Envoy, Profile::Kong] {
        let host = host(profile);
        let mut vm = vm(&host, &inline_policy());
        let r = Request::get("/api")
            .source("10.0.0.1:5000")
            .header("authorization", &bearer(&token("RS256")))
            .header("x-jwt-payload", "forged");
        let out = vm.http_request(r).unwrap();
        assert_eq!(out.status, 200, "{profile:?}");
        let expected = match profile {
            Profile::Envoy => None,
            Profile::Kong => Some(""),
        };
        assert_eq!(out.upstream_header("authorization"), expected, "{profile:?}: token stripped");
        let payload: Vec<&str> =
            out.upstream_request.as_ref().unwrap().headers.iter().filter(|(k, _)| k == "x-jwt-payload").map(|(_, v)| v.as_str()).collect();
        assert!(!payload.contains(&"forged"), "{profile:?}: forged header forwarded: {payload:?}");
    }
}

/// On Kong nginx's proxy_pass sends the original URI, so a token cannot be cut from the query
/// there: such a request fails closed (the token never reaches the upstream); a header token works.
#[test]
fn on_kong_a_token_in_the_query_fails_closed() {
    let host = host(Profile::Kong);
    let mut p = provider(json!({"local_jwks": jwks()}));
    p["from_headers"] = json!([{"name": "authorization", "value_prefix": "Bearer "}]);
    p["from_params"] = json!(["access_token"]);
    let mut vm = vm(&host, &policy_with(p));
    let rs = token("RS256");
    let out = vm.http_request(Request::get(&format!("/api?x=1&access_token={rs}")).source("10.0.0.1:5000")).unwrap();
    assert_eq!(out.status, 503, "{out:?}");
    assert_eq!(out.upstream_request, None);
    assert!(host.logs().iter().any(|l| l.message.contains("must rewrite :path")), "{:#?}", host.logs());
    let out = vm.http_request(Request::get("/api?x=1").source("10.0.0.1:5000").header("authorization", &bearer(&rs))).unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_header(":path"), Some("/api?x=1"));
}
