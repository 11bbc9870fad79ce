//! The built IP/geo module (target/wasm32-wasip1/release/gatewarden_ip_geo.wasm) driven through
//! the Wasm test host: the shared scenario table, the geo database fetch shared by all workers,
//! failure_mode, refused updates, dry run, and the Kong profile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use gatewarden_testkit::MmdbWriter;
use gatewarden_wasm_host::{Host, HttpResponse, Module, Outcome, Profile, Request, Vm, VmOptions};
use serde_json::{json, Value};

const CLUSTER: &str = "geo_db";
const KONG_UPSTREAM: &str = "geo-db:80";
const DB_PATH: &str = "/country.mmdb";
const DENY_BODY: &str = r#"{"error":"forbidden","message":"access denied by policy"}"#;

/// The release module (see `common::filter_module`), compiled once per test binary.
fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-ip-geo"))
}

fn scenarios() -> Value {
    serde_json::from_str(include_str!("../../filters/ip-geo/policy/tests/fixtures/ip_geo_scenarios.json")).unwrap()
}

fn db(networks: &[(&str, &str)]) -> Vec<u8> {
    let mut w = MmdbWriter::new(6, "test").unwrap();
    for (net, cc) in networks {
        w.insert_country(net.parse().unwrap(), cc).unwrap();
    }
    w.build().unwrap()
}

fn scenario_db() -> Vec<u8> {
    let table = scenarios();
    let nets: Vec<(String, String)> =
        table["geo_db"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    let refs: Vec<(&str, &str)> = nets.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    db(&refs)
}

fn host(profile: Profile) -> Host {
    let host = Host::new(profile);
    host.add_cluster(CLUSTER);
    host
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let mut vm = host.load_vm(module(), VmOptions::new("gatewarden_ip_geo").vm_id("gatewarden_ip_geo")).unwrap();
    assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "policy refused: {:#?}", host.logs());
    vm
}

/// Ticks every VM until the database is loaded by `vms` VMs (scripted callouts delivered between).
fn load_db(host: &Host, vms: u64) {
    for _ in 0..10 {
        host.tick().unwrap();
        host.deliver_pending_calls().unwrap();
        if host.metric_value("gatewarden_ip_geo_geo_db_loaded") >= vms {
            return;
        }
        host.advance(Duration::from_millis(250));
    }
    panic!("database not loaded by {vms} VMs; logs: {:#?}", host.logs());
}

fn get(vm: &mut Vm, path: &str, peer: &str, xff: Option<&str>) -> Outcome {
    let mut r = Request::get(path).source(peer).header("x-request-id", "req-1");
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    vm.http_request(r).unwrap()
}

fn decision_lines(host: &Host) -> Vec<Value> {
    host.logs().iter().filter_map(|l| l.message.find("{\"gatewarden\"").map(|i| serde_json::from_str(&l.message[i..]).unwrap())).collect()
}

#[test]
fn scenario_table_through_the_wasm_module() {
    let table = scenarios();
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(scenario_db()));
    let mut vm = vm(&host, &table["policy"]);
    load_db(&host, 1);
    for case in table["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut r = Request::get(case["path"].as_str().unwrap())
            .source(case["peer"].as_str().unwrap_or("10.0.0.1:5000"))
            .header("x-gatewarden-ip-geo", "allow; spoofed by the client");
        if let Some(x) = case["xff"].as_str() {
            r = r.header("x-forwarded-for", x);
        }
        if let Some(extra) = case["headers"].as_object() {
            for (k, v) in extra {
                r = r.header(k, v.as_str().unwrap());
            }
        }
        host.clear_logs();
        let out = vm.http_request(r).unwrap();
        let (expect, rule) = (case["expect"].as_str().unwrap(), case["rule"].as_str().unwrap());
        if expect == "allow" {
            assert_eq!(out.status, 200, "case {name}: {out:?}");
            assert_eq!(
                out.upstream_header("x-gatewarden-ip-geo"),
                Some(format!("allow; rule={rule}; version=scenarios.1").as_str()),
                "case {name}: the decision header replaces the client's"
            );
        } else {
            let local = out.local_response.as_ref().unwrap_or_else(|| panic!("case {name}: not denied: {out:?}"));
            assert_eq!(local.status, 403, "case {name}");
            assert_eq!(local.body, DENY_BODY.as_bytes(), "case {name}");
            assert!(local.headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"), "case {name}");
            let line = decision_lines(&host).pop().unwrap_or_else(|| panic!("case {name}: no decision log line"));
            assert_eq!((line["reason"].as_str(), line["rule"].as_str()), (Some(expect), Some(rule)), "case {name}: {line}");
            assert_eq!(line["policy_version"], "scenarios.1");
        }
    }
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    let denied = table["cases"].as_array().unwrap().iter().filter(|c| c["expect"] != "allow").count() as u64;
    assert_eq!(host.metric_value("gatewarden_ip_geo_denied"), denied);
    assert_eq!(host.metric_value("gatewarden_ip_geo_denied_country_denied"), 2);
}

