//! The service against a real `redis-server`: gRPC and `/json` answers, GCRA in Lua equal to
//! `gcra::admit_all`, Redis stopped, paused and back. Skipped (with a message) when `redis-server` is missing,
//! failed under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{poll, redis_server_binary, request, Redis, Scratch, Service};
use gatewarden_rate_limit_policy::gcra::{self, Limit};
use gatewarden_rate_limit_policy::rls::{json, Code, RateLimitRequest, Unit};
use gatewarden_ratelimit::check::{plan, Plan};
use gatewarden_ratelimit::limits::LimitBook;
use gatewarden_ratelimit::store::RedisStore;
use tonic::Code as GrpcCode;

const POLICY: &str = r#"{
  "policy_version": "svc-1",
  "rules": [
    {"name": "api", "match": {"path_prefix": "/api"},
     "limits": [{"name": "per_ip", "rate": 10, "per": "1m"}, {"name": "small", "rate": 3, "per": "1m"}],
     "key": ["client_address"]},
    {"name": "fast", "match": {"path_prefix": "/fast"}, "limits": [{"name": "l", "rate": 2, "per": "1s"}]},
    {"name": "rapid", "match": {"path_prefix": "/rapid"}, "limits": [{"name": "l", "rate": 20, "per": "1s", "burst": 3}]},
    {"name": "bulk", "match": {"path_prefix": "/bulk"}, "limits": [{"name": "units", "rate": 10, "per_seconds": 3600, "burst": 10}]}
  ],
  "default": {"limits": [{"name": "d", "rate": 100, "per_seconds": 10}]}
}"#;

struct Setup {
    _dir: Scratch,
    redis: Redis,
    service: Service,
}

fn setup(tag: &str) -> Option<Setup> {
    let binary = redis_server_binary()?;
    let dir = Scratch::new(tag);
    let policy = dir.0.join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let redis = Redis::start(&binary, &dir.0);
    let service = Service::start(&policy, &redis.url(), &[]);
    Some(Setup { _dir: dir, redis, service })
}

fn code(response: &gatewarden_rate_limit_policy::rls::RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_of_many_concurrent_checks_are_admitted() {
    let Some(s) = setup("exact") else { return };
    let client = s.service.client().await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.check(request(1, &[("api/per_ip", &[("remote_address", "10.0.0.1")])])).await.unwrap() })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if code(&task.await.unwrap()) == Code::Ok {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "a limit of 10 per minute admits exactly 10 of 40 concurrent checks");
    // Another key has its own bucket.
    let other = client.clone().check(request(1, &[("api/per_ip", &[("remote_address", "10.0.0.2")])])).await.unwrap();
    assert_eq!(code(&other), Code::Ok);
    let status = &other.statuses[0];
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!((limit.name.as_str(), limit.requests_per_unit, limit.unit), ("api/per_ip", 10, Unit::Minute as i32));
    assert_eq!(status.limit_remaining, 9);
    let reset = status.duration_until_reset.unwrap();
    assert!(reset.seconds == 5 || reset.seconds == 6, "one unit used of 10/min resets in 6 s, got {reset:?}");
}

#[tokio::test]
async fn several_limits_deny_if_any_and_a_denied_check_charges_none() {
    let Some(s) = setup("deny-if-any") else { return };
    let mut c = s.service.client().await;
    let ip: &[(&str, &str)] = &[("remote_address", "10.0.0.9")];
    let both = || request(1, &[("api/per_ip", ip), ("api/small", ip)]);
    for i in 0..3 {
        assert_eq!(code(&c.check(both()).await.unwrap()), Code::Ok, "check {i}");
    }
    let denied = c.check(both()).await.unwrap();
    assert_eq!(code(&denied), Code::OverLimit);
    let codes: Vec<i32> = denied.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32], "only the exhausted limit is over");
    assert_eq!(denied.statuses[0].limit_remaining, 7, "per_ip was charged 3, not 4");
    assert_eq!(denied.statuses[1].limit_remaining, 0);
    // per_ip alone still has exactly 7.
    let mut ok = 0;
    for _ in 0..10 {
        if code(&c.check(request(1, &[("api/per_ip", ip)])).await.unwrap()) == Code::Ok {
            ok += 1;
        }
    }
    assert_eq!(ok, 7);
}

