//! The built rate-limit module (target/wasm32-wasip1/release/gatewarden_rate_limit.wasm) driven
//! through the Wasm test host: exact admission, 429 headers, several workers sharing one
//! shared-data table (both CAS-0 profiles), refill with injected time, the key-flood bound, and
//! a refused configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_wasm_host::{Host, Module, Outcome, Profile, Request, Vm, VmOptions};
use serde_json::{json, Value};

const VM_ID: &str = "gatewarden_rate_limit";
const LIMITED_BODY: &str = r#"{"status":429,"title":"Request cannot be satisfied as assigned quota has been exceeded","type":"https://iana.org/assignments/http-problem-types#quota-exceeded","violated-policies":["ten"]}"#;
const PROFILES: [Profile; 2] = [Profile::Envoy, Profile::Kong];

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-rate-limit"))
}

/// 10 per 10 s (burst 10) per `x-api-key`, all headers; `max_keys` as given.
fn policy(max_keys: u32) -> Value {
    json!({
        "policy_version": "rl1",
        "max_keys": max_keys,
        "default": {
            "limits": [{"name": "ten", "rate": 10, "per_seconds": 10}],
            "key": [{"header": "x-api-key"}],
            "headers": "ietf_and_legacy"
        }
    })
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

fn host(profile: Profile) -> Host {
    let host = Host::new(profile);
    host.set_time(t0());
    host
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(policy.to_string().as_bytes()).unwrap(), "policy refused: {:#?}", host.logs());
    vm
}

fn get(vm: &mut Vm, key: &str) -> Outcome {
    vm.http_request(Request::get("/api").source("192.0.2.1:1").header("x-api-key", key)).unwrap()
}

/// How many of `n` requests of `key` pass, alternating over `vms`.
fn admitted(vms: &mut [Vm], key: &str, n: usize) -> Vec<u16> {
    let count = vms.len();
    (0..n).map(|i| get(&mut vms[i % count], key).status).collect()
}

#[test]
fn ten_per_ten_seconds_admits_ten_then_429_with_headers() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(64));
        let statuses = admitted(std::slice::from_mut(&mut vm), "alice", 10);
        assert_eq!(statuses, vec![200; 10], "{profile:?}");
        let out = get(&mut vm, "alice");
        assert_eq!(out.status, 429, "{profile:?}");
        let body: Value = serde_json::from_slice(&out.response_body).unwrap();
        assert_eq!(body, serde_json::from_str::<Value>(LIMITED_BODY).unwrap(), "{profile:?}");
        assert_eq!(out.response_header("content-type"), Some("application/problem+json"), "{profile:?}");
        // One unit per second: the next one in 1 s.
        assert_eq!(out.response_header("retry-after"), Some("1"), "{profile:?}");
        assert_eq!(out.response_header("ratelimit-policy"), Some(r#""ten";q=10;w=10"#));
        assert_eq!(out.response_header("ratelimit"), Some(r#""ten";r=0;t=10"#));
        assert_eq!(out.response_header("x-ratelimit-limit"), Some("10"));
        assert_eq!(out.response_header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(out.response_header("x-ratelimit-reset"), Some("10"));
        let content_types: Vec<_> = out.response_headers.iter().filter(|(k, _)| k == "content-type").collect();
        assert_eq!(content_types.len(), 1, "one content-type: {:?}", out.response_headers);
        assert_eq!(out.local_response.as_ref().unwrap().details, "gatewarden_rate_limit_limited");
        // Another key has its own bucket; without headers_on_allowed its response is the upstream's.
        let bob = get(&mut vm, "bob");
        assert_eq!(bob.status, 200);
        assert_eq!(bob.response_header("ratelimit"), None, "{profile:?}");
        vm.tick().unwrap();
        assert_eq!(host.metric_value("gatewarden_rate_limit_denied_limited"), 1, "{profile:?}");
        assert_eq!(host.metric_value("gatewarden_rate_limit_allowed"), 11, "{profile:?}");
        let lines: Vec<Value> = host
            .logs()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l.message).ok())
            .filter(|v| v["gatewarden"] == "decision")
            .collect();
        assert_eq!(lines.len(), 1, "one denial line: {lines:?}");
        assert_eq!(lines[0]["reason"], "limited");
        assert_eq!(lines[0]["rule"], "default");
        assert_eq!(lines[0]["policy_version"], "rl1");
        assert!(lines[0]["detail"].as_str().unwrap().ends_with(" limits=ten"), "{}", lines[0]);
    }
}

#[test]
fn two_workers_together_admit_exactly_the_limit() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vms = vec![vm(&host, &policy(64)), vm(&host, &policy(64))];
        let statuses = admitted(&mut vms, "shared-key", 30);
        let mut expected = vec![200; 10];
        expected.extend([429; 20]);
        assert_eq!(statuses, expected, "{profile:?}");
        // Both workers use the one published seed (else each would hash the key to its own slot).
        let seed = host.shared_data(VM_ID, "gatewarden/rate_limit/seed").expect("seed published");
        assert_eq!(seed.value.len(), 8);
        // After one second each worker sees the one refilled unit: one pass in total.
        host.advance(Duration::from_secs(1));
        let statuses = admitted(&mut vms, "shared-key", 4);
        assert_eq!(statuses, vec![200, 429, 429, 429], "{profile:?}");
    }
}

