//! Every limit docs/jwt.md states for the JWT filter, reached through the built module
//! (target/wasm32-wasip1/release/gatewarden_jwt.wasm) in the Wasm test host:
//! - 64 keys per JWKS: the 65th key is skipped (logged), the first 64 verify;
//! - 8 keys tried for a token without `kid`: a token signed by the 9th candidate key is refused;
//! - RSA keys of 2048–4096 bits: 2047 and 4097 bits are skipped, a set of only such a key is refused;
//! - claim headers of at most 8192 bytes (`claim_to_headers`): one byte more is not forwarded;
//! - a JWKS of at most `max_bytes`: one byte more is a failed fetch, requests follow `failure_mode`;
//! - `timeout_ms` is the timeout of the JWKS callout; a callout the host ends without a response
//!   (Kong's engine on timeout) or with Envoy's own 504 is a failed fetch, retried after
//!   `retry_seconds` (sooner when a request needs the missing key set, at most once per
//!   `unknown_kid_refetch_seconds`). scripts/e2e/test_claims.py times a real fetch out on both hosts.
//! - at most 4 different tokens per request and provider (a 5th is `multiple_tokens`), token
//!   values are not percent-decoded, requirements nest up to 8 deep.
//!
//! Tokens are EdDSA (Ed25519), signed here with keys from fixed seeds, so the test needs no
//! fixture files; claims: iss https://idp.example.com, aud api, sub user-1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use ed25519_compact::{KeyPair, Seed};
use gatewarden_wasm_host::{Host, HttpResponse, Module, Outcome, Profile, Request, Vm, VmOptions};
use serde_json::{json, Value};

const CLUSTER: &str = "jwks";
const JWKS_PATH: &str = "/jwks.json";
const ISS: &str = "https://idp.example.com";
const NOW: u64 = 1_700_000_100;
/// docs/jwt.md "Limits" (and shared/policy/src/jwt: `MAX_KEYS`, `MAX_KEYS_TRIED`,
/// `MAX_CLAIM_HEADER_BYTES`).
const MAX_KEYS: usize = 64;
const MAX_KEYS_TRIED: usize = 8;
const MAX_CLAIM_HEADER_BYTES: usize = 8192;

fn module() -> &'static Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE.get_or_init(|| common::filter_module("gatewarden-jwt"))
}

/// Ed25519 key number `n` (seed: 32 bytes of n+1).
fn key(n: usize) -> KeyPair {
    KeyPair::from_seed(Seed::new([u8::try_from(n + 1).unwrap(); 32]))
}

/// The public JWK of key `n`, with `kid` when given.
fn jwk(n: usize, kid: Option<&str>) -> Value {
    let mut k = json!({"kty": "OKP", "crv": "Ed25519", "x": common::b64url(key(n).pk.as_ref())});
    if let Some(kid) = kid {
        k["kid"] = json!(kid);
    }
    k
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": "api", "sub": "user-1", "iat": NOW - 100, "exp": NOW + 3600})
}

/// An EdDSA token over `claims`, signed by key `n`, with `kid` in its header when given.
fn token(n: usize, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "EdDSA", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let input = format!("{}.{}", common::b64url(header.to_string().as_bytes()), common::b64url(claims.to_string().as_bytes()));
    let sig = key(n).sk.sign(input.as_bytes(), None);
    format!("{input}.{}", common::b64url(sig.as_ref()))
}

fn host() -> Host {
    let host = Host::new(Profile::Envoy);
    host.add_cluster(CLUSTER);
    host.set_time(UNIX_EPOCH + Duration::from_secs(NOW));
    host
}

fn policy(keys: Value) -> Value {
    let mut provider = json!({
        "issuer": ISS,
        "audiences": ["api"],
        "max_token_bytes": 65536,
        "claim_to_headers": [{"claim": "blob", "header": "x-blob"}, {"claim": "sub", "header": "x-user"}]
    });
    provider.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
    json!({
        "policy_version": "limits-1",
        "providers": {"idp": provider},
        "default": {"requires": {"provider": "idp"}}
    })
}

