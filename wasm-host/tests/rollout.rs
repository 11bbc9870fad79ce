//! Safe rollout and approvals through the built IP/geo module: a canary assigns the clients the
//! native code assigns and counts each decision with its version, a shadow candidate is counted
//! and logged where it disagrees but never enforced, and signed policies are checked against the
//! trust settings of the VM configuration (Envoy keeps the old policy on a refused update, Kong
//! fails requests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;

use ed25519_compact::{KeyPair, Seed};
use gatewarden_ip_geo_policy::IpGeoPolicy;
use gatewarden_policy::approvals::{encode_b64, signing_message};
use gatewarden_policy::rollout::Role;
use gatewarden_policy::{compile_set, RequestFacts};
use gatewarden_wasm_host::{Host, Module, Outcome, Profile, Request, Vm, VmOptions};
use serde_json::{json, Value};

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-ip-geo"))
}

fn load(host: &Host, vm_config: &str) -> Vm {
    host.load_vm(module(), VmOptions::new("gatewarden_ip_geo").vm_id("gatewarden_ip_geo").vm_config(vm_config)).unwrap()
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let mut vm = load(host, "");
    assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "policy refused: {:#?}", host.logs());
    vm
}

fn from(vm: &mut Vm, client: &str) -> Outcome {
    let r = Request::get("/api").source("10.0.0.1:5000").header("x-forwarded-for", client).header("x-request-id", "req-7");
    vm.http_request(r).unwrap()
}

fn json_lines(host: &Host, kind: &str) -> Vec<Value> {
    let tag = format!("{{\"gatewarden\":\"{kind}\"");
    host.logs().iter().filter_map(|l| l.message.find(&tag).map(|i| serde_json::from_str(&l.message[i..]).unwrap())).collect()
}

/// Active v1 allows everything; candidate v2 denies everything: a 403 means "the candidate decided".
fn canary(percent: f64) -> Value {
    json!({
        "policy_version": "v1",
        "client_address": {"xff_num_trusted_hops": 1},
        "default": {},
        "rollout": {"percent": percent, "candidate": {"policy_version": "v2", "default": {"deny": ["0.0.0.0/0", "::/0"]}}}
    })
}