/// Many keys of one set (a table of one set of 8) from two workers in turn: each key's own
/// limit is exact, although every update rewrites the whole set (the CAS covers the set), and
/// the table stays one entry.
#[test]
fn two_workers_with_all_keys_in_one_set_admit_each_key_exactly() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vms = [vm(&host, &policy(8)), vm(&host, &policy(8))];
        let keys: Vec<String> = (0..8).map(|k| format!("key-{k}")).collect();
        let mut passed = vec![0; keys.len()];
        for round in 0..12 {
            for (k, key) in keys.iter().enumerate() {
                let status = get(&mut vms[(round + k) % 2], key).status;
                assert!(status == 200 || status == 429, "{profile:?}: {status}");
                passed[k] += usize::from(status == 200);
            }
        }
        assert_eq!(passed, vec![10; 8], "{profile:?}");
        assert_eq!(host.shared_data_len(VM_ID), 2, "one set and the seed: {profile:?}");
        assert_eq!(host.shared_data(VM_ID, "gatewarden/rate_limit/s1w8/0").unwrap().value.len(), 768);
        // One second later each key has one unit back, whichever worker asks.
        host.advance(Duration::from_secs(1));
        for (k, key) in keys.iter().enumerate() {
            assert_eq!(admitted(&mut vms[k % 2..], key, 2), vec![200, 429], "{profile:?} {key}");
        }
    }
}

/// Envoy's CAS 0 overwrites, so two workers creating the seed at once may end up with
/// different seeds (last writer wins in the store). Simulated here by replacing the stored seed
/// after one worker read it: after one tick every worker uses the stored one again.
#[test]
fn workers_adopt_the_stored_seed_on_the_next_tick() {
    let host = host(Profile::Envoy);
    let mut vms = vec![vm(&host, &policy(64)), vm(&host, &policy(64))];
    assert_eq!(get(&mut vms[0], "warm-up").status, 200); // worker 0 reads (publishes) the seed
    host.set_shared_data(VM_ID, "gatewarden/rate_limit/seed", &0x5eed_u64.to_le_bytes());
    host.tick().unwrap();
    let statuses = admitted(&mut vms, "after-race", 30);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
}

/// Garbage in shared data (a seed or slot of the wrong size) and hostile keys never trap: a
/// bad seed is replaced, a bad slot reads as empty, and the limit stays exact.
#[test]
fn hostile_shared_data_and_keys_do_not_trap() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(8));
        host.set_shared_data(VM_ID, "gatewarden/rate_limit/seed", b"bad");
        // The table's one set, as 13 bytes and as an old single slot (96 bytes).
        host.set_shared_data(VM_ID, "gatewarden/rate_limit/s1w8/0", &[0xff; 13]);
        let statuses = admitted(std::slice::from_mut(&mut vm), "k", 11);
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{profile:?}: {statuses:?}");
        assert_eq!(host.shared_data(VM_ID, "gatewarden/rate_limit/seed").unwrap().value.len(), 8, "bad seed replaced");
        assert_eq!(host.shared_data(VM_ID, "gatewarden/rate_limit/s1w8/0").unwrap().value.len(), 768, "bad set replaced");
        host.set_shared_data(VM_ID, "gatewarden/rate_limit/s1w8/0", &[0xff; 96]);
        let statuses = admitted(std::slice::from_mut(&mut vm), "k2", 11);
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{profile:?}: {statuses:?}");
        let long = "x".repeat(60_000);
        for key in ["", " ", long.as_str(), "\u{7f}\t;\"", "k"] {
            let out = vm.http_request(Request::get("/api").source("192.0.2.1:1").header("x-api-key", key)).unwrap();
            assert!(!out.trapped(), "{profile:?}: trap on {key:?}");
            assert!([200, 403, 429].contains(&out.status), "{profile:?}: {}", out.status);
        }
        // Missing key part: `on_missing_key` defaults to deny (403).
        assert_eq!(vm.http_request(Request::get("/api").source("192.0.2.1:1")).unwrap().status, 403);
    }
}

