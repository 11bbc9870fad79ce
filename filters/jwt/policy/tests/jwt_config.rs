//! JWT policy documents that must be refused, with the exact message (field path + quoted value).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

use gatewarden_jwt_policy::JwtPolicy;
use gatewarden_policy::compile;
use serde_json::{json, Value};

const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"k","k":"YS10ZXN0LXNlY3JldC10aGF0LWlzLWF0LWxlYXN0LXRoaXJ0eS10d28tYnl0ZXMtbG9uZw"}]}"#;

/// A valid document with `patch` merged at the top level and into provider "a".
fn doc(top: Value, provider: Value) -> String {
    let mut a = json!({"issuer": "https://a", "local_jwks": serde_json::from_str::<Value>(JWKS).unwrap()});
    a.as_object_mut().unwrap().extend(provider.as_object().unwrap().clone());
    a.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let mut d = json!({"policy_version": "t", "providers": {"a": a}, "default": {"requires": {"provider": "a"}}});
    d.as_object_mut().unwrap().extend(top.as_object().unwrap().clone());
    d.to_string()
}

#[test]
fn a_valid_document_compiles() {
    compile::<JwtPolicy>(doc(json!({}), json!({})).as_bytes()).unwrap();
    compile::<JwtPolicy>(doc(json!({}), json!({"local_jwks": JWKS})).as_bytes()).unwrap();
    let remote = json!({"local_jwks": null, "remote_jwks": {"cluster": "idp", "path": "/jwks"}});
    let p = compile::<JwtPolicy>(doc(json!({}), remote).as_bytes()).unwrap();
    let sources: Vec<_> =
        p.remote_jwks().map(|s| (s.provider.to_string(), s.spec.schedule.refresh_ms / 1000, s.spec.timeout.as_millis() as u64)).collect();
    assert_eq!(sources, vec![("a".to_string(), 600, 5000)]);
}