#[test]
fn one_fetch_serves_every_worker() {
    let table = scenarios();
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(scenario_db()));
    let mut vms: Vec<Vm> = (0..3).map(|_| vm(&host, &table["policy"])).collect();
    load_db(&host, 3);
    assert_eq!(host.http_calls().len(), 1, "exactly one fetch for three workers: {:?}", host.http_calls());
    let call = &host.http_calls()[0];
    assert_eq!((call.upstream.as_str(), call.path()), (CLUSTER, DB_PATH));
    assert_eq!(host.metric_value("gatewarden_ip_geo_geo_db_fetch_succeeded"), 1);
    for vm in &mut vms {
        assert_eq!(get(vm, "/", "10.0.0.1:1", Some("203.0.113.5")).status, 403, "every worker has the database");
    }
    // The refresh is not due yet: more ticks fetch nothing.
    host.advance(Duration::from_secs(60));
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 1);
}

#[test]
fn policy_update_during_the_fetch_does_not_stall_loading() {
    let table = scenarios();
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(scenario_db()));
    let mut worker = vm(&host, &table["policy"]);
    host.tick().unwrap();
    assert_eq!(host.pending_calls().len(), 1, "fetch in flight");
    // The update replaces the root context that owns the in-flight fetch.
    let mut updated = table["policy"].clone();
    updated["policy_version"] = json!("scenarios.2");
    assert!(worker.configure(updated.to_string().as_bytes()).unwrap());
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert!(host.metric_value("gatewarden_ip_geo_geo_db_loaded") >= 1, "loaded without waiting for the lease: {:#?}", host.logs());
    assert_eq!(get(&mut worker, "/", "10.0.0.1:1", Some("203.0.113.5")).status, 403);
    assert_eq!(decision_lines(&host).pop().unwrap()["reason"], "country_denied");
}

#[test]
fn geo_unavailable_follows_failure_mode_then_recovers() {
    let mut policy = scenarios()["policy"].clone();
    policy["geo_database"]["retry_seconds"] = json!(5);
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(503).body("down"));
    let mut worker = vm(&host, &policy);
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    assert_eq!(host.metric_value("gatewarden_ip_geo_geo_db_fetch_failed"), 1);
    let out = get(&mut worker, "/", "10.0.0.1:1", Some("198.51.100.1"));
    assert_eq!(out.status, 403, "failure_mode deny: country rules deny while no database is loaded");
    assert_eq!(decision_lines(&host).pop().unwrap()["reason"], "geo_unavailable");
    assert_eq!(get(&mut worker, "/admin", "10.0.0.1:1", Some("10.1.1.1")).status, 200, "rules without countries work");

    // No retry before retry_seconds, then one retry that succeeds.
    host.advance(Duration::from_secs(2));
    host.tick().unwrap();
    assert_eq!(host.http_calls().len(), 1, "retry waits for retry_seconds");
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(scenario_db()));
    host.advance(Duration::from_secs(4));
    load_db(&host, 1);
    assert_eq!(host.http_calls().len(), 2);
    assert_eq!(get(&mut worker, "/", "10.0.0.1:1", Some("198.51.100.1")).status, 200);

    // failure_mode allow: country checks skipped while no database is loaded.
    policy["failure_mode"] = json!("allow");
    let host2 = self::host(Profile::Envoy);
    host2.script_http_failure(CLUSTER, DB_PATH);
    let mut vm2 = vm(&host2, &policy);
    host2.tick().unwrap();
    host2.deliver_pending_calls().unwrap();
    assert_eq!(get(&mut vm2, "/", "10.0.0.1:1", Some("203.0.113.5")).status, 200);
}