fn remote(extra: Value) -> Value {
    let mut r = json!({"cluster": CLUSTER, "path": JWKS_PATH});
    r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    policy(json!({"remote_jwks": r}))
}

fn load(host: &Host, policy: &Value) -> (Vm, bool) {
    let mut vm = host.load_vm(module(), VmOptions::new("gatewarden_jwt").vm_id("gatewarden_jwt")).unwrap();
    let accepted = vm.configure(policy.to_string().as_bytes()).unwrap();
    (vm, accepted)
}

fn vm(host: &Host, policy: &Value) -> Vm {
    let (vm, accepted) = load(host, policy);
    assert!(accepted, "policy refused: {:#?}", host.logs());
    vm
}

/// A VM whose remote JWKS `set` has been fetched and loaded.
fn vm_with_remote_set(host: &Host, set: &Value) -> Vm {
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(200).body(set.to_string()));
    let vm = vm(host, &remote(json!({})));
    vm.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    vm.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_loaded"), 1, "{:#?}", host.logs());
    vm
}

fn send(vm: &mut Vm, token: &str) -> Outcome {
    vm.http_request(Request::get("/api").source("10.0.0.1:5000").header("authorization", &format!("Bearer {token}"))).unwrap()
}

fn last_reason(host: &Host) -> String {
    host.logs()
        .iter()
        .rev()
        .find_map(|l| l.message.find("{\"gatewarden\":\"decision\"").map(|i| serde_json::from_str::<Value>(&l.message[i..]).unwrap()))
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn assert_refused(host: &Host, out: &Outcome, reason: &str, what: &str) {
    let status = out.local_response.as_ref().map(|r| r.status);
    assert_eq!(status, Some(401), "{what}: {out:?}");
    assert_eq!(last_reason(host), reason, "{what}");
}

/// The key count of the loaded JWKS, from the "… loaded (N keys …)" log line.
fn keys_loaded(host: &Host) -> Option<usize> {
    host.logs().iter().find_map(|l| {
        let m = &l.message;
        if !(m.contains("generation 1") && m.contains("loaded")) {
            return None;
        }
        let (_, rest) = m.rsplit_once('(')?;
        rest.split_once(" keys")?.0.parse().ok()
    })
}

fn logged(host: &Host, text: &str) -> bool {
    host.logs().iter().any(|l| l.message.contains(text))
}

#[test]
fn a_jwks_keeps_64_keys_and_skips_the_65th() {
    let host = host();
    let keys: Vec<Value> = (0..=MAX_KEYS).map(|n| jwk(n, Some(&format!("k{n}")))).collect();
    let mut vm = vm_with_remote_set(&host, &json!({ "keys": keys }));
    assert_eq!(keys_loaded(&host), Some(MAX_KEYS), "{:#?}", host.logs());
    assert!(logged(&host, r#"keys[64] (kid "k64") skipped: more than 64 keys"#), "{:#?}", host.logs());
    for n in [0, MAX_KEYS - 1] {
        let kid = format!("k{n}");
        let out = send(&mut vm, &token(n, Some(&kid), &claims()));
        assert_eq!(out.status, 200, "key {n} of 64 verifies: {out:?}");
    }
    let out = send(&mut vm, &token(MAX_KEYS, Some("k64"), &claims()));
    assert_refused(&host, &out, "unknown_kid", "the 65th key was skipped");
}

#[test]
fn a_token_without_kid_is_tried_against_at_most_8_keys() {
    let host = host();
    let keys: Vec<Value> = (0..=MAX_KEYS_TRIED).map(|n| jwk(n, None)).collect();
    let mut vm = vm(&host, &policy(json!({"local_jwks": {"keys": keys}})));
    for n in [0, MAX_KEYS_TRIED - 1] {
        let out = send(&mut vm, &token(n, None, &claims()));
        assert_eq!(out.status, 200, "key {n} is among the first 8: {out:?}");
    }
    let out = send(&mut vm, &token(MAX_KEYS_TRIED, None, &claims()));
    assert_refused(&host, &out, "bad_signature", "the 9th key is never tried");
    // With a kid, the same 9th key verifies: the limit is on keys tried, not on the set.
    let keys: Vec<Value> = (0..=MAX_KEYS_TRIED).map(|n| jwk(n, Some(&format!("k{n}")))).collect();
    let mut vm = self::vm(&host, &policy(json!({"local_jwks": {"keys": keys}})));
    let out = send(&mut vm, &token(MAX_KEYS_TRIED, Some("k8"), &claims()));
    assert_eq!(out.status, 200, "selected by kid: {out:?}");
}

/// An RSA public JWK whose modulus is `2^bits - 1` (odd, exactly `bits` bits) and e = 65537.
fn rsa_jwk(bits: usize, kid: &str) -> Value {
    let mut n = vec![0xffu8; bits.div_ceil(8)];
    if !bits.is_multiple_of(8) {
        n[0] = (1u8 << (bits % 8)) - 1;
    }
    json!({"kty": "RSA", "kid": kid, "n": common::b64url(&n), "e": common::b64url(&[1, 0, 1])})
}

#[test]
fn rsa_keys_outside_2048_to_4096_bits_are_skipped() {
    let host = host();
    let set = json!({"keys": [
        rsa_jwk(2047, "rsa-2047"), rsa_jwk(2048, "rsa-2048"), rsa_jwk(4096, "rsa-4096"),
        rsa_jwk(4097, "rsa-4097"), jwk(0, Some("ed"))
    ]});
    let mut vm = vm_with_remote_set(&host, &set);
    assert_eq!(keys_loaded(&host), Some(3), "2048, 4096 and the Ed25519 key kept: {:#?}", host.logs());
    for (i, kid) in [(0, "rsa-2047"), (3, "rsa-4097")] {
        assert!(logged(&host, &format!(r#"keys[{i}] (kid "{kid}") skipped: invalid RSA key"#)), "{kid}: {:#?}", host.logs());
    }
    // A token for the skipped key is an unknown kid; the kept keys still serve.
    let rs = json!({"alg": "RS256", "kid": "rsa-4097"}).to_string();
    let forged =
        format!("{}.{}.{}", common::b64url(rs.as_bytes()), common::b64url(claims().to_string().as_bytes()), common::b64url(&[7; 513]));
    assert_refused(&host, &send(&mut vm, &forged), "unknown_kid", "4097-bit key skipped");
    assert_eq!(send(&mut vm, &token(0, Some("ed"), &claims())).status, 200);

    // A local set whose only key is too large: the policy is refused, naming the key.
    let host = self::host();
    let (_vm, accepted) = load(&host, &policy(json!({"local_jwks": {"keys": [rsa_jwk(4097, "big")]}})));
    assert!(!accepted, "a JWKS with no usable key is refused");
    assert!(
        logged(&host, "providers.idp.local_jwks: invalid JWKS: no usable key in the JWKS (keys[0]: invalid RSA key"),
        "{:#?}",
        host.logs()
    );
    let (_vm, accepted) = load(&host, &policy(json!({"local_jwks": {"keys": [rsa_jwk(4096, "max")]}})));
    assert!(accepted, "4096 bits is within the limit: {:#?}", host.logs());
}

#[test]
fn claim_headers_of_at_most_8192_bytes_are_forwarded() {
    let host = host();
    let mut vm = vm(&host, &policy(json!({"local_jwks": {"keys": [jwk(0, None)]}})));
    let with_blob = |len: usize| {
        let mut c = claims();
        c["blob"] = json!("b".repeat(len));
        token(0, None, &c)
    };
    let out = send(&mut vm, &with_blob(MAX_CLAIM_HEADER_BYTES));
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.upstream_header("x-blob").map(str::len), Some(MAX_CLAIM_HEADER_BYTES), "8192 bytes are forwarded");
    let out = send(&mut vm, &with_blob(MAX_CLAIM_HEADER_BYTES + 1));
    assert_eq!(out.status, 200, "an oversized claim does not fail the request: {out:?}");
    assert_eq!(out.upstream_header("x-blob"), None, "8193 bytes are not forwarded");
    assert_eq!(out.upstream_header("x-user"), Some("user-1"), "the other claim headers are");
}

#[test]
fn a_jwks_larger_than_max_bytes_is_a_failed_fetch() {
    let set = json!({"keys": [jwk(0, None)]}).to_string();
    let len = set.len();

    let host = host();
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(200).body(set.clone()));
    let mut vm = vm(&host, &remote(json!({"max_bytes": len - 1})));
    vm.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    vm.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_failed"), 1);
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_loaded"), 0);
    let why = format!("response of {len} bytes exceeds max_bytes {}", len - 1);
    assert!(logged(&host, &why), "{why}: {:#?}", host.logs());
    assert_refused(&host, &send(&mut vm, &token(0, None, &claims())), "jwks_unavailable", "no key set (failure_mode deny)");

    // Exactly max_bytes is loaded.
    let host = self::host();
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(200).body(set));
    let mut vm = self::vm(&host, &remote(json!({"max_bytes": len})));
    vm.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    vm.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_loaded"), 1, "{:#?}", host.logs());
    assert_eq!(send(&mut vm, &token(0, None, &claims())).status, 200);
}

#[test]
fn timeout_ms_is_the_callout_timeout_and_no_response_is_a_failed_fetch() {
    let host = host();
    let set = json!({"keys": [jwk(0, None)]});
    host.script_http_failure(CLUSTER, JWKS_PATH);
    let mut vm = vm(&host, &remote(json!({"timeout_ms": 1234, "retry_seconds": 10})));
    vm.tick().unwrap();
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].timeout, Duration::from_millis(1234), "the host is asked to time out the callout");
    // The host ends the callout without a response, as Kong's engine does when the timeout fires
    // (Envoy answers 504 itself: below).
    host.deliver_pending_calls().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_failed"), 1);
    assert!(logged(&host, "failed: no response (connection failure or timeout)"), "{:#?}", host.logs());

    // Retried after retry_seconds, not before (no request in between: a request that needs the
    // missing key set brings the fetch forward, as an unknown kid does).
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(200).body(set.to_string()));
    host.advance(Duration::from_secs(9));
    vm.tick().unwrap();
    assert_eq!(host.http_calls().len(), 1, "no retry before retry_seconds");
    host.advance(Duration::from_secs(2));
    vm.tick().unwrap();
    assert_eq!(host.http_calls().len(), 2, "retried after retry_seconds");
    assert_eq!(host.http_calls()[1].timeout, Duration::from_millis(1234));
    host.deliver_pending_calls().unwrap();
    vm.tick().unwrap();
    assert_eq!(send(&mut vm, &token(0, None, &claims())).status, 200, "{:#?}", host.logs());

    // Meanwhile requests follow failure_mode (deny: 401 jwks_unavailable).
    let host = self::host();
    host.script_http_failure(CLUSTER, JWKS_PATH);
    let mut vm = self::vm(&host, &remote(json!({"timeout_ms": 1234})));
    vm.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    assert_refused(&host, &send(&mut vm, &token(0, None, &claims())), "jwks_unavailable", "while the fetch fails");
    // ... and such a request brings the retry forward (at most once per unknown_kid_refetch_seconds).
    vm.tick().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_early"), 1);
    assert_eq!(host.http_calls().len(), 2, "retried at once, before retry_seconds");

    // Envoy's answer to a timed-out callout: its own 504.
    let host = self::host();
    host.script_http_response(CLUSTER, JWKS_PATH, HttpResponse::new(504).body("upstream request timeout"));
    let vm = self::vm(&host, &remote(json!({})));
    vm.tick().unwrap();
    host.deliver_pending_calls().unwrap();
    assert_eq!(host.metric_value("gatewarden_jwt_jwks_fetch_failed"), 1);
    assert!(logged(&host, "failed: status 504"), "{:#?}", host.logs());

    // The default timeout is 5000 ms.
    let host = self::host();
    let _vm = self::vm(&host, &remote(json!({})));
    _vm.tick().unwrap();
    assert_eq!(host.http_calls()[0].timeout, Duration::from_millis(5000));
}

#[test]
fn more_than_4_different_tokens_are_refused_as_multiple_tokens() {
    let host = host();
    let mut vm = vm(&host, &policy(json!({"local_jwks": {"keys": [jwk(0, None)]}})));
    let own = token(0, None, &claims());
    // Tokens of other issuers are not the provider's (two providers may share a header), but
    // each is a different token found: at most 4 are looked at.
    let foreign = |i: usize| {
        let mut c = claims();
        c["iss"] = json!(format!("https://other-{i}.example.com"));
        token(1, None, &c)
    };
    let send_all = |vm: &mut Vm, tokens: &[String]| {
        let mut r = Request::get("/api").source("10.0.0.1:5000");
        for t in tokens {
            r = r.header("authorization", &format!("Bearer {t}"));
        }
        vm.http_request(r).unwrap()
    };
    let four: Vec<String> = std::iter::once(own.clone()).chain((0..3).map(foreign)).collect();
    let out = send_all(&mut vm, &four);
    assert_eq!(out.status, 200, "4 different tokens, one the provider's: {out:?}");
    let five: Vec<String> = std::iter::once(own.clone()).chain((0..4).map(foreign)).collect();
    let out = send_all(&mut vm, &five);
    assert_refused(&host, &out, "multiple_tokens", "a 5th different token");
    // The same token five times is one token.
    let out = send_all(&mut vm, &vec![own; 5]);
    assert_eq!(out.status, 200, "{out:?}");
}

#[test]
fn token_values_are_not_percent_decoded() {
    let host = host();
    let mut p = policy(json!({"local_jwks": {"keys": [jwk(0, None)]}}));
    p["providers"]["idp"]["from_params"] = json!(["access_token"]);
    let mut vm = vm(&host, &p);
    let t = token(0, None, &claims());
    let get =
        |vm: &mut Vm, query: &str| vm.http_request(Request::get(&format!("/api?access_token={query}")).source("10.0.0.1:5000")).unwrap();
    assert_eq!(get(&mut vm, &t).status, 200);
    // The same token with its first dot escaped: read as it is, not decoded.
    let escaped = t.replacen('.', "%2E", 1);
    assert_refused(&host, &get(&mut vm, &escaped), "malformed", "an escaped token");
}

#[test]
fn requirements_nest_up_to_8_deep() {
    let nested = |depth: usize| (0..depth).fold(json!({"provider": "idp"}), |inner, _| json!({"requires_all": [inner]}));
    let with_requirement = |req: Value| {
        let mut p = policy(json!({"local_jwks": {"keys": [jwk(0, None)]}}));
        p["default"] = json!({"requires": req});
        p
    };
    let host = host();
    let mut vm = vm(&host, &with_requirement(nested(8)));
    assert_eq!(send(&mut vm, &token(0, None, &claims())).status, 200);
    let (_vm, accepted) = load(&host, &with_requirement(nested(9)));
    assert!(!accepted, "9 levels are refused");
    assert!(logged(&host, "requirements nested deeper than 8"), "{:#?}", host.logs());
}