#[test]
fn config_errors_name_field_and_value() {
    let remote = |r: Value| json!({"local_jwks": null, "remote_jwks": r});
    #[rustfmt::skip]
    let cases: Vec<(String, &str)> = vec![
        (doc(json!({}), remote(json!({"cluster": "", "path": "/jwks"}))), r#"providers.a.remote_jwks.cluster: invalid cluster "": a cluster name or host:port without spaces is required"#),
        (doc(json!({}), remote(json!({"cluster": "idp", "path": "jwks"}))), r#"providers.a.remote_jwks.path: path must start with "/" and hold no spaces or control characters, got "jwks""#),
        (doc(json!({}), remote(json!({"cluster": "idp", "path": "/j", "cache_duration_seconds": 5}))), "providers.a.remote_jwks.refresh_seconds: 5 is less than the minimum 10 (`refresh_seconds`, also spelled `cache_duration_seconds`)"),
        (doc(json!({}), remote(json!({"cluster": "idp", "path": "/j", "timeout_ms": 0}))), "providers.a.remote_jwks.timeout_ms: 0 is outside 1..=60000"),
        (doc(json!({}), remote(json!({"cluster": "idp", "path": "/j", "uri": "x"}))), "providers.a.remote_jwks.uri: unknown field `uri`"),
        (doc(json!({}), json!({"remote_jwks": {"cluster": "idp", "path": "/j"}})), "providers.a: give exactly one of local_jwks, remote_jwks"),
        (doc(json!({}), json!({"local_jwks": null})), "providers.a: give exactly one of local_jwks, remote_jwks"),
        (doc(json!({}), json!({"local_jwks": {"keys": []}})), "providers.a.local_jwks: invalid JWKS: no usable key in the JWKS"),
        (doc(json!({}), json!({"local_jwks": {"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}})), "providers.a.local_jwks: invalid JWKS: no usable key in the JWKS (keys[0]: oct key of 5 bytes is shorter than 32)"),
        (doc(json!({}), json!({"local_jwks": "{not json"})), "providers.a.local_jwks: invalid JWKS: invalid JSON"),
        (doc(json!({}), json!({"local_jwks": 5})), "providers.a.local_jwks: a JWKS object or a string holding one is required"),
        (doc(json!({}), json!({"issuer": ""})), "providers.a.issuer: empty issuer"),
        (doc(json!({}), json!({"issuer": null})), "providers.a: missing field `issuer`"),
        (doc(json!({}), json!({"audiences": ["x", ""]})), "providers.a.audiences[1]: empty audience"),
        (doc(json!({}), json!({"subjects": []})), "providers.a.subjects: empty subject list: omit \"subjects\" to allow any"),
        (doc(json!({}), json!({"from_headers": [{"name": "bad header"}]})), r#"providers.a.from_headers[0].name: invalid header name "bad header""#),
        (doc(json!({}), json!({"from_headers": [{"name": ":path"}]})), r#"providers.a.from_headers[0].name: invalid header name ":path""#),
        (doc(json!({}), json!({"from_headers": [{"name": "x", "value_prefix": ""}]})), "providers.a.from_headers[0].value_prefix: empty prefix"),
        (doc(json!({}), json!({"from_params": ["a&b"]})), r#"providers.a.from_params[0]: invalid query parameter name "a&b""#),
        (doc(json!({}), json!({"from_cookies": ["a;b"]})), r#"providers.a.from_cookies[0]: invalid cookie name "a;b""#),
        (doc(json!({}), json!({"forward_payload_header": "x\ny"})), r#"providers.a.forward_payload_header: invalid header name "x\ny""#),
        (doc(json!({}), json!({"claim_to_headers": [{"claim": "a..b", "header": "x-a"}]})), r#"providers.a.claim_to_headers[0].claim: invalid claim path "a..b""#),
        (doc(json!({}), json!({"claim_to_headers": [{"claim": "sub", "header": "authorization"}]})), r#"providers.a.claim_to_headers[0].header: header "authorization" is also where a token is read from"#),
        (doc(json!({}), json!({"claim_to_headers": [{"claim": "n", "header": "Content-Length"}]})), r#"providers.a.claim_to_headers[0].header: header "content-length" is reserved: framing, routing and proxy headers (host, content-length, transfer-encoding, connection, keep-alive, proxy-connection, te, trailer, upgrade, x-forwarded-for, x-envoy-*) and Gatewarden's own (x-gatewarden-*) cannot be set from a token"#),
        (doc(json!({}), json!({"claim_to_headers": [{"claim": "sub", "header": "x-user"}, {"claim": "r", "header": "x-envoy-retry-on"}]})), r#"providers.a.claim_to_headers[1].header: header "x-envoy-retry-on" is reserved"#),
        (doc(json!({}), json!({"forward_payload_header": "host"})), r#"providers.a.forward_payload_header: header "host" is reserved"#),
        (doc(json!({}), json!({"forward_payload_header": "x-gatewarden-jwt"})), r#"providers.a.forward_payload_header: header "x-gatewarden-jwt" is reserved"#),
        (doc(json!({}), json!({"pad_forward_payload_header": true})), "providers.a.pad_forward_payload_header: true needs forward_payload_header"),
        (doc(json!({}), json!({"max_token_bytes": 10})), "providers.a.max_token_bytes: 10 is outside 16..=65536"),
        (doc(json!({}), json!({"clock_skew_seconds": 100000})), "providers.a.clock_skew_seconds: 100000 is more than the maximum 86400"),
        (doc(json!({}), json!({"max_lifetime_seconds": 0})), "providers.a.max_lifetime_seconds: 0 is less than the minimum 1"),
        (doc(json!({}), json!({"clock_skew": 5})), "providers.a.clock_skew: unknown field `clock_skew`"),
        (doc(json!({"providers": {}}), json!({})), "providers: at least one provider is required"),
        (doc(json!({"providers": {"a b": {"issuer": "x", "local_jwks": JWKS}}, "default": {}}), json!({})), r#"providers.a b: invalid provider name "a b""#),
        (doc(json!({"default": {"requires": {"provider": "b"}}}), json!({})), r#"default.requires.provider: unknown provider "b""#),
        (doc(json!({"rules": [{"requires": {"requires_any": []}}]}), json!({})), "rules[0].requires.requires_any: empty list"),
        (doc(json!({"rules": [{"requires": {"requires_all": [{"provider": "a"}, {"requires_any": [{"provider": "x"}]}]}}]}), json!({})), r#"rules[0].requires.requires_all[1].requires_any[0].provider: unknown provider "x""#),
        (doc(json!({"rules": [{"requires": "allow_anything"}]}), json!({})), "rules[0].requires: unknown variant `allow_anything`"),
        (doc(json!({"rules": [{"requires": {"provider_and_audiences": {"provider": "b", "audiences": ["x"]}}}]}), json!({})), r#"rules[0].requires.provider_and_audiences.provider: unknown provider "b""#),
        (doc(json!({"rules": [{"requires": {"provider_and_audiences": {"provider": "a", "audiences": []}}}]}), json!({})), "rules[0].requires.provider_and_audiences.audiences: empty list"),
        (doc(json!({"rules": [{"requires": {"requires_any": [{"provider_and_audiences": {"provider": "a", "audiences": ["x", ""]}}]}}]}), json!({})), "rules[0].requires.requires_any[0].provider_and_audiences.audiences[1]: empty audience"),
        (doc(json!({"rules": [{"requires": {"provider_and_audiences": {"provider_name": "a", "audiences": ["x"]}}}]}), json!({})), "rules[0].requires.provider_and_audiences.provider_name: unknown field `provider_name`"),
        (doc(json!({"rules": [{"scopes": ["read"]}]}), json!({})), "rules[0].scopes: scopes and claims need a token: add \"requires\""),
        (doc(json!({"rules": [{"requires": "allow_missing", "scopes": ["a b"]}]}), json!({})), r#"rules[0].scopes[0]: invalid scope "a b": one scope without spaces"#),
        (doc(json!({"rules": [{"requires": "allow_missing", "claims": [{"name": "t", "equals": "x", "in": ["y"]}]}]}), json!({})), "rules[0].claims[0]: give exactly one of equals, in, equals_header"),
        (doc(json!({"rules": [{"requires": "allow_missing", "claims": [{"name": "t"}]}]}), json!({})), "rules[0].claims[0]: give exactly one of equals, in, equals_header"),
        (doc(json!({"rules": [{"requires": "allow_missing", "claims": [{"name": "t", "in": []}]}]}), json!({})), "rules[0].claims[0].in: empty list"),
        (doc(json!({"rules": [{"requires": "allow_missing", "claims": [{"name": "t", "equals_header": "x y"}]}]}), json!({})), r#"rules[0].claims[0].equals_header: invalid header name "x y""#),
        (doc(json!({"realm": "a\"b"}), json!({})), r#"realm: invalid realm "a\"b""#),
        (doc(json!({"max_request_headers": 0}), json!({})), "max_request_headers: 0 is outside 1..=10000"),
        (doc(json!({"filter": "ip_geo"}), json!({})), r#"filter: this policy is for filter "ip_geo", not "jwt""#),
        (doc(json!({"default": {"name": "d", "requires": "allow_missing"}}), json!({})), "default: the default takes no \"name\" and no \"match\""),
    ];
    for (config, want) in &cases {
        let err = compile::<JwtPolicy>(config.as_bytes()).err().unwrap_or_else(|| panic!("accepted: {config}")).to_string();
        assert!(err.starts_with(want), "config {config}\n  expected error starting: {want}\n  got: {err}");
    }
}