#[test]
fn corrupt_refresh_is_refused_and_last_good_database_keeps_serving() {
    let mut policy = scenarios()["policy"].clone();
    policy["geo_database"]["refresh_seconds"] = json!(10);
    let host = host(Profile::Envoy);
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(scenario_db()));
    let mut vm = vm(&host, &policy);
    load_db(&host, 1);
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(b"this is not a database".to_vec()));
    host.advance(Duration::from_secs(11));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    assert_eq!(host.http_calls().len(), 2, "refresh happened");
    assert_eq!(host.metric_value("gatewarden_ip_geo_geo_db_fetch_failed"), 1);
    assert_eq!(get(&mut vm, "/", "10.0.0.1:1", Some("203.0.113.5")).status, 403, "old database still decides");
    assert!(host.logs().iter().any(|l| l.message.contains("invalid content: not a valid MaxMind DB")), "{:#?}", host.logs());

    // A valid new database replaces it: 203.0.113.0/24 becomes US.
    host.script_http_response(CLUSTER, DB_PATH, HttpResponse::new(200).body(db(&[("203.0.113.0/24", "US")])));
    host.advance(Duration::from_secs(11));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert_eq!(get(&mut vm, "/", "10.0.0.1:1", Some("203.0.113.5")).status, 200, "swapped database without a rebuild");
}

#[test]
fn refused_update_keeps_the_old_policy_on_envoy() {
    let policy = json!({"policy_version": "v1", "default": {"deny": ["192.0.2.0/24"]}});
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &policy);
    assert!(!vm.configure(BAD_POLICY.as_bytes()).unwrap(), "bad policy accepted");
    let err = host.logs().into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(err.message.contains(r#"default.deny[0]: invalid CIDR "192.0.2.0/33""#), "{}", err.message);
    assert_eq!(host.metric_value("gatewarden_ip_geo_config_rejected"), 1);
    let denied = get(&mut vm, "/", "192.0.2.1:1", None);
    let allowed = get(&mut vm, "/", "198.51.100.1:1", None);
    assert_eq!((denied.status, allowed.status), (403, 200), "Envoy keeps serving v1");
    assert_eq!(allowed.upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=v1"));
}

const BAD_POLICY: &str = r#"{"policy_version": "v2", "default": {"deny": ["192.0.2.0/33"]}}"#;

/// On Kong a policy change is an nginx reload: new workers, new VMs. A false `on_configure`
/// there kills the workers (every route of that nginx stops), so the filter accepts the VM and
/// fails closed on its own requests only.
#[test]
fn refused_policy_on_kong_fails_closed_without_refusing_the_vm() {
    let host = host(Profile::Kong);
    let mut vm = host.load_vm(module(), VmOptions::new("gatewarden_ip_geo").vm_id("gatewarden_ip_geo")).unwrap();
    assert!(vm.configure(BAD_POLICY.as_bytes()).unwrap(), "the VM must be accepted on Kong");
    let err = host.logs().into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(err.message.contains(r#"default.deny[0]: invalid CIDR "192.0.2.0/33""#), "{}", err.message);
    assert!(err.message.contains("denied with 503 until a valid policy is loaded"), "{}", err.message);
    assert_eq!(err.level, gatewarden_wasm_host::LogLevel::Error);
    for peer in ["192.0.2.1:1", "198.51.100.1:1"] {
        let out = get(&mut vm, "/", peer, None);
        assert_eq!(out.status, 503, "{peer}: fail closed");
        assert_eq!(String::from_utf8_lossy(&out.response_body), r#"{"error":"unavailable","message":"policy unavailable"}"#);
    }
    host.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_ip_geo_config_rejected"), 1);
    assert_eq!(host.metric_value("gatewarden_ip_geo_no_policy"), 2);
    assert_eq!(host.metric_value("gatewarden_ip_geo_allowed"), 0);
}

#[test]
fn valid_update_takes_effect_for_new_requests() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &json!({"policy_version": "v1", "default": {}}));
    assert_eq!(get(&mut vm, "/", "192.0.2.1:1", None).status, 200);
    assert!(vm.configure(json!({"policy_version": "v2", "default": {"deny": ["192.0.2.0/24"]}}).to_string().as_bytes()).unwrap());
    assert_eq!(get(&mut vm, "/", "192.0.2.1:1", None).status, 403);
    assert_eq!(decision_lines(&host).pop().unwrap()["policy_version"], "v2");
}

#[test]
fn dry_run_lets_requests_through_and_counts() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &json!({"policy_version": "d1", "mode": "dry_run", "default": {"deny": ["192.0.2.0/24"]}}));
    let out = get(&mut vm, "/", "192.0.2.1:1", None);
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream_header("x-gatewarden-ip-geo"), Some("dry_run_deny; reason=ip_denied; rule=default; version=d1"));
    vm.tick().unwrap(); // tallied counters reach the host on the tick
    assert_eq!(host.metric_value("gatewarden_ip_geo_dry_run_denied_ip_denied"), 1);
    assert_eq!(host.metric_value("gatewarden_ip_geo_denied"), 0);
    let line = decision_lines(&host).pop().unwrap();
    assert_eq!(
        (line["decision"].as_str(), line["client"].as_str(), line["request_id"].as_str()),
        (Some("dry_run_deny"), Some("192.0.2.1"), Some("req-1"))
    );
}

