//! Native tests of the JWT policy: tokens of every algorithm (fixtures signed by an independent
//! signer, Python's `cryptography`, see tests/fixtures/jwt/make_fixtures.py), tokens made here
//! (HS256, ES256, EdDSA) for claims, sources and requirements, responses, limits, the token
//! cache and remote key sets. Time is always injected.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable, clippy::type_complexity)]

use std::sync::Arc;

use gatewarden_jwt_policy::{JwksSet, JwtDocument, JwtOutcome, JwtPolicy, KeyLookup, NoRemoteKeys, RemoteKeys, TokenCache};
use gatewarden_policy::{compile, RequestFacts, Verdict};
use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value};
use sha2::Sha256;

/// 2023-11-14T22:13:20Z plus a little: the fixture tokens have iat 1700000000, exp 4102444800.
const NOW: u64 = 1_700_000_100;
const FIXTURE_ISS: &str = "https://idp.example.com";
/// The HMAC secret of the tokens made here (oct key "t-hs").
const SECRET: &[u8] = b"a-test-secret-that-is-at-least-thirty-two-bytes-long";

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/jwt/tokens.json")).unwrap()
}

fn fixture_jwks() -> Value {
    serde_json::from_str(include_str!("fixtures/jwt/jwks.json")).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    gatewarden_jwt_policy::b64::encode(bytes)
}

fn es256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap()
}

fn ed_key() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]))
}

/// The keys of the tokens made here: oct "t-hs", EC P-256 "t-ec", Ed25519 "t-ed".
fn test_jwks() -> Value {
    let point = es256_key().verifying_key().to_sec1_point(false);
    let xy = &point.as_bytes()[1..];
    json!({"keys": [
        {"kty": "oct", "kid": "t-hs", "k": b64(SECRET)},
        {"kty": "EC", "kid": "t-ec", "crv": "P-256", "x": b64(&xy[..32]), "y": b64(&xy[32..])},
        {"kty": "OKP", "kid": "t-ed", "crv": "Ed25519", "x": b64(ed_key().pk.as_ref())},
    ]})
}

/// A token signed here. `alg`: HS256 (kid t-hs), ES256 (t-ec) or EdDSA (t-ed).
fn sign(alg: &str, header_extra: Value, claims: Value) -> String {
    let kid = match alg {
        "HS256" => "t-hs",
        "ES256" => "t-ec",
        "EdDSA" => "t-ed",
        other => panic!("no test key for {other}"),
    };
    let mut header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    header.as_object_mut().unwrap().extend(header_extra.as_object().unwrap().clone());
    header.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = match alg {
        "HS256" => {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        "ES256" => {
            let s: p256::ecdsa::Signature = es256_key().sign(input.as_bytes());
            s.to_bytes().to_vec()
        }
        _ => ed_key().sk.sign(input.as_bytes(), None).to_vec(),
    };
    format!("{input}.{}", b64(&sig))
}

/// Claims of a valid token of the "t" provider at NOW, with `extra` merged (null removes).
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://t.example.com", "aud": ["api", "other"], "sub": "user-7", "iat": NOW - 10, "exp": NOW + 600,
                       "scope": "read write", "tenant": "acme", "org": {"id": 42, "name": "Acme"}});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    c
}

fn policy_json(extra_rules: Value) -> Value {
    json!({
        "policy_version": "t1",
        "realm": "api",
        "providers": {
            "idp": {"issuer": FIXTURE_ISS, "audiences": ["api"], "local_jwks": fixture_jwks()},
            "t": {
                "issuer": "https://t.example.com", "audiences": ["api"], "local_jwks": test_jwks(),
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-token"}],
                "from_params": ["access_token"], "from_cookies": ["session"],
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [{"claim": "sub", "header": "x-user"}, {"claim": "org.id", "header": "x-org-id"}, {"claim": "org", "header": "x-org"}],
                "max_lifetime_seconds": 86400
            },
            "remote": {"issuer": "https://remote.example.com", "remote_jwks": {"cluster": "jwks", "path": "/.well-known/jwks.json"},
                       "from_headers": [{"name": "x-remote-token"}]}
        },
        "rules": extra_rules,
        "default": {"requires": {"provider": "t"}}
    })
}

