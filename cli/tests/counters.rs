//! `gatewarden counters`: the metric names the release modules define, as each host shows them.
//! The modules come from GATEWARDEN_WASM_DIR, default target/wasm32-wasip1/release
//! (scripts/build.sh builds them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::{modules_dir, run};

fn module(name: &str) -> String {
    modules_dir().join(format!("gatewarden_{name}.wasm")).to_string_lossy().into_owned()
}

fn names(args: &[&str]) -> Vec<String> {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "no warning expected");
    out.lines().map(str::to_string).collect()
}

/// Counters every filter defines (shared glue), beside its own.
const COMMON: &[&str] = &[
    "allowed",
    "denied",
    "dry_run_denied",
    "config_accepted",
    "config_rejected",
    "no_policy",
    "host_error",
    "rollout_active",
    "rollout_candidate",
    "candidate_allowed",
    "candidate_denied",
    "candidate_dry_run_denied",
    "shadow_agreed",
    "shadow_disagreed",
    "signature_rejected",
    "trust_config_rejected",
];

fn assert_defines(filter: &str, list: &[String], own: &[&str]) {
    let mut sorted = list.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(&sorted, list, "sorted by name, each once");
    for outcome in COMMON.iter().chain(own) {
        let want = format!("gatewarden_{filter}_{outcome}");
        assert!(list.contains(&want), "{want} missing from {list:?}");
    }
    let prefix = format!("gatewarden_{filter}_");
    assert!(list.iter().all(|n| n.starts_with(&prefix)), "{list:?}");
}

#[test]
fn ip_geo_counters() {
    let list = names(&["counters", "--module", &module("ip_geo")]);
    assert_defines(
        "ip_geo",
        &list,
        &[
            "denied_ip_denied",
            "denied_ip_not_allowed",
            "denied_country_denied",
            "denied_country_not_allowed",
            "denied_country_unknown",
            "denied_geo_unavailable",
            "denied_client_address_invalid",
            "dry_run_denied_country_denied",
            "geo_db_fetch_started",
            "geo_db_fetch_succeeded",
            "geo_db_fetch_failed",
            "geo_db_loaded",
            "geo_db_load_failed",
        ],
    );
}

#[test]
fn jwt_counters() {
    let list = names(&["counters", "--module", &module("jwt")]);
    assert_defines(
        "jwt",
        &list,
        &[
            "denied_missing",
            "denied_expired",
            "denied_bad_signature",
            "denied_scope",
            "denied_audience",
            "denied_jwks_unavailable",
            "dry_run_denied_scope",
            "jwks_fetch_started",
            "jwks_fetch_failed",
            "jwks_loaded",
            "jwks_load_failed",
        ],
    );
}

#[test]
fn host_prefixes_name_each_metric_as_the_host_exposes_it() {
    let plain = names(&["counters", "--module", &module("jwt")]);
    let envoy = names(&["counters", "--module", &module("jwt"), "--host-prefix", "envoy"]);
    let kong = names(&["counters", "--module", &module("jwt"), "--host-prefix", "kong"]);
    let renamed = names(&["counters", "--module", &module("jwt"), "--host-prefix", "kong", "--module-name", "jwt_auth"]);
    assert!(envoy.contains(&"wasmcustom.gatewarden_jwt_allowed".to_string()), "{envoy:?}");
    assert!(kong.contains(&"pw:gatewarden_jwt:gatewarden_jwt_allowed".to_string()), "{kong:?}");
    assert_eq!(envoy, plain.iter().map(|n| format!("wasmcustom.{n}")).collect::<Vec<_>>());
    assert_eq!(kong, plain.iter().map(|n| format!("pw:gatewarden_jwt:{n}")).collect::<Vec<_>>());
    assert_eq!(renamed, plain.iter().map(|n| format!("pw:jwt_auth:{n}")).collect::<Vec<_>>());
}

#[test]
fn a_module_without_metrics_prints_nothing() {
    let m = module("floor");
    let (code, out, err) = run(&["counters", "--module", &m]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(err, format!("gatewarden counters: {m} defines no metrics\n"));
}

#[test]
fn bad_arguments_exit_two() {
    let (code, out, err) = run(&["counters", "--module", "/nonexistent/gatewarden_x.wasm"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "gatewarden counters: /nonexistent/gatewarden_x.wasm: cannot read the module: No such file or directory (os error 2)\n"
    );
    let (code, _, err) = run(&["counters", "--module", &module("jwt"), "--host-prefix", "istio"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: invalid value 'istio' for '--host-prefix <HOST_PREFIX>'"), "{err}");
    let (code, _, err) = run(&["counters", "--module", &module("jwt"), "--host-prefix", "kong", "--module-name", "a:b"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "gatewarden counters: --module-name: module name \"a:b\": character ':' not allowed (ngx_wasm_module refuses spaces, tabs and colons; use letters, digits, '_', '-', '.')\n"
    );
    let (code, _, err) = run(&["counters"]);
    assert_eq!(code, 2);
    assert!(err.contains("--module <PATH.wasm>"), "{err}");
}