#[test]
fn decision_header_off_sets_nothing_and_saves_the_host_call() {
    for profile in [Profile::Envoy, Profile::Kong] {
        let h = host(profile);
        let policy = json!({"policy_version": "h1", "decision_header": false, "default": {"deny": ["192.0.2.0/24"]}});
        let mut v = vm(&h, &policy);
        h.clear_calls();
        let allowed = get(&mut v, "/", "198.51.100.1:1", None);
        assert_eq!(allowed.status, 200);
        assert_eq!(allowed.upstream_header("x-gatewarden-ip-geo"), None, "{profile:?}");
        assert_eq!(h.call_count("proxy_replace_header_map_value"), 0, "{profile:?}: no header call");
        let denied = get(&mut v, "/", "192.0.2.1:1", None);
        assert_eq!(denied.status, 403, "{profile:?}: enforcement is unchanged");
        // Not replaced either: what a client sends under that name passes as it came.
        let spoofed = v.http_request(Request::get("/").source("198.51.100.1:1").header("x-gatewarden-ip-geo", "from the client")).unwrap();
        assert_eq!(spoofed.upstream_header("x-gatewarden-ip-geo"), Some("from the client"));
        v.tick().unwrap();
        assert_eq!(h.metric_value("gatewarden_ip_geo_allowed"), 2, "{profile:?}");
        assert_eq!(h.metric_value("gatewarden_ip_geo_denied"), 1, "{profile:?}");
    }
    // Control: by default the same request makes the header call.
    let h = host(Profile::Envoy);
    let mut v = vm(&h, &json!({"policy_version": "h0", "default": {}}));
    h.clear_calls();
    assert_eq!(get(&mut v, "/", "198.51.100.1:1", None).upstream_header("x-gatewarden-ip-geo"), Some("allow; rule=default; version=h0"));
    assert_eq!(h.call_count("proxy_replace_header_map_value"), 1);
    // Dry run: the would-be denial is logged and counted, but not sent upstream.
    let h = host(Profile::Envoy);
    let policy = json!({"policy_version": "h2", "mode": "dry_run", "decision_header": false, "default": {"deny": ["192.0.2.0/24"]}});
    let mut v = vm(&h, &policy);
    let out = get(&mut v, "/", "192.0.2.1:1", None);
    assert_eq!((out.status, out.upstream_header("x-gatewarden-ip-geo")), (200, None));
    assert_eq!(decision_lines(&h).pop().unwrap()["decision"].as_str(), Some("dry_run_deny"));
}