#[tokio::test]
async fn hits_addend_is_the_cost_and_a_cost_above_the_burst_never_passes() {
    let Some(s) = setup("cost") else { return };
    let mut c = s.service.client().await;
    let key: &[(&str, &str)] = &[("x-api-key", "k1")];
    let got: Vec<Code> = {
        let mut v = Vec::new();
        for hits in [4, 4, 4, 2, 0] {
            v.push(code(&c.check(request(hits, &[("bulk/units", key)])).await.unwrap()));
        }
        v
    };
    assert_eq!(got, [Code::Ok, Code::Ok, Code::OverLimit, Code::Ok, Code::OverLimit], "10 units: 4+4 pass, 4 not, 2 pass, then none");
    let fresh: &[(&str, &str)] = &[("x-api-key", "k2")];
    let over = c.check(request(11, &[("bulk/units", fresh)])).await.unwrap();
    assert_eq!(code(&over), Code::OverLimit, "11 > burst 10 on a full bucket");
    assert_eq!(over.statuses[0].limit_remaining, 10, "and charged nothing");
}

#[tokio::test]
async fn a_short_period_refills() {
    let Some(s) = setup("refill") else { return };
    let mut c = s.service.client().await;
    let fast = || request(1, &[("fast/l", &[])]);
    assert_eq!(code(&c.check(fast()).await.unwrap()), Code::Ok);
    assert_eq!(code(&c.check(fast()).await.unwrap()), Code::Ok);
    let denied = c.check(fast()).await.unwrap();
    assert_eq!(code(&denied), Code::OverLimit);
    assert!(denied.statuses[0].duration_until_reset.is_some());
    let mut client = c.clone();
    poll("a unit to refill (2 per second)", || {
        let mut c = client.clone();
        async move { (code(&c.check(request(1, &[("fast/l", &[])])).await.unwrap()) == Code::Ok).then_some(()) }
    })
    .await;
    // Refilled one unit at a time: just after an admission the bucket is empty again.
    assert_eq!(code(&client.check(fast()).await.unwrap()), Code::OverLimit);
}

