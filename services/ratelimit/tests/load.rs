//! Checks per second of the service against a local Redis: a tokio client loop over gRPC (ghz is not on
//! this machine). Ignored by default: a measurement, not a test. Run it in release (the figure of a debug
//! build means little):
//!
//! ```text
//! cargo test --release -p gatewarden-ratelimit --test load -- --ignored --nocapture
//! LOAD_SECONDS=10 LOAD_CONCURRENCY=64 LOAD_KEYS=10000 cargo test --release ... (the defaults: 5, 32, 1000)
//! ```
//!
//! Prints one line: checks/s, OK and OVER_LIMIT counts, p50/p99 latency, and the load average.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{redis_server_binary, request, Redis, Scratch, Service};
use gatewarden_rate_limit_policy::rls::Code;

const POLICY: &str = r#"{"policy_version": "load-1", "rules": [{"name": "api", "key": ["client_address"],
  "limits": [{"name": "per_ip", "rate": 100, "per": "1s"}, {"name": "hourly", "rate": 100000, "per": "1h"}]}]}"#;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: cargo test --release -p gatewarden-ratelimit --test load -- --ignored --nocapture"]
async fn checks_per_second_against_redis() {
    let Some(binary) = redis_server_binary() else { return };
    let (seconds, concurrency, keys) = (env("LOAD_SECONDS", 5), env("LOAD_CONCURRENCY", 32), env("LOAD_KEYS", 1000));
    let dir = Scratch::new("load");
    let policy = dir.0.join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let redis = Redis::start(&binary, &dir.0);
    let service = Service::start(&policy, &redis.url(), &["--redis-timeout-ms", "1000"]);
    let client = service.client().await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut over, mut latencies) = (0u64, 0u64, Vec::new());
                let mut i = task;
                while Instant::now() < deadline {
                    let ip = format!("10.{}.{}.{}", (i % keys) >> 16 & 255, (i % keys) >> 8 & 255, (i % keys) & 255);
                    let started = Instant::now();
                    let answer =
                        c.check(request(1, &[("api/per_ip", &[("remote_address", ip.as_str())]), ("api/hourly", &[])])).await.unwrap();
                    latencies.push(started.elapsed());
                    if answer.overall_code == Code::Ok as i32 {
                        ok += 1;
                    } else {
                        over += 1;
                    }
                    i += concurrency;
                }
                (ok, over, latencies)
            })
        })
        .collect();
    let (mut ok, mut over, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (o, v, l) = task.await.unwrap();
        ok += o;
        over += v;
        latencies.extend(l);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "gatewarden-ratelimit: {:.0} checks/s over gRPC ({seconds} s, {concurrency} concurrent, {keys} keys, 2 descriptors per check; \
         {ok} OK, {over} OVER_LIMIT), p50 {:?}, p99 {:?}; loadavg {}",
        (ok + over) as f64 / seconds as f64,
        at(0.5),
        at(0.99),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    assert!(ok > 0, "nothing admitted");
}