#[test]
fn kong_profile_fetches_from_host_port_and_shares_with_cas() {
    let mut policy = scenarios()["policy"].clone();
    policy["geo_database"]["cluster"] = json!(KONG_UPSTREAM);
    let host = Host::new(Profile::Kong);
    host.script_http_response(KONG_UPSTREAM, DB_PATH, HttpResponse::new(200).body(scenario_db()));
    let mut vms: Vec<Vm> = (0..2).map(|_| vm(&host, &policy)).collect();
    load_db(&host, 2);
    assert_eq!(host.http_calls().len(), 1);
    // Kong peers are bare addresses (nginx remote_addr).
    for vm in &mut vms {
        assert_eq!(get(vm, "/", "203.0.113.5", None).status, 403);
        assert_eq!(get(vm, "/", "198.51.100.7", None).status, 200);
    }
    // A refresh overwrites existing shared data: on Kong that needs the current CAS, not 0.
    host.script_http_response(KONG_UPSTREAM, DB_PATH, HttpResponse::new(200).body(db(&[("203.0.113.0/24", "US")])));
    host.advance(Duration::from_secs(86_401));
    host.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    host.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_ip_geo_geo_db_fetch_succeeded"), 2, "{:#?}", host.logs());
    for vm in &mut vms {
        assert_eq!(get(vm, "/", "203.0.113.5", None).status, 200, "refreshed database on every worker");
    }
}

#[test]
fn hostile_inputs_never_trap_the_vm() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &scenarios()["policy"]);
    let long = "9".repeat(100_000);
    let cases: Vec<(String, Option<String>)> = vec![
        ("garbage".into(), None),
        ("".into(), None),
        ("[::1".into(), None),
        ("10.0.0.1:1".into(), Some(long.clone())),
        ("10.0.0.1:1".into(), Some(",".repeat(10_000))),
        ("10.0.0.1:1".into(), Some("\u{0}\u{ff}".into())),
    ];
    for (peer, xff) in cases {
        let out = get(&mut vm, &format!("/{long}"), &peer, xff.as_deref());
        assert!(!out.trapped(), "trapped on peer {peer:?}");
        assert_eq!(out.status, 403);
    }
    for config in [
        "",
        "{",
        "null",
        "[]",
        &format!("{{\"policy_version\":\"{long}\"}}"),
        "{\"policy_version\":\"v\",\"rules\":[{\"match\":{\"path_regex\":\"(((((((((((\"}}]}",
    ] {
        assert!(!vm.configure(config.as_bytes()).unwrap(), "accepted {config:.40}");
        assert!(!vm.is_failed(), "trapped on config {config:.40}");
    }
}

/// A host that cannot give the request headers: the request fails closed (503, counter
/// `host_error`, an error log line), on both hosts; nothing reaches the upstream.
#[test]
fn a_host_error_reading_headers_fails_closed_and_is_counted() {
    let policy = json!({"policy_version": "h1", "rules": [
        {"name": "tenant", "match": {"headers": [{"name": "x-tenant", "exact": "acme"}]}, "allow": ["0.0.0.0/0"]}
    ], "default": {}});
    for profile in [Profile::Envoy, Profile::Kong] {
        let host = host(profile);
        let mut vm = vm(&host, &policy);
        assert_eq!(get(&mut vm, "/", "10.0.0.1:1", None).status, 200, "{profile:?}: control");
        for call in ["proxy_get_header_map_value", "proxy_get_header_map_pairs"] {
            host.fail_host_call(call, Some(2));
        }
        let out = get(&mut vm, "/", "10.0.0.1:1", None);
        assert_eq!(out.status, 503, "{profile:?}");
        assert_eq!(out.upstream_request, None, "{profile:?}");
        assert!(
            host.logs().iter().any(|l| l.message.contains("cannot read the request headers (status 2)")),
            "{profile:?}: {:#?}",
            host.logs()
        );
        host.tick().unwrap();
        assert_eq!(host.metric_value("gatewarden_ip_geo_host_error"), 1, "{profile:?}");
        assert_eq!(host.metric_value("gatewarden_ip_geo_allowed"), 1, "{profile:?}");
    }
}