#[tokio::test]
async fn unknown_limits_and_other_domains_are_ok_without_a_limit() {
    let Some(s) = setup("unknown") else { return };
    let mut c = s.service.client().await;
    let mut r = request(1, &[("api/nope", &[]), ("fast/l", &[])]);
    r.descriptors.push(gatewarden_rate_limit_policy::rls::RateLimitDescriptor::from_entries([("remote_address", "1.2.3.4")]));
    let answer = c.check(r).await.unwrap();
    assert_eq!(code(&answer), Code::Ok);
    assert_eq!(answer.statuses.len(), 3);
    assert_eq!(answer.statuses[0].current_limit, None, "an unknown limit");
    assert!(answer.statuses[1].current_limit.is_some(), "a known one");
    assert_eq!(answer.statuses[2].current_limit, None, "no gatewarden_limit entry");
    let mut other = request(50, &[("fast/l", &[])]);
    other.domain = "someone-else".into();
    let answer = c.check(other).await.unwrap();
    assert_eq!((code(&answer), answer.statuses[0].current_limit.clone()), (Code::Ok, None));
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_or_400() {
    let Some(s) = setup("malformed") else { return };
    let mut c = s.service.client().await;
    let mut no_domain = request(1, &[("fast/l", &[])]);
    no_domain.domain.clear();
    assert_eq!(c.check(no_domain).await.unwrap_err().code(), GrpcCode::InvalidArgument);
    let none = RateLimitRequest { domain: "gatewarden".into(), descriptors: vec![], hits_addend: 1 };
    let error = c.check(none).await.unwrap_err();
    assert_eq!((error.code(), error.message()), (GrpcCode::InvalidArgument, "rate limit descriptor list must not be empty"));
    for body in ["not json", "[]", r#"{"domain": 5}"#, r#"{"domain":"gatewarden"}"#, r#"{"domain":"","descriptors":[{"entries":[]}]}"#] {
        assert_eq!(s.service.json(body), (400, "Bad Request\n".to_owned()), "body {body}");
    }
    let (status, _) = common::http(s.service.http, "GET", "/json", "");
    assert_eq!(status, 405);
    let huge = format!(r#"{{"domain":"gatewarden","descriptors":[{{"entries":[{{"key":"k","value":"{}"}}]}}]}}"#, "v".repeat(300_000));
    assert_eq!(s.service.json(&huge).0, 413, "a body above 256 KiB is refused before it is read whole");
    let metrics = common::http(s.service.http, "GET", "/metrics", "").1;
    assert!(metrics.contains(r#"gatewarden_ratelimit_checks_total{result="invalid"} 7"#), "{metrics}");
}

#[tokio::test]
async fn json_endpoint_answers_200_then_429_in_protojson() {
    let Some(s) = setup("json") else { return };
    let body = json::request_to_json(&request(2, &[("fast/l", &[("remote_address", "10.1.1.1")])]));
    let (status, answer) = s.service.json(&body);
    assert_eq!(status, 200, "{answer}");
    let parsed = json::response_from_http(status, answer.as_bytes()).unwrap();
    assert_eq!(code(&parsed), Code::Ok);
    assert_eq!(parsed.statuses[0].current_limit.as_ref().map(|l| (l.requests_per_unit, l.unit)), Some((2, Unit::Second as i32)));
    assert!(answer.contains(r#""overallCode":"OK""#), "{answer}");
    let (status, answer) = s.service.json(&body);
    assert_eq!(status, 429, "{answer}");
    assert!(answer.contains(r#""overallCode":"OVER_LIMIT""#) && answer.contains(r#""name":"fast/l""#), "{answer}");
    // The snake_case spelling envoyproxy/ratelimit also reads.
    let (status, _) = s.service.json(r#"{"domain":"gatewarden","descriptors":[{"entries":[{"key":"k","value":"v"}]}],"hits_addend":1}"#);
    assert_eq!(status, 200);
}

#[tokio::test]
async fn redis_down_is_unavailable_and_500_without_hanging_then_recovers() {
    let Some(mut s) = setup("down") else { return };
    let mut c = s.service.client().await;
    let check = || request(1, &[("api/per_ip", &[("remote_address", "10.2.2.2")])]);
    assert_eq!(code(&c.check(check()).await.unwrap()), Code::Ok);
    assert_eq!(s.service.health(), (200, "OK".to_owned()));

    s.redis.stop();
    let error = c.check(check()).await.unwrap_err();
    assert_eq!(error.code(), GrpcCode::Unavailable, "{error:?}");
    let body = json::request_to_json(&check());
    assert_eq!(s.service.json(&body), (500, "Internal Server Error\n".to_owned()));
    assert_eq!(s.service.health().0, 500);
    // A check that needs no Redis (no known limit) is still answered.
    assert_eq!(code(&c.check(request(1, &[("api/nope", &[])])).await.unwrap()), Code::Ok);

    s.redis.restart();
    let mut client = c.clone();
    poll("the service to reconnect to the restarted Redis", || {
        let mut c = client.clone();
        async move { c.check(request(1, &[("api/per_ip", &[("remote_address", "10.2.2.2")])])).await.ok() }
    })
    .await;
    assert_eq!(code(&client.check(check()).await.unwrap()), Code::Ok, "a fresh Redis has fresh buckets");
    assert_eq!(s.service.health(), (200, "OK".to_owned()));
}

#[tokio::test]
async fn a_paused_redis_times_out_as_unavailable_then_recovers() {
    let Some(s) = setup("paused") else { return };
    let mut c = s.service.client().await;
    let check = || request(1, &[("api/per_ip", &[("remote_address", "10.3.3.3")])]);
    assert_eq!(code(&c.check(check()).await.unwrap()), Code::Ok);
    s.redis.pause(true);
    // The service's own bound (--redis-timeout-ms 2000: a loaded CI machine must not time out a healthy Redis)
    // answers; the client's hang guard (20 s) is far longer.
    let error = c.check(check()).await.unwrap_err();
    assert_eq!(error.code(), GrpcCode::Unavailable);
    assert_eq!(s.service.health().0, 500);
    s.redis.pause(false);
    let client = c.clone();
    poll("checks to succeed once Redis answers again", || {
        let mut c = client.clone();
        async move { c.check(request(1, &[("api/per_ip", &[("remote_address", "10.3.3.3")])])).await.ok() }
    })
    .await;
    let answer = c.check(check()).await.unwrap();
    assert!(answer.statuses[0].limit_remaining <= 7, "the buckets survived the pause: {:?}", answer.statuses[0]);
}

#[tokio::test]
async fn sighup_reloads_the_policy_and_keeps_unchanged_limits_state() {
    let Some(s) = setup("reload") else { return };
    let mut c = s.service.client().await;
    let ip: &[(&str, &str)] = &[("remote_address", "10.4.4.4")];
    for _ in 0..3 {
        c.check(request(1, &[("api/per_ip", ip)])).await.unwrap();
    }
    let policy = s._dir.0.join("policy.json");
    std::fs::write(&policy, POLICY.replace(r#""name": "fast""#, r#""name": "quick""#)).unwrap();
    s.service.signal("-HUP");
    let client = c.clone();
    poll("the reload to serve quick/l", || {
        let mut c = client.clone();
        async move { c.check(request(1, &[("quick/l", &[])])).await.ok().filter(|r| r.statuses[0].current_limit.is_some()) }
    })
    .await;
    let unchanged = c.check(request(1, &[("api/per_ip", ip)])).await.unwrap();
    assert_eq!(unchanged.statuses[0].limit_remaining, 6, "api/per_ip kept its 3 charges and took a fourth");
    assert_eq!(c.check(request(1, &[("fast/l", &[])])).await.unwrap().statuses[0].current_limit, None, "fast/l is gone");
    // A refused file keeps the limits in force.
    std::fs::write(&policy, r#"{"policy_version": "bad", "rules": [{"limits": [{"name": "x", "rate": 0, "per": "1s"}]}]}"#).unwrap();
    s.service.signal("-HUP");
    poll("the refused reload to be counted", || async {
        let (_, m) = common::http(s.service.http, "GET", "/metrics", "");
        m.contains("gatewarden_ratelimit_reload_refused_total 1").then_some(())
    })
    .await;
    assert!(c.check(request(1, &[("quick/l", &[])])).await.unwrap().statuses[0].current_limit.is_some());
}

#[tokio::test]
async fn sigterm_right_after_start_stops_the_service_cleanly() {
    let Some(mut s) = setup("sigterm") else { return };
    let status = s.service.terminate();
    assert!(status.success(), "exit status {status:?}: the signal must be handled, not kill the process");
}

/// The Lua script against `gcra::admit_all` on the very states and time Redis reports, over a sequence
/// that admits, denies and refills, on several limits at once; and every key it writes expires when its
/// bucket is full again.
#[tokio::test]
async fn the_lua_script_is_gcra_admit_all() {
    let Some(binary) = redis_server_binary() else { return };
    let dir = Scratch::new("lua");
    let redis = Redis::start(&binary, &dir.0);
    let store = RedisStore::new(&redis.url(), Duration::from_secs(5)).unwrap();
    let book = LimitBook::from_policy(POLICY.as_bytes()).unwrap();
    let make = |hits: u32| -> Plan {
        let ip: &[(&str, &str)] = &[("remote_address", "10.5.5.5")];
        plan(&request(hits, &[("fast/l", &[]), ("rapid/l", ip), ("default/d", ip)]), &book, "gatewarden").unwrap()
    };
    let limits: Vec<Limit> = make(1).buckets.iter().map(|b| b.limit).collect();
    let mut states = vec![0u64; limits.len()];
    let mut admitted = 0;
    let mut denied = 0;
    let mut conn = redis.connection().await;
    for (i, hits) in [1u32, 0, 2, 1, 1, 3, 1, 0, 11, 1, 1].iter().cycle().take(40).enumerate() {
        let p = make(*hits);
        let outcome = store.check(&p).await.unwrap();
        let expected = gcra::admit_all(&states, outcome.now_us, &limits, p.cost);
        // A TAT at or before now is a full bucket, the same as an expired key (0).
        let full = |states: &[u64]| -> Vec<u64> { states.iter().map(|&s| if s <= outcome.now_us { 0 } else { s }).collect() };
        assert_eq!((outcome.admitted, full(&outcome.states)), (expected.admitted(), full(&expected.states)), "step {i}, cost {}", p.cost);
        states = outcome.states.clone();
        if outcome.admitted {
            admitted += 1;
        } else {
            denied += 1;
        }
        for (bucket, state) in p.buckets.iter().zip(&states) {
            let pttl: i64 = redis::cmd("PTTL").arg(&bucket.key).query_async(&mut conn).await.unwrap();
            let reset_ms = gcra::reset_us(*state, outcome.now_us).div_ceil(1000) as i64;
            // +2: Redis keeps expiry times in whole ms.
            assert!(
                pttl == -2 || (0..=reset_ms + 2).contains(&pttl),
                "step {i}: {} has PTTL {pttl}, its bucket is full in {reset_ms} ms",
                bucket.key
            );
        }
        // Time passes between checks (not asserted: the states and `now` Redis reports are compared).
        tokio::time::sleep(Duration::from_millis(if i % 4 == 3 { 400 } else { 30 })).await;
    }
    assert!(admitted > 3 && denied > 3, "the sequence must exercise both: {admitted} admitted, {denied} denied");
    // A flushed script cache (a restarted Redis keeps keys only with persistence) is reloaded on NOSCRIPT.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    store.check(&make(0)).await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("gw:rl:*").query_async(&mut conn).await.unwrap();
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!(pttl >= 0 || pttl == -2, "{key} has no expiry ({pttl}): memory would grow with every key ever seen");
    }
}
