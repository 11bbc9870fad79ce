//! Clock, ticks, metrics, logs, host-call records, properties, bodies, parallel hosts.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{configured_vm, host};
use gatewarden_wasm_host::{HttpResponse, LogLevel, LogSource, MetricKind, Profile, Request};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[test]
fn module_reads_the_controllable_clock() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    host.set_time(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
    let outcome = vm.http_request(Request::get("/")).unwrap();
    assert_eq!(outcome.upstream_header("x-now-ms"), Some("1700000000123"));
    host.advance(Duration::from_secs(60));
    let outcome = vm.http_request(Request::get("/")).unwrap();
    assert_eq!(outcome.upstream_header("x-now-ms"), Some("1700000060123"));
    assert_eq!(host.now(), UNIX_EPOCH + Duration::from_millis(1_700_000_060_123));
}

#[test]
fn tick_fires_on_roots_that_asked_for_it() {
    let host = host(Profile::Envoy);
    let vm = configured_vm(&host, "t");
    let _second = configured_vm(&host, "t");
    assert_eq!(vm.tick_periods().values().copied().collect::<Vec<_>>(), vec![1000]);
    assert_eq!(host.call_count("proxy_set_tick_period_milliseconds"), 2);
    vm.tick().unwrap();
    assert_eq!(host.metric_value("echo_ticks"), 1);
    host.tick().unwrap();
    assert_eq!(host.metric_value("echo_ticks"), 3, "host.tick ticks both VMs");
}

#[test]
fn metrics_of_each_kind_are_recorded() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    vm.http_request(Request::get("/").body("hello")).unwrap();
    vm.http_request(Request::get("/").upstream(HttpResponse::new(404))).unwrap();
    let requests = host.metric("echo_requests").unwrap();
    assert_eq!((requests.kind, requests.value), (MetricKind::Counter, 2));
    let status = host.metric("echo_last_status").unwrap();
    assert_eq!((status.kind, status.value), (MetricKind::Gauge, 404));
    let sizes = host.metric("echo_body_size").unwrap();
    assert_eq!((sizes.kind, sizes.samples.clone()), (MetricKind::Histogram, vec![5]));
    assert_eq!(host.metric_value("never_defined"), 0);
}

#[test]
fn logs_are_recorded_with_levels_and_filtered_by_host_level() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    vm.http_request(Request::get("/path-a")).unwrap();
    let logs = host.logs();
    let line = logs.iter().find(|l| l.message == "request path=/path-a").expect("request log line");
    assert_eq!((line.level, line.source, line.vm), (LogLevel::Info, LogSource::ProxyLog, vm.index()));

    host.clear_logs();
    host.set_log_level(LogLevel::Warn);
    let outcome = vm.http_request(Request::get("/path-b").header("x-log-level", "1").header("x-deny", "403")).unwrap();
    assert_eq!(outcome.upstream_header("x-host-log-level"), None);
    assert!(host.logs().iter().all(|l| l.level >= LogLevel::Warn), "{:?}", host.logs());
    assert!(host.logs().iter().any(|l| l.message == "denying with 403"));
}

#[test]
fn module_sees_the_host_log_level() {
    let host = host(Profile::Envoy);
    host.set_log_level(LogLevel::Error);
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::get("/").header("x-log-level", "1")).unwrap();
    assert_eq!(outcome.upstream_header("x-host-log-level"), Some("Error"));
}

#[test]
fn host_calls_are_recorded_in_order() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    host.clear_calls();
    vm.http_request(Request::get("/")).unwrap();
    let calls = host.calls();
    assert!(!calls.is_empty());
    assert_eq!(calls[0].name, "proxy_increment_metric", "first crossing of on_request_headers");
    assert!(host.call_count("proxy_get_header_map_value") >= 3);
    assert_eq!(host.call_count("proxy_get_property"), 3);
    assert!(calls.iter().all(|call| call.vm == vm.index()));
}

#[test]
fn properties_follow_the_profile() {
    let cases = [(Profile::Envoy, "192.0.2.7:4242"), (Profile::Kong, "192.0.2.7")];
    for (profile, expected) in cases {
        let host = host(profile);
        let mut vm = configured_vm(&host, "t");
        let outcome = vm.http_request(Request::get("/").source("192.0.2.7:4242").header("x-request-id", "rid-1")).unwrap();
        assert_eq!(outcome.upstream_header("x-source-address"), Some(expected), "{profile:?}");
        assert_eq!(outcome.upstream_header("x-request-id-seen"), Some("rid-1"));
        assert_eq!(outcome.upstream_header("x-plugin-name"), Some("echo_root"));
        let outcome = vm.http_request(Request::get("/")).unwrap();
        assert_eq!(outcome.upstream_header("x-source-address"), Some("<none>"), "missing = NotFound");
        let outcome = vm.http_request(Request::get("/").property("source.address", "scripted")).unwrap();
        assert_eq!(outcome.upstream_header("x-source-address"), Some("scripted"));
    }
}

#[test]
fn request_body_can_be_rewritten() {
    let host = host(Profile::Envoy);
    let mut vm = configured_vm(&host, "t");
    let outcome = vm.http_request(Request::new("POST", "/").body("hello").header("x-upper-body", "1")).unwrap();
    assert_eq!(outcome.upstream_request.unwrap().body.as_deref(), Some(&b"HELLO"[..]));
}

#[test]
fn hosts_in_parallel_threads_are_independent() {
    let threads: Vec<_> = (0..4u64)
        .map(|n| {
            std::thread::spawn(move || {
                let host = host(Profile::Envoy);
                host.set_time(SystemTime::UNIX_EPOCH + Duration::from_secs(n));
                let mut vm = configured_vm(&host, &format!("thread-{n}"));
                for _ in 0..=n {
                    let outcome = vm.http_request(Request::get("/")).unwrap();
                    assert_eq!(outcome.upstream_header("x-echo-config"), Some(format!("thread-{n}").as_str()));
                    assert_eq!(outcome.upstream_header("x-now-ms"), Some((n * 1000).to_string().as_str()));
                }
                host.metric_value("echo_requests")
            })
        })
        .collect();
    let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(counts, vec![1, 2, 3, 4]);
}