#[test]
fn a_bucket_refills_after_its_period() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(64));
        let one = std::slice::from_mut(&mut vm);
        assert_eq!(admitted(one, "k", 11).iter().filter(|s| **s == 200).count(), 10);
        host.advance(Duration::from_millis(999));
        assert_eq!(get(&mut vm, "k").status, 429, "not yet: {profile:?}");
        host.advance(Duration::from_millis(1));
        assert_eq!(get(&mut vm, "k").status, 200, "one unit after 1 s: {profile:?}");
        assert_eq!(get(&mut vm, "k").status, 429);
        host.advance(Duration::from_secs(10));
        let statuses = admitted(std::slice::from_mut(&mut vm), "k", 11);
        let mut expected = vec![200; 10];
        expected.push(429);
        assert_eq!(statuses, expected, "full burst after the period: {profile:?}");
    }
}

#[test]
fn a_flood_of_new_keys_neither_grows_memory_nor_resets_an_exhausted_key() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(16));
        let one = std::slice::from_mut(&mut vm);
        assert_eq!(admitted(one, "attacker", 11).last(), Some(&429));
        for i in 0..200 {
            get(&mut vm, &format!("flood-{i}"));
        }
        let len_after_200 = host.shared_data_len(VM_ID);
        for i in 200..2000 {
            get(&mut vm, &format!("flood-{i}"));
        }
        assert_eq!(host.shared_data_len(VM_ID), len_after_200, "memory flat: {profile:?}");
        // 16 slots: 2 sets of 8, one entry each, and the seed; no set outside the table.
        assert_eq!(host.shared_data_len(VM_ID), 3, "{profile:?}");
        for i in 0..2 {
            assert_eq!(
                host.shared_data(VM_ID, &format!("gatewarden/rate_limit/s2w8/{i}")).unwrap().value.len(),
                8 * 96,
                "a set: 8 slots of fingerprint, limited_until, 8 tags, 8 words"
            );
        }
        assert!(host.shared_data(VM_ID, "gatewarden/rate_limit/s2w8/2").is_none());
        assert_eq!(get(&mut vm, "attacker").status, 429, "the exhausted key is still limited: {profile:?}");
        // The key was tracked all along: one unit back after one second, not a fresh burst.
        host.advance(Duration::from_secs(1));
        assert_eq!(get(&mut vm, "attacker").status, 200);
        assert_eq!(get(&mut vm, "attacker").status, 429, "{profile:?}");
    }
}

#[test]
fn a_table_full_of_limited_keys_follows_failure_mode() {
    for (mode, status) in [("deny", 503), ("allow", 200)] {
        let host = host(Profile::Envoy);
        let mut p = policy(8);
        p["failure_mode"] = json!(mode);
        let mut vm = vm(&host, &p);
        // One set of 8 slots: exhaust 8 keys, then a ninth cannot be tracked.
        for k in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            assert_eq!(admitted(std::slice::from_mut(&mut vm), k, 11).last(), Some(&429));
        }
        assert_eq!(get(&mut vm, "i").status, status, "{mode}");
        vm.tick().unwrap();
        let full = host.metric_value("gatewarden_rate_limit_denied_table_full");
        assert_eq!(full, u64::from(mode == "deny"), "{mode}");
    }
}

const BAD_POLICY: &str = r#"{"policy_version": "bad", "default": {"limits": [{"name": "l", "rate": 0, "per": "1s"}]}}"#;