fn client(i: u32) -> String {
    format!("100.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)
}

#[test]
fn canary_assigns_the_clients_the_native_code_assigns() {
    let host = Host::new(Profile::Envoy);
    let policy = canary(10.0);
    let mut vm = vm(&host, &policy);
    let native = compile_set::<IpGeoPolicy>(policy.to_string().as_bytes()).unwrap();
    let rollout = native.rollout.as_ref().unwrap();
    let n = 1000u32;
    let mut on_candidate = 0u64;
    for i in 0..n {
        let ip = client(i);
        let out = from(&mut vm, &ip);
        let headers = vec![("x-forwarded-for".to_string(), ip.clone())];
        let expected = rollout.assign(native.header(), &RequestFacts::new(&headers, Some("10.0.0.1:5000")));
        match out.status {
            403 => {
                on_candidate += 1;
                assert_eq!(expected, Role::Candidate, "{ip}");
            }
            200 => {
                assert_eq!(expected, Role::Active, "{ip}");
                assert_eq!(out.upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=v1"));
            }
            other => panic!("{ip}: status {other}"),
        }
        // One client, one policy.
        assert_eq!(from(&mut vm, &ip).status, out.status, "{ip} changed policy");
    }
    // Binomial(1000, 0.1): sd ≈ 9.5; 5 sd either side.
    assert!((52..=148).contains(&on_candidate), "{on_candidate} of {n} on the candidate");
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    let m = |name: &str| host.metric_value(&format!("gatewarden_ip_geo_{name}"));
    assert_eq!(m("rollout_candidate"), 2 * on_candidate);
    assert_eq!(m("rollout_active"), 2 * (u64::from(n) - on_candidate));
    assert_eq!(m("candidate_denied"), 2 * on_candidate);
    assert_eq!(m("denied"), 2 * on_candidate, "totals include the candidate's decisions");
    assert_eq!(m("allowed"), m("rollout_active"));
    assert_eq!(m("candidate_allowed"), 0);
    let line = &json_lines(&host, "decision")[0];
    assert_eq!((line["policy_version"].as_str(), line["rollout"].as_str()), (Some("v2"), Some("candidate")), "{line}");
    assert_eq!(line["request_id"], "req-7");
}

#[test]
fn shadow_counts_and_logs_disagreements_and_enforces_only_the_active_policy() {
    let host = Host::new(Profile::Envoy);
    let policy = json!({
        "policy_version": "v1",
        "client_address": {"xff_num_trusted_hops": 1},
        "default": {"deny": ["192.0.2.0/24"]},
        "rollout": {"shadow": true, "candidate": {
            "policy_version": "v2",
            "client_address": {"xff_num_trusted_hops": 1},
            "default": {"deny": ["198.51.100.0/24", "192.0.2.0/24"]}
        }}
    });
    let mut vm = vm(&host, &policy);
    host.clear_logs();
    assert_eq!(from(&mut vm, "192.0.2.1").status, 403, "both deny: agree");
    assert_eq!(from(&mut vm, "198.51.100.7").status, 200, "only the shadow denies: not enforced");
    assert_eq!(from(&mut vm, "203.0.113.1").status, 200, "both allow");
    let out = from(&mut vm, "198.51.100.8");
    assert_eq!(out.upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=v1"));
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    let m = |name: &str| host.metric_value(&format!("gatewarden_ip_geo_{name}"));
    assert_eq!((m("shadow_agreed"), m("shadow_disagreed")), (2, 2));
    assert_eq!((m("allowed"), m("denied"), m("candidate_denied"), m("rollout_candidate")), (3, 1, 0, 0));
    let lines = json_lines(&host, "shadow_disagreement");
    assert_eq!(lines.len(), 2, "one line per disagreement: {lines:#?}");
    assert_eq!(lines[0]["active"], "allow");
    assert_eq!(lines[0]["active_version"], "v1");
    assert_eq!(lines[0]["candidate"], "deny:ip_denied:403");
    assert_eq!(lines[0]["candidate_version"], "v2");
    assert_eq!(lines[0]["client"], "198.51.100.7");
    assert_eq!(lines[0]["request_id"], "req-7");
}

#[test]
fn a_policy_without_rollout_makes_no_rollout_counts() {
    let host = Host::new(Profile::Envoy);
    let mut vm = vm(&host, &json!({"policy_version": "v1", "default": {}}));
    host.clear_calls();
    assert_eq!(vm.http_request(Request::get("/").source("192.0.2.1:1")).unwrap().status, 200);
    // The host calls of an allowed request, as before rollouts existed: the peer address and
    // the decision header (the allowed counter is tallied and flushed on the tick).
    let calls: Vec<&str> = host.calls().iter().map(|c| c.name).collect();
    assert_eq!(calls, ["proxy_get_property", "proxy_replace_header_map_value"]);
    assert_eq!(host.metric_value("gatewarden_ip_geo_allowed"), 0, "not before the tick");
    // A policy without fetches still ticks, every second, to flush.
    assert_eq!(vm.tick_periods().values().copied().collect::<Vec<u32>>(), [1000]);
    vm.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_ip_geo_allowed"), 1);
    for name in ["rollout_active", "rollout_candidate", "shadow_agreed", "shadow_disagreed"] {
        assert_eq!(host.metric_value(&format!("gatewarden_ip_geo_{name}")), 0, "{name}");
    }
}

fn keypair(n: u8) -> KeyPair {
    KeyPair::from_seed(Seed::new([n; 32]))
}

fn trust_config(required: u32) -> String {
    json!({
        "trusted_signers": [
            {"key_id": "alice", "public_key": encode_b64(keypair(1).pk.as_ref())},
            {"key_id": "bob", "public_key": encode_b64(keypair(2).pk.as_ref())},
        ],
        "required_signatures": required,
    })
    .to_string()
}

fn signed(mut doc: Value, signers: &[(&str, u8)]) -> Value {
    let msg = signing_message(&doc).unwrap();
    let sigs: Vec<Value> =
        signers.iter().map(|(id, n)| json!({"key_id": id, "sig": encode_b64(keypair(*n).sk.sign(&msg, None).as_ref())})).collect();
    doc["signatures"] = json!(sigs);
    doc
}

fn allow_all(version: &str) -> Value {
    json!({"policy_version": version, "client_address": {"xff_num_trusted_hops": 1}, "default": {"deny": ["192.0.2.0/24"]}})
}

#[test]
fn tampered_signed_policy_is_refused_and_envoy_keeps_the_old_one() {
    {
        let profile = Profile::Envoy;
        let host = Host::new(profile);
        let mut vm = load(&host, &trust_config(2));
        let v1 = signed(allow_all("v1"), &[("alice", 1), ("bob", 2)]);
        assert!(vm.configure(v1.to_string().as_bytes()).unwrap(), "{:#?}", host.logs());
        assert_eq!(from(&mut vm, "203.0.113.1").status, 200);

        // An attacker who can push policy widens nothing: v2 signed, then the deny list emptied.
        let mut tampered = signed(allow_all("v2"), &[("alice", 1), ("bob", 2)]);
        tampered["default"]["deny"] = json!([]);
        assert!(!vm.configure(tampered.to_string().as_bytes()).unwrap(), "{profile:?}: tampered policy accepted");
        assert_eq!(host.metric_value("gatewarden_ip_geo_signature_rejected"), 1);
        assert_eq!(host.metric_value("gatewarden_ip_geo_config_rejected"), 1);
        let errors: Vec<String> =
            host.logs().iter().filter(|l| l.message.contains("policy refused: signatures:")).map(|l| l.message.clone()).collect();
        assert_eq!(errors.len(), 1, "{:#?}", host.logs());
        assert!(errors[0].contains("0 valid signature(s) from distinct trusted keys, 2 required"), "{}", errors[0]);

        let denied = from(&mut vm, "192.0.2.9");
        let allowed = from(&mut vm, "203.0.113.1");
        assert_eq!(denied.status, 403, "the old policy v1 still denies");
        assert_eq!(allowed.upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=v1"));

        // One signature of two, or two by the same key, is not enough; an unknown signer does not count.
        let one = signed(allow_all("v3"), &[("alice", 1), ("mallory", 9)]);
        assert!(!vm.configure(one.to_string().as_bytes()).unwrap());
        let twice = signed(allow_all("v3"), &[("alice", 1), ("alice", 1)]);
        assert!(!vm.configure(twice.to_string().as_bytes()).unwrap());
        let wrong_key = signed(allow_all("v3"), &[("alice", 1), ("bob", 9)]);
        assert!(!vm.configure(wrong_key.to_string().as_bytes()).unwrap());
        assert_eq!(host.metric_value("gatewarden_ip_geo_signature_rejected"), 4);

        // Properly signed again: accepted (and the extra unknown signature is ignored).
        let v3 = signed(allow_all("v3"), &[("mallory", 9), ("bob", 2), ("alice", 1)]);
        assert!(vm.configure(v3.to_string().as_bytes()).unwrap(), "{:#?}", host.logs());
        let out = from(&mut vm, "203.0.113.1");
        assert_eq!(out.upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=v3"), "{profile:?}");
    }
}

/// On Kong the trust settings come from the `module` directive's config and a policy change is a
/// reload (a new VM): a tampered or unsigned policy is refused and the filter fails closed (503)
/// on its own requests, without refusing the VM (which would stop every route of nginx).
#[test]
fn tampered_or_unsigned_policy_on_kong_fails_closed_and_a_signed_one_serves() {
    let mut tampered = signed(allow_all("v2"), &[("alice", 1), ("bob", 2)]);
    tampered["default"]["deny"] = json!([]);
    for (case, policy) in [("tampered", tampered), ("unsigned", allow_all("v2"))] {
        let host = Host::new(Profile::Kong);
        let mut vm = load(&host, &trust_config(2));
        assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "{case}: the VM is accepted on Kong");
        assert!(host.logs().iter().any(|l| l.message.contains("policy refused: signatures:")), "{case}: {:#?}", host.logs());
        for client in ["192.0.2.9", "203.0.113.1"] {
            let out = from(&mut vm, client);
            assert_eq!(out.status, 503, "{case} {client}: fail closed");
            assert_eq!(out.upstream_request, None, "{case}: nothing reaches the upstream");
        }
        host.tick().unwrap();
        assert_eq!(host.metric_value("gatewarden_ip_geo_signature_rejected"), 1, "{case}");
        assert_eq!(host.metric_value("gatewarden_ip_geo_no_policy"), 2, "{case}");
    }
    let host = Host::new(Profile::Kong);
    let mut vm = load(&host, &trust_config(2));
    let v3 = signed(allow_all("v3"), &[("alice", 1), ("bob", 2)]);
    assert!(vm.configure(v3.to_string().as_bytes()).unwrap());
    assert_eq!(from(&mut vm, "203.0.113.1").upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=v3"));
    assert_eq!(from(&mut vm, "192.0.2.9").status, 403);
}

/// Invalid trust settings on Kong: the VM starts (a refused VM would stop every route), and every
/// policy is refused, so the filter fails closed.
#[test]
fn invalid_trust_settings_on_kong_refuse_every_policy() {
    let host = Host::new(Profile::Kong);
    let mut vm = load(&host, r#"{"required_signatures": 1}"#);
    let signed_anyway = signed(allow_all("v1"), &[("alice", 1), ("bob", 2)]);
    assert!(vm.configure(signed_anyway.to_string().as_bytes()).unwrap());
    assert!(
        host.logs()
            .iter()
            .any(|l| l.message.contains("invalid trust settings in the VM configuration")
                && l.message.contains("every policy will be refused")),
        "{:#?}",
        host.logs()
    );
    assert_eq!(from(&mut vm, "203.0.113.1").status, 503);
    host.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_ip_geo_trust_config_rejected"), 1);
    assert_eq!(host.metric_value("gatewarden_ip_geo_config_rejected"), 1);
}

#[test]
fn unsigned_policy_at_first_start_fails_closed() {
    let host = Host::new(Profile::Envoy);
    let mut vm = load(&host, &trust_config(1));
    assert!(!vm.configure(allow_all("v1").to_string().as_bytes()).unwrap());
    let out = from(&mut vm, "203.0.113.1");
    assert_ne!(out.status, 200, "{out:?}");
    // A signature by one trusted key is enough when one is required.
    assert!(vm.configure(signed(allow_all("v1"), &[("bob", 2)]).to_string().as_bytes()).unwrap());
    assert_eq!(from(&mut vm, "203.0.113.1").status, 200);
}

#[test]
fn without_trust_settings_signatures_are_not_required() {
    let host = Host::new(Profile::Envoy);
    let mut vm = load(&host, "");
    assert!(vm.configure(allow_all("v1").to_string().as_bytes()).unwrap());
    let mut vm = load(&host, &trust_config(0));
    assert!(vm.configure(allow_all("v1").to_string().as_bytes()).unwrap());
}

#[test]
fn invalid_trust_settings_refuse_to_start() {
    let host = Host::new(Profile::Envoy);
    for bad in [r#"{"required_signatures": 1}"#, r#"{"trusted_signers": [{"key_id": "a", "public_key": "short"}]}"#, "not json"] {
        let mut vm = load(&host, bad);
        let signed_anyway = signed(allow_all("v1"), &[("alice", 1), ("bob", 2)]);
        assert!(!vm.configure(signed_anyway.to_string().as_bytes()).unwrap(), "{bad}");
        assert!(host.logs().iter().any(|l| l.message.contains("invalid trust settings in the VM configuration")), "{bad}");
    }
    assert_eq!(host.metric_value("gatewarden_ip_geo_trust_config_rejected"), 3);
}

// ------------------------------------------------------------------------------------------
// The same glue serves every filter: the JWT module with a shadow and a header-hashed canary.

fn jwt_module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-jwt"))
}

fn jwt_doc(version: &str, public_open: bool) -> Value {
    let jwks: Value = serde_json::from_str(include_str!("../../filters/jwt/policy/tests/fixtures/jwt/jwks.json")).unwrap();
    let rules = if public_open { json!([{"name": "public", "match": {"path_prefix": "/public"}}]) } else { json!([]) };
    json!({
        "policy_version": version,
        "providers": {"idp": {"issuer": "https://idp.example.com", "audiences": ["api"], "local_jwks": jwks}},
        "rules": rules,
        "default": {"requires": {"provider": "idp"}}
    })
}

#[test]
fn jwt_module_shadow_and_header_canary() {
    let host = Host::new(Profile::Envoy);
    host.set_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_100));
    let mut shadow = jwt_doc("j1", true);
    shadow["rollout"] = json!({"shadow": true, "candidate": jwt_doc("j2", false)});
    let mut vm = host.load_vm(jwt_module(), VmOptions::new("gatewarden_jwt").vm_id("gatewarden_jwt")).unwrap();
    assert!(vm.configure(shadow.to_string().as_bytes()).unwrap(), "{:#?}", host.logs());
    let out = vm.http_request(Request::get("/public/x").source("10.0.0.1:1")).unwrap();
    assert_eq!(out.status, 200, "the active policy (public open) is enforced");
    assert_eq!(out.upstream_header("x-gatewarden-jwt"), Some("allow; rule=public; version=j1"));
    assert_eq!(vm.http_request(Request::get("/private").source("10.0.0.1:1")).unwrap().status, 401);
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    assert_eq!(host.metric_value("gatewarden_jwt_shadow_disagreed"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_shadow_agreed"), 1);
    let line = &json_lines(&host, "shadow_disagreement")[0];
    assert_eq!(line["candidate"].as_str().unwrap().split(':').next(), Some("deny"), "{line}");
    assert_eq!(line["candidate"].as_str().unwrap().rsplit(':').next(), Some("401"), "{line}");

    // Canary on 100 % of users identified by x-user-id; requests without it stay on the active policy.
    let mut canary = jwt_doc("j1", true);
    canary["rollout"] = json!({"percent": 100, "hash_on": {"header": "x-user-id"}, "candidate": jwt_doc("j2", false)});
    assert!(vm.configure(canary.to_string().as_bytes()).unwrap(), "{:#?}", host.logs());
    let with_user = vm.http_request(Request::get("/public/x").source("10.0.0.1:1").header("x-user-id", "u1")).unwrap();
    assert_eq!(with_user.status, 401, "the candidate requires a token everywhere");
    let anonymous = vm.http_request(Request::get("/public/x").source("10.0.0.1:1")).unwrap();
    assert_eq!(anonymous.status, 200);
    vm.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_rollout_candidate"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_candidate_denied"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_rollout_active"), 1);
}

#[test]
fn canary_and_shadow_add_no_host_call_per_request() {
    let host = Host::new(Profile::Envoy);
    let one = |percent: Option<f64>| {
        let mut policy = json!({"policy_version": "v1", "default": {}});
        policy["rollout"] = match percent {
            Some(p) => json!({"percent": p, "candidate": {"policy_version": "v2", "default": {}}}),
            None => json!({"shadow": true, "candidate": {"policy_version": "v2", "default": {}}}),
        };
        let mut vm = vm(&host, &policy);
        host.clear_calls();
        assert_eq!(vm.http_request(Request::get("/").source("192.0.2.1:1")).unwrap().status, 200);
        let request: Vec<&str> = host.calls().iter().map(|c| c.name).collect();
        host.clear_calls();
        vm.tick().unwrap();
        let increments = host.calls().iter().filter(|c| c.name == "proxy_increment_metric").count();
        (request, increments)
    };
    // The request itself: the peer address and the decision header, as without a rollout; the
    // counters (allowed + the assignment or the shadow comparison, + candidate_allowed when the
    // candidate decides) go to the host on the next tick, one call per counter that moved.
    let request = vec!["proxy_get_property", "proxy_replace_header_map_value"];
    assert_eq!(one(Some(0.0)), (request.clone(), 2));
    assert_eq!(one(Some(100.0)), (request.clone(), 3));
    assert_eq!(one(None), (request, 2));
}