fn policy_from(v: &Value) -> JwtPolicy {
    compile::<JwtPolicy>(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

fn policy() -> JwtPolicy {
    policy_from(&policy_json(json!([
        {"name": "fixtures", "match": {"path_prefix": "/fixtures"}, "requires": {"provider": "idp"}},
        {"name": "public", "match": {"path_prefix": "/public"}},
        {"name": "remote", "match": {"path_prefix": "/remote"}, "requires": {"provider": "remote"}},
    ])))
}

fn headers(path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), path.to_string())];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

fn decide_with(
    p: &JwtPolicy,
    path: &str,
    extra: &[(&str, &str)],
    now: u64,
    keys: &dyn KeyLookup,
    cache: Option<&mut TokenCache>,
) -> JwtOutcome {
    let h = headers(path, extra);
    // The native module reads only the headers `header_needs` lists (and the count): every
    // decision of these tests must come out the same from those alone.
    let needs = p.header_needs();
    let only: Vec<(String, String)> = h.iter().filter(|(k, _)| needs.names().iter().any(|n| n == k)).cloned().collect();
    let mut copy = cache.as_deref().cloned();
    let partial = p.decide(&RequestFacts::new(&only, None).with_header_count(h.len()), now, keys, copy.as_mut());
    let full = p.decide(&RequestFacts::new(&h, None), now, keys, cache);
    assert_eq!(partial, full, "decided on the headers header_needs lists ({:?}) for {h:?}", needs.names());
    full
}

fn decide(p: &JwtPolicy, path: &str, extra: &[(&str, &str)]) -> JwtOutcome {
    decide_with(p, path, extra, NOW, &NoRemoteKeys, None)
}

fn outcome(o: &JwtOutcome) -> &'static str {
    o.decision.reason().unwrap_or("allow")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn fixture_tokens_of_every_algorithm() {
    let p = policy();
    let f = fixtures();
    let tokens = f["tokens"].as_array().unwrap();
    let algs: std::collections::BTreeSet<&str> =
        tokens.iter().filter(|t| t["expect"] == "allow").map(|t| t["header"]["alg"].as_str().unwrap()).collect();
    assert_eq!(algs.len(), 13, "every algorithm has a valid fixture: {algs:?}");
    for t in tokens {
        let auth = bearer(t["token"].as_str().unwrap());
        let o = decide(&p, "/fixtures", &[("authorization", &auth)]);
        assert_eq!(outcome(&o), t["expect"].as_str().unwrap(), "fixture {:?}", t["name"]);
    }
}

/// Replaces one character in the middle of a segment (never the last one, whose unused bits
/// would make it malformed rather than wrong).
fn flip(segment: &str) -> String {
    let mut b = segment.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[test]
fn tampered_signature_payload_or_header_fails() {
    let p = policy();
    let f = fixtures();
    for t in f["tokens"].as_array().unwrap().iter().filter(|t| t["expect"] == "allow") {
        let token = t["token"].as_str().unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let name = t["name"].as_str().unwrap();
        let mut claims = t["claims"].clone();
        claims["sub"] = json!("admin");
        let mut header = t["header"].clone();
        header["x5u"] = json!("https://evil");
        let cases = [
            ("signature", format!("{}.{}.{}", parts[0], parts[1], flip(parts[2]))),
            ("payload", format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2])),
            ("header", format!("{}.{}.{}", b64(header.to_string().as_bytes()), parts[1], parts[2])),
            ("truncated signature", format!("{}.{}.{}", parts[0], parts[1], &parts[2][..parts[2].len() / 2 / 4 * 4])),
        ];
        for (what, bad) in cases {
            let o = decide(&p, "/fixtures", &[("authorization", &bearer(&bad))]);
            assert_eq!(outcome(&o), "bad_signature", "{name}: tampered {what}");
        }
    }
}