fn refusal(host: &Host) -> String {
    let err = host.logs().into_iter().find(|l| l.message.contains("policy refused")).expect("refusal logged");
    assert!(err.message.contains("default.limits[0].rate: must be at least 1, got 0"), "{}", err.message);
    err.message
}

/// Envoy: a refused update keeps the previous policy (and its table) serving.
#[test]
fn a_policy_with_an_invalid_limit_is_refused_with_its_field_path() {
    let host = host(Profile::Envoy);
    let mut vm = vm(&host, &policy(64));
    assert!(!vm.configure(BAD_POLICY.as_bytes()).unwrap(), "bad policy accepted");
    refusal(&host);
    assert_eq!(host.metric_value("gatewarden_rate_limit_config_rejected"), 1);
    let statuses = admitted(std::slice::from_mut(&mut vm), "k", 11);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
}

/// Kong: the VM is accepted (a refusal would stop nginx's workers) and requests fail closed.
#[test]
fn a_policy_with_an_invalid_limit_fails_closed_on_kong() {
    let host = host(Profile::Kong);
    let mut vm = host.load_vm(module(), VmOptions::new(VM_ID).vm_id(VM_ID)).unwrap();
    assert!(vm.configure(BAD_POLICY.as_bytes()).unwrap(), "the VM must be accepted on Kong");
    assert!(refusal(&host).contains("denied with 503"));
    assert_eq!(get(&mut vm, "k").status, 503);
    host.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_rate_limit_config_rejected"), 1);
    assert_eq!(host.metric_value("gatewarden_rate_limit_allowed"), 0);
}

#[test]
fn headers_on_allowed_responses_are_added_to_the_upstreams_answer() {
    for profile in PROFILES {
        let host = host(profile);
        let mut p = policy(64);
        p["default"]["headers_on_allowed"] = json!(true);
        let mut vm = vm(&host, &p);
        let first = get(&mut vm, "alice");
        assert_eq!(first.status, 200, "{profile:?}");
        assert!(first.upstream_request.is_some());
        assert_eq!(first.response_header("ratelimit-policy"), Some(r#""ten";q=10;w=10"#), "{profile:?}");
        assert_eq!(first.response_header("ratelimit"), Some(r#""ten";r=9;t=1"#), "{profile:?}");
        assert_eq!(first.response_header("x-ratelimit-remaining"), Some("9"), "{profile:?}");
        // Each request gets its own figures.
        let b = get(&mut vm, "bob");
        assert_eq!(b.response_header("ratelimit"), Some(r#""ten";r=9;t=1"#), "{profile:?}");
        let a = get(&mut vm, "alice");
        assert_eq!(a.response_header("ratelimit"), Some(r#""ten";r=8;t=2"#), "{profile:?}");
    }
}

#[test]
fn a_live_update_keeps_unchanged_limits_and_resets_changed_ones() {
    for profile in PROFILES {
        let host = host(profile);
        let mut vm = vm(&host, &policy(64));
        assert_eq!(admitted(std::slice::from_mut(&mut vm), "alice", 11).last(), Some(&429), "{profile:?}");
        // v2: a new limit beside the unchanged "ten": alice is still spent.
        let mut v2 = policy(64);
        v2["policy_version"] = json!("rl2");
        v2["default"]["limits"] = json!([{"name": "hourly", "rate": 1000, "per": "1h"}, {"name": "ten", "rate": 10, "per_seconds": 10}]);
        assert!(vm.configure(v2.to_string().as_bytes()).unwrap(), "{profile:?}");
        let out = get(&mut vm, "alice");
        assert_eq!(out.status, 429, "{profile:?}: the unchanged limit kept its state");
        assert!(String::from_utf8_lossy(&out.response_body).contains(r#"["ten"]"#));
        // v3: "ten" redefined (20 per 10 s): a new bucket, full.
        let mut v3 = v2.clone();
        v3["policy_version"] = json!("rl3");
        v3["default"]["limits"][1] = json!({"name": "ten", "rate": 20, "per_seconds": 10});
        assert!(vm.configure(v3.to_string().as_bytes()).unwrap(), "{profile:?}");
        assert_eq!(admitted(std::slice::from_mut(&mut vm), "alice", 21), [vec![200; 20], vec![429]].concat(), "{profile:?}");
    }
}