#[test]
fn alg_must_fit_the_key_type_and_the_jwk_alg() {
    let f = fixtures();
    let by_name = |n: &str| f["tokens"].as_array().unwrap().iter().find(|t| t["name"] == n).unwrap()["token"].as_str().unwrap().to_string();
    // ES384 header on the P-256 key's kid: the key does not fit.
    let es256 = by_name("ES256");
    let parts: Vec<&str> = es256.split('.').collect();
    let relabelled = format!("{}.{}.{}", b64(br#"{"alg":"ES384","kid":"ec256"}"#), parts[1], parts[2]);
    assert_eq!(outcome(&decide(&policy(), "/fixtures", &[("authorization", &bearer(&relabelled))])), "alg_not_allowed");
    // An EdDSA header on an RSA kid.
    let relabelled = format!("{}.{}.{}", b64(br#"{"alg":"EdDSA","kid":"rsa1"}"#), parts[1], parts[2]);
    assert_eq!(outcome(&decide(&policy(), "/fixtures", &[("authorization", &bearer(&relabelled))])), "alg_not_allowed");
    // The RSA JWK pinned to RS256: a PS256 token with its kid is refused, RS256 still passes.
    let mut jwks = fixture_jwks();
    jwks["keys"][0]["alg"] = json!("RS256");
    let mut doc = policy_json(json!([{"match": {"path_prefix": "/fixtures"}, "requires": {"provider": "idp"}}]));
    doc["providers"]["idp"]["local_jwks"] = jwks;
    let pinned = policy_from(&doc);
    assert_eq!(outcome(&decide(&pinned, "/fixtures", &[("authorization", &bearer(&by_name("PS256")))])), "alg_not_allowed");
    assert_eq!(outcome(&decide(&pinned, "/fixtures", &[("authorization", &bearer(&by_name("RS256")))])), "allow");
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // Made here too (the fixtures hold the same attack made by Python): the PEM text of the
    // public key as the HMAC secret, with and without the RSA key's kid.
    let pem = include_bytes!("fixtures/jwt/rsa_public.pem");
    let c = json!({"iss": FIXTURE_ISS, "aud": "api", "exp": NOW + 60});
    for (header, want) in [(json!({"alg": "HS256", "kid": "rsa1"}), "alg_not_allowed"), (json!({"alg": "HS256"}), "bad_signature")] {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(c.to_string().as_bytes()));
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(pem).unwrap();
        m.update(input.as_bytes());
        let t = format!("{input}.{}", b64(&m.finalize().into_bytes()));
        assert_eq!(outcome(&decide(&policy(), "/fixtures", &[("authorization", &bearer(&t))])), want, "{header}");
    }
}

#[test]
fn tokens_made_here_verify_with_each_algorithm() {
    let p = policy();
    for alg in ["HS256", "ES256", "EdDSA"] {
        let t = sign(alg, json!({}), claims(json!({})));
        let o = decide(&p, "/api", &[("authorization", &bearer(&t))]);
        assert_eq!(outcome(&o), "allow", "{alg}");
        assert_eq!(o.verified, vec![Arc::<str>::from("t")]);
    }
}

#[test]
fn unknown_kid_and_missing_kid() {
    let p = policy();
    let t = sign("ES256", json!({"kid": "rotated"}), claims(json!({})));
    let o = decide(&p, "/api", &[("authorization", &bearer(&t))]);
    assert_eq!(outcome(&o), "unknown_kid");
    assert!(o.needs_keys.is_empty(), "inline keys cannot be refetched");
    // No kid: every key of the right type is tried.
    let t = sign("ES256", json!({"kid": null}), claims(json!({})));
    assert_eq!(outcome(&decide(&p, "/api", &[("authorization", &bearer(&t))])), "allow");
}

#[test]
fn time_claims_at_the_skew_boundary() {
    let p = policy();
    let n = NOW as i64;
    #[rustfmt::skip]
    let cases: &[(Value, &str)] = &[
        (json!({"exp": n - 59}), "allow"),            // skew 60: still accepted
        (json!({"exp": n - 60}), "expired"),          // exactly at exp + skew
        (json!({"nbf": n + 60}), "allow"),
        (json!({"nbf": n + 61}), "not_yet_valid"),
        (json!({"iat": n + 60}), "allow"),
        (json!({"iat": n + 61}), "not_yet_valid"),
        (json!({"exp": null}), "no_expiration"),
        (json!({"iat": n - 100, "exp": n + 86_300}), "allow"),          // lifetime exactly 86400
        (json!({"iat": n - 100, "exp": n + 86_301}), "lifetime_too_long"),
        (json!({"iat": null, "exp": n + 86_401}), "lifetime_too_long"),  // exp - now without iat
        (json!({"exp": 1.7e9}), "expired"),
        (json!({"exp": (n + 100) as f64 + 0.5}), "allow"),
    ];
    for (extra, want) in cases {
        let t = sign("HS256", json!({}), claims(extra.clone()));
        assert_eq!(outcome(&decide(&p, "/api", &[("authorization", &bearer(&t))])), *want, "claims {extra}");
    }
}

#[test]
fn wrong_claim_types_are_refused() {
    let p = policy();
    let n = NOW as i64;
    for extra in [
        json!({"exp": (n + 100).to_string()}),
        json!({"nbf": "0"}),
        json!({"iat": [1]}),
        json!({"exp": true}),
        json!({"aud": 1}),
        json!({"aud": ["api", null]}),
        json!({"aud": {"api": true}}),
        json!({"sub": 12}),
        json!({"iss": ["https://t.example.com"]}),
        json!({"jti": 5}),
    ] {
        let t = sign("HS256", json!({}), claims(extra.clone()));
        assert_eq!(outcome(&decide(&p, "/api", &[("authorization", &bearer(&t))])), "claim_type", "claims {extra}");
    }
}

#[test]
fn issuer_audience_subject() {
    let p = policy();
    let cases: &[(Value, &str)] = &[
        (json!({"iss": "https://evil.example.com"}), "issuer"),
        (json!({"iss": null}), "issuer"),
        (json!({"aud": "api"}), "allow"),
        (json!({"aud": ["nope"]}), "audience"),
        (json!({"aud": null}), "audience"),
    ];
    for (extra, want) in cases {
        let t = sign("HS256", json!({}), claims(extra.clone()));
        let o = decide(&p, "/api", &[("authorization", &bearer(&t))]);
        assert_eq!(outcome(&o), *want, "claims {extra}");
    }
    let mut doc = policy_json(json!([]));
    doc["providers"]["t"]["subjects"] = json!({"prefix": "user-"});
    let sp = policy_from(&doc);
    let ok = sign("HS256", json!({}), claims(json!({})));
    let bad = sign("HS256", json!({}), claims(json!({"sub": "svc-1"})));
    assert_eq!(outcome(&decide(&sp, "/api", &[("authorization", &bearer(&ok))])), "allow");
    assert_eq!(outcome(&decide(&sp, "/api", &[("authorization", &bearer(&bad))])), "subject");
}

#[test]
fn each_token_source_and_what_goes_upstream() {
    let p = policy();
    let t = sign("HS256", json!({}), claims(json!({})));
    let payload = t.split('.').nth(1).unwrap().to_string();
    let auth = bearer(&t);
    let q = format!("/api/x?a=1&access_token={t}&b=2");
    let cookie = format!("theme=dark; session={t}");

    let o = decide(&p, "/api", &[("authorization", &auth), ("x-user", "spoofed")]);
    assert_eq!(outcome(&o), "allow");
    assert!(o.remove_headers.contains(&"authorization".to_string()), "token stripped: {:?}", o.remove_headers);
    assert!(o.remove_headers.contains(&"x-user".to_string()), "client's own x-user removed");
    assert!(o.set_headers.contains(&("x-user".into(), "user-7".into())));
    assert!(o.set_headers.contains(&("x-org-id".into(), "42".into())));
    assert!(o.set_headers.contains(&("x-org".into(), b64(br#"{"id":42,"name":"Acme"}"#))));
    assert!(o.set_headers.contains(&("x-jwt-payload".into(), payload.clone())));

    let o = decide(&p, "/api", &[("x-token", &t)]);
    assert_eq!(outcome(&o), "allow");
    assert!(o.remove_headers.contains(&"x-token".to_string()));

    let o = decide(&p, &q, &[]);
    assert_eq!(outcome(&o), "allow");
    assert!(o.set_headers.contains(&(":path".into(), "/api/x?a=1&b=2".into())), "{:?}", o.set_headers);

    let o = decide(&p, "/api", &[("cookie", &cookie)]);
    assert_eq!(outcome(&o), "allow");
    assert!(o.set_headers.contains(&("cookie".into(), "theme=dark".into())), "{:?}", o.set_headers);

    // The same token twice is one token; two different tokens are refused.
    assert_eq!(outcome(&decide(&p, &q, &[("authorization", &auth)])), "allow");
    let other = sign("ES256", json!({}), claims(json!({})));
    assert_eq!(outcome(&decide(&p, "/api", &[("authorization", &auth), ("x-token", &other)])), "multiple_tokens");
    assert_eq!(outcome(&decide(&p, "/api", &[("authorization", &auth), ("authorization", &bearer(&other))])), "multiple_tokens");
    // Other schemes are not tokens.
    assert_eq!(outcome(&decide(&p, "/api", &[("authorization", "Basic dXNlcjpwdw==")])), "missing");

    // forward: true keeps the token.
    let mut doc = policy_json(json!([]));
    doc["providers"]["t"]["forward"] = json!(true);
    let o = decide(&policy_from(&doc), &q, &[("authorization", &auth)]);
    assert!(!o.remove_headers.contains(&"authorization".to_string()));
    assert!(!o.set_headers.iter().any(|(k, _)| k == ":path"));
}

#[test]
fn responses_of_401_and_403() {
    let p = policy();
    let o = decide(&p, "/api", &[]);
    assert_eq!(o.decision.verdict, Verdict::Deny(gatewarden_jwt_policy::JwtReason::Missing.denial()));
    let Verdict::Deny(d) = &o.decision.verdict else { unreachable!() };
    assert_eq!((d.status, d.body), (401, gatewarden_policy::decision::UNAUTHORIZED_BODY));
    assert_eq!(o.response_headers, vec![("www-authenticate".to_string(), "Bearer realm=\"api\"".to_string())]);
    assert!(o.set_headers.is_empty());
    assert!(o.remove_headers.contains(&"x-jwt-payload".to_string()), "spoofed output headers are removed even on denial");

    let bad = sign("HS256", json!({}), claims(json!({"exp": NOW as i64 - 1000})));
    let o = decide(&p, "/api", &[("authorization", &bearer(&bad))]);
    assert_eq!(o.response_headers, vec![("www-authenticate".to_string(), "Bearer realm=\"api\", error=\"invalid_token\"".to_string())]);

    let wrong_aud = sign("HS256", json!({}), claims(json!({"aud": "x"})));
    let o = decide(&p, "/api", &[("authorization", &bearer(&wrong_aud))]);
    let Verdict::Deny(d) = &o.decision.verdict else { panic!("{o:?}") };
    assert_eq!((d.status, d.body, d.reason), (403, gatewarden_policy::decision::FORBIDDEN_BODY, "audience"));
    assert!(o.response_headers.is_empty());
}

#[test]
fn requirement_combinations() {
    let rules = json!([
        {"name": "any", "match": {"path_prefix": "/any"}, "requires": {"requires_any": [{"provider": "idp"}, {"provider": "t"}]}},
        {"name": "all", "match": {"path_prefix": "/all"}, "requires": {"requires_all": [{"provider": "idp"}, {"provider": "t"}]}},
        {"name": "opt", "match": {"path_prefix": "/opt"}, "requires": "allow_missing"},
        {"name": "lax", "match": {"path_prefix": "/lax"}, "requires": "allow_missing_or_failed"},
        {"name": "nested", "match": {"path_prefix": "/nested"}, "requires": {"requires_any": [{"requires_all": [{"provider": "t"}, {"provider": "idp"}]}, "allow_missing"]}},
        {"name": "opt-t", "match": {"path_prefix": "/opt-t"}, "requires": {"requires_any": [{"provider": "t"}, "allow_missing"]}},
        {"name": "scoped", "match": {"path_prefix": "/scoped"}, "requires": {"provider": "t"}, "scopes": ["read", "write"]},
        {"name": "admin", "match": {"path_prefix": "/admin"}, "requires": {"provider": "t"}, "scopes": ["admin"]},
        {"name": "tenant", "match": {"path_prefix": "/tenant"}, "requires": {"provider": "t"}, "claims": [{"name": "tenant", "equals_header": "x-tenant-id"}]},
        {"name": "org", "match": {"path_prefix": "/org"}, "requires": {"provider": "t"}, "claims": [{"name": "org.id", "in": ["41", "42"]}, {"name": "org.name", "equals": "Acme"}]},
        {"name": "opt-scoped", "match": {"path_prefix": "/opt-scoped"}, "requires": "allow_missing", "scopes": ["read"]},
    ]);
    // Rules are first-match: "/opt-t" and "/opt-scoped" must come before "/opt".
    let mut rules = rules.as_array().unwrap().clone();
    let opt = rules.remove(2);
    rules.push(opt);
    let p = policy_from(&policy_json(Value::Array(rules)));
    let fx = fixtures();
    let idp = bearer(fx["tokens"][9]["token"].as_str().unwrap()); // ES256 of idp, via Authorization
    let t_tok = sign("ES256", json!({}), claims(json!({})));
    let t_bad = sign("ES256", json!({}), claims(json!({"exp": 5})));
    let foreign = sign("HS256", json!({}), claims(json!({"iss": "https://stranger"})));
    let t_scp = sign("HS256", json!({}), claims(json!({"scope": null, "scp": ["admin"]})));
    let (idp_h, t_h, bad_h, foreign_h, scp_h) = (
        ("authorization", idp.as_str()),
        ("x-token", t_tok.as_str()),
        ("x-token", t_bad.as_str()),
        ("x-token", foreign.as_str()),
        ("x-token", t_scp.as_str()),
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<(&str, &str)>, &str)> = vec![
        ("/any", vec![idp_h], "allow"),
        ("/any", vec![t_h], "allow"),
        ("/any", vec![], "missing"),
        ("/any", vec![bad_h], "expired"),                 // a failed token says more than an absent one
        ("/all", vec![idp_h, t_h], "allow"),
        ("/all", vec![t_h], "missing"),
        ("/all", vec![idp_h, bad_h], "expired"),
        ("/opt", vec![], "allow"),
        ("/opt", vec![t_h], "allow"),
        ("/opt", vec![bad_h], "expired"),
        ("/opt", vec![foreign_h], "issuer"),             // present but nobody's token
        ("/lax", vec![], "allow"),
        ("/lax", vec![bad_h], "allow"),
        ("/lax", vec![foreign_h], "allow"),
        ("/nested", vec![], "allow"),
        ("/nested", vec![t_h, idp_h], "allow"),
        ("/nested", vec![t_h], "allow"),                  // t alone: allow_missing sees a valid t token
        ("/nested", vec![bad_h], "expired"),
        ("/opt-t", vec![], "allow"),
        ("/opt-t", vec![bad_h], "expired"),
        ("/scoped", vec![t_h], "allow"),
        ("/admin", vec![t_h], "scope"),
        ("/admin", vec![scp_h], "allow"),
        ("/tenant", vec![t_h, ("x-tenant-id", "acme")], "allow"),
        ("/tenant", vec![t_h, ("x-tenant-id", "globex")], "claim"),
        ("/tenant", vec![t_h], "claim"),
        ("/org", vec![t_h], "allow"),
        ("/opt-scoped", vec![], "missing"),              // scopes need a token
        ("/opt-scoped", vec![t_h], "allow"),
    ];
    for (path, hs, want) in &cases {
        let o = decide(&p, path, hs);
        assert_eq!(outcome(&o), *want, "{path} with {:?}", hs.iter().map(|h| h.0).collect::<Vec<_>>());
    }
    let o = decide(&p, "/lax", &[bad_h]);
    assert!(o.verified.is_empty() && o.set_headers.is_empty(), "a failed token forwards nothing");
    let o = decide(&p, "/admin", &[t_h]);
    assert_eq!(o.response_headers[0].1, "Bearer realm=\"api\", error=\"insufficient_scope\"");
}

#[test]
fn cors_preflight_and_public_rules_pass_without_token() {
    let p = policy();
    let pre = [(":method", "OPTIONS"), ("origin", "https://app"), ("access-control-request-method", "POST")];
    let h: Vec<(String, String)> = [(":path", "/api")].iter().chain(pre.iter()).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(p.decide(&RequestFacts::new(&h, None), NOW, &NoRemoteKeys, None).decision.reason(), None);
    let h: Vec<(String, String)> = [(":path", "/api"), (":method", "OPTIONS"), ("origin", "https://app")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(p.decide(&RequestFacts::new(&h, None), NOW, &NoRemoteKeys, None).decision.reason(), Some("missing"), "not a preflight");
    let mut doc = policy_json(json!([]));
    doc["default"]["cors_preflight_passes"] = json!(false);
    let strict = policy_from(&doc);
    let h: Vec<(String, String)> = [(":path", "/api")].iter().chain(pre.iter()).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(strict.decide(&RequestFacts::new(&h, None), NOW, &NoRemoteKeys, None).decision.reason(), Some("missing"));
    assert_eq!(outcome(&decide(&p, "/public/x", &[])), "allow");
}

#[test]
fn remote_keys_failure_mode_and_refetch_hints() {
    let p = policy();
    let set = JwksSet::from_value(&test_jwks()).unwrap();
    let t = sign("EdDSA", json!({}), claims(json!({"iss": "https://remote.example.com"})));
    let h = [("x-remote-token", t.as_str())];
    // Not loaded: fail closed, and ask for the keys.
    let o = decide(&p, "/remote", &h);
    assert_eq!(outcome(&o), "jwks_unavailable");
    assert_eq!(o.needs_keys, vec![Arc::<str>::from("remote")]);
    assert_eq!(o.response_headers[0].1, "Bearer realm=\"api\"");
    // A missing token needs no keys.
    assert_eq!(outcome(&decide(&p, "/remote", &[])), "missing");
    // failure_mode allow: passes while the keys are unavailable.
    let mut doc = policy_json(json!([{"match": {"path_prefix": "/remote"}, "requires": {"provider": "remote"}, "scopes": ["read"]}]));
    doc["failure_mode"] = json!("allow");
    let open = policy_from(&doc);
    let o = decide(&open, "/remote", &h);
    assert_eq!((outcome(&o), o.needs_keys.len()), ("allow", 1));
    // Loaded: verified; an unknown kid asks for a refetch.
    let mut keys = RemoteKeys::new();
    keys.set("remote", Arc::new(set));
    assert_eq!(outcome(&decide_with(&p, "/remote", &h, NOW, &keys, None)), "allow");
    let rotated = sign("EdDSA", json!({"kid": "next"}), claims(json!({"iss": "https://remote.example.com"})));
    let o = decide_with(&p, "/remote", &[("x-remote-token", &rotated)], NOW, &keys, None);
    assert_eq!((outcome(&o), o.needs_keys.clone()), ("unknown_kid", vec![Arc::<str>::from("remote")]));
}

#[test]
fn token_cache_serves_verified_tokens_until_exp_and_clears_on_key_change() {
    let p = policy();
    let mut cache = p.new_token_cache();
    assert_eq!(cache.capacity(), 1024);
    let t = sign("EdDSA", json!({}), claims(json!({"iss": "https://remote.example.com", "exp": NOW + 100})));
    let h = [("x-remote-token", t.as_str())];
    let mut keys = RemoteKeys::new();
    keys.set("remote", Arc::new(JwksSet::from_value(&test_jwks()).unwrap()));
    assert_eq!(outcome(&decide_with(&p, "/remote", &h, NOW, &keys, Some(&mut cache))), "allow");
    assert_eq!(cache.len(), 1);
    assert_eq!(outcome(&decide_with(&p, "/remote", &h, NOW + 1, &keys, Some(&mut cache))), "allow");
    assert_eq!(cache.stats(), (1, 1), "second request was a hit");
    // Past exp + skew the cached entry is not served (and the token is expired anyway).
    assert_eq!(outcome(&decide_with(&p, "/remote", &h, NOW + 160, &keys, Some(&mut cache))), "expired");
    // Key rotation: the cache is cleared, so the old key's tokens stop validating at once.
    assert_eq!(outcome(&decide_with(&p, "/remote", &h, NOW, &keys, Some(&mut cache))), "allow");
    let mut other = test_jwks();
    other["keys"].as_array_mut().unwrap().retain(|k| k["kid"] != "t-ed");
    keys.set("remote", Arc::new(JwksSet::from_value(&other).unwrap()));
    assert_eq!(outcome(&decide_with(&p, "/remote", &h, NOW, &keys, Some(&mut cache))), "unknown_kid");
    // Failed tokens are never cached.
    let before = cache.len();
    let bad = sign("HS256", json!({}), claims(json!({"aud": "x"})));
    decide_with(&p, "/api", &[("authorization", &bearer(&bad))], NOW, &keys, Some(&mut cache));
    assert_eq!(cache.len(), before);
}

#[test]
fn limits_refuse_before_decoding() {
    let p = policy();
    // A 1 MB token is refused by its length, before any decoding (no timing assertion here:
    // the cost lives in scripts/bench.sh).
    let huge = format!("Bearer {}", "a".repeat(1 << 20));
    let o = decide(&p, "/api", &[("authorization", &huge)]);
    assert_eq!(outcome(&o), "too_large");
    let many: Vec<(String, String)> = (0..300).map(|i| (format!("x-h{i}"), "v".to_string())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = decide(&p, "/api", &refs);
    let Verdict::Deny(d) = o.decision.verdict else { panic!() };
    assert_eq!((d.status, d.reason), (431, "too_many_headers"));
    // Hostile but small tokens: each is refused without panicking.
    for junk in ["a.b.c", "....", "e30.e30.", "e30.e30.e30", &format!("{}.e30.AAAA", b64(br#"{"alg":"HS256","kid":"t-hs"}"#))] {
        let o = decide(&p, "/api", &[("authorization", &bearer(junk))]);
        assert!(matches!(outcome(&o), "malformed" | "issuer" | "bad_signature"), "{junk}: {}", outcome(&o));
    }
    let deep = format!("{}.{}.AAAA", b64(br#"{"alg":"HS256"}"#), b64(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes()));
    let mut doc = policy_json(json!([]));
    doc["providers"]["t"]["max_token_bytes"] = json!(65536);
    assert_eq!(outcome(&decide(&policy_from(&doc), "/api", &[("authorization", &bearer(&deep))])), "malformed");
}

#[test]
fn claim_headers_refuse_control_characters() {
    let p = policy();
    let t = sign("HS256", json!({}), claims(json!({"sub": "a\r\nx-admin: true"})));
    let o = decide(&p, "/api", &[("authorization", &bearer(&t))]);
    assert_eq!(outcome(&o), "allow");
    assert!(!o.set_headers.iter().any(|(k, _)| k == "x-user"), "{:?}", o.set_headers);
}

#[test]
fn jwks_keys_with_bad_parameters_are_skipped_with_a_reason() {
    let mut jwks = test_jwks();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.push(json!({"kty": "oct", "kid": "short", "k": b64(b"short")}));
    keys.push(json!({"kty": "EC", "kid": "off-curve", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])}));
    keys.push(json!({"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"}));
    keys.push(json!({"kty": "RSA", "kid": "small", "n": b64(&[0xC1; 128]), "e": "AQAB"}));
    keys.push(json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AA", "e": "AQAB"}));
    keys.push(json!({"kty": "OKP", "kid": "x448", "crv": "Ed448", "x": "AA"}));
    keys.push(json!({"kty": "oct", "kid": "pinned", "alg": "RS256", "k": b64(SECRET)}));
    keys.push(json!("not an object"));
    let set = JwksSet::from_value(&jwks).unwrap();
    assert_eq!(set.len(), 3);
    let reasons: Vec<(Option<&str>, &str)> = set.skipped().iter().map(|s| (s.kid.as_deref(), s.reason.as_str())).collect();
    assert_eq!(
        reasons,
        vec![
            (Some("short"), "oct key of 5 bytes is shorter than 32"),
            (Some("off-curve"), "P-256 point is not on the curve"),
            (Some("k1"), "unsupported EC curve \"secp256k1\""),
            (Some("small"), "invalid RSA key: modulus too small"),
            (Some("enc"), "\"use\" is \"enc\", not \"sig\""),
            (Some("x448"), "unsupported OKP curve \"Ed448\""),
            (Some("pinned"), "\"alg\" RS256 does not fit a oct key"),
            (None, "not a JSON object"),
        ]
    );
    assert_eq!(JwksSet::parse(b"{\"keys\": []}").unwrap_err().to_string(), "no usable key in the JWKS");
    assert_eq!(JwksSet::parse(b"[]").unwrap_err().to_string(), "a JWKS is an object with a \"keys\" array");
}

#[test]
fn json_schema_generates() {
    let schema = serde_json::to_value(schemars::schema_for!(JwtDocument)).unwrap();
    let text = schema.to_string();
    for field in ["providers", "remote_jwks", "requires_any", "claim_to_headers", "equals_header", "allow_missing_or_failed"] {
        assert!(text.contains(field), "schema lacks {field}");
    }
}
