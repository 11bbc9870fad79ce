//! Native tests of the JWT policy's decision logic beyond single tokens: which reason a failed
//! `requires_any` / `requires_all` / `allow_missing` reports (and so which public response it
//! gets), the client address given to the decision log, and what goes upstream (stripping from
//! every source, padded payloads, claims of every JSON type, `allow_missing_or_failed`).
//! Tokens are HS256, signed here; time is injected.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::type_complexity)]

use std::net::IpAddr;

use gatewarden_jwt_policy::{JwtOutcome, JwtPolicy, NoRemoteKeys};
use gatewarden_policy::client_address::ClientAddressError;
use gatewarden_policy::{compile, RequestFacts, Verdict};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const NOW: u64 = 1_700_000_000;
const IDP: &str = "https://idp.test";
const HS: &str = "https://hs.test";
const SMALL: &str = "https://small.test";
const IDP_SECRET: &[u8] = b"idp-secret-that-is-at-least-thirty-two-bytes";
const HS_SECRET: &[u8] = b"hs-secret-that-is-at-least-thirty-two-bytes!";
const SMALL_SECRET: &[u8] = b"small-secret-that-is-at-least-thirty-two-byte";

fn b64(bytes: &[u8]) -> String {
    gatewarden_jwt_policy::b64::encode(bytes)
}

fn oct(kid: &str, secret: &[u8]) -> Value {
    json!({"keys": [{"kty": "oct", "kid": kid, "k": b64(secret)}]})
}

/// An HS256 token of issuer `iss` (signed with that issuer's key), claims valid at NOW unless
/// `extra` overrides them (null removes a claim).
fn token(iss: &str, extra: Value) -> String {
    let (kid, secret) = match iss {
        IDP => ("k-idp", IDP_SECRET),
        HS => ("k-hs", HS_SECRET),
        SMALL => ("k-small", SMALL_SECRET),
        // An issuer nobody configured: signed with a key nobody has.
        _ => ("k-stranger", b"a-stranger-secret-of-at-least-thirty-two-b".as_slice()),
    };
    let mut claims = json!({"iss": iss, "aud": "api", "sub": "user-1", "iat": NOW - 10, "exp": NOW + 600});
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let header = json!({"alg": "HS256", "kid": kid, "typ": "JWT"});
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    m.update(input.as_bytes());
    format!("{input}.{}", b64(&m.finalize().into_bytes()))
}

fn with_bad_signature(t: &str) -> String {
    let (head, sig) = t.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
    format!("{head}.{}", String::from_utf8(sig).unwrap())
}

fn policy_doc() -> Value {
    json!({
        "policy_version": "r1",
        "realm": "api",
        "providers": {
            // Authorization: Bearer only (the default source).
            "idp": {"issuer": IDP, "audiences": ["api"], "local_jwks": oct("k-idp", IDP_SECRET),
                    "claim_to_headers": [{"claim": "sub", "header": "x-idp-user"}]},
            // Authorization, a header of its own, a query parameter and a cookie.
            "hs": {"issuer": HS, "audiences": ["api"], "local_jwks": oct("k-hs", HS_SECRET),
                   "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-hs-token"}],
                   "from_params": ["access_token"], "from_cookies": ["hs_session"],
                   "claim_to_headers": [{"claim": "sub", "header": "x-hs-user"}]},
            // Reads Authorization too, but refuses anything longer than 64 bytes unread.
            "small": {"issuer": SMALL, "local_jwks": oct("k-small", SMALL_SECRET), "max_token_bytes": 64}
        },
        "rules": [
            {"name": "any", "match": {"path_prefix": "/any/"}, "requires": {"requires_any": [{"provider": "idp"}, {"provider": "hs"}]}},
            {"name": "any-rev", "match": {"path_prefix": "/any-rev/"}, "requires": {"requires_any": [{"provider": "hs"}, {"provider": "idp"}]}},
            {"name": "all", "match": {"path_prefix": "/all/"}, "requires": {"requires_all": [{"provider": "idp"}, {"provider": "hs"}]}},
            {"name": "small-any", "match": {"path_prefix": "/small-any/"}, "requires": {"requires_any": [{"provider": "small"}, {"provider": "hs"}]}},
            {"name": "nested", "match": {"path_prefix": "/nested/"}, "requires": {"requires_any": [{"requires_all": [{"provider": "idp"}, {"provider": "hs"}]}, {"provider": "small"}]}},
            {"name": "opt", "match": {"path_prefix": "/opt/"}, "requires": "allow_missing"},
            {"name": "opt-hs", "match": {"path_prefix": "/opt-hs/"}, "requires": {"requires_any": [{"provider": "hs"}, "allow_missing"]}},
            {"name": "opt-idp", "match": {"path_prefix": "/opt-idp/"}, "requires": {"requires_any": [{"provider": "idp"}, "allow_missing"]}},
            {"name": "lax-idp", "match": {"path_prefix": "/lax-idp/"}, "requires": {"requires_any": [{"provider": "idp"}, "allow_missing_or_failed"]}},
            {"name": "lax", "match": {"path_prefix": "/lax/"}, "requires": "allow_missing_or_failed"},
            {"name": "hs", "match": {"path_prefix": "/hs/"}, "requires": {"provider": "hs"}},
            {"name": "idp", "match": {"path_prefix": "/idp/"}, "requires": {"provider": "idp"}}
        ],
        "default": {}
    })
}

fn policy_from(doc: &Value) -> JwtPolicy {
    compile::<JwtPolicy>(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

fn request(path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), path.to_string())];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

fn decide_at(p: &JwtPolicy, path: &str, extra: &[(&str, &str)], peer: Option<&str>) -> JwtOutcome {
    let h = request(path, extra);
    // The same decision from only the headers `header_needs` lists (the native module's read).
    let needs = p.header_needs();
    let only: Vec<(String, String)> = h.iter().filter(|(k, _)| needs.names().iter().any(|n| n == k)).cloned().collect();
    let partial = p.decide(&RequestFacts::new(&only, peer).with_header_count(h.len()), NOW, &NoRemoteKeys, None);
    let full = p.decide(&RequestFacts::new(&h, peer), NOW, &NoRemoteKeys, None);
    assert_eq!(partial, full, "decided on the headers header_needs lists ({:?}) for {h:?}", needs.names());
    full
}

fn decide(p: &JwtPolicy, path: &str, extra: &[(&str, &str)]) -> JwtOutcome {
    decide_at(p, path, extra, None)
}

/// (reason or "allow", status, WWW-Authenticate)
fn public(o: &JwtOutcome) -> (&'static str, u16, Option<String>) {
    let www = o.response_headers.iter().find(|(k, _)| k == "www-authenticate").map(|(_, v)| v.clone());
    match &o.decision.verdict {
        Verdict::Allow => ("allow", 200, www),
        Verdict::Deny(d) => (d.reason, d.status, www),
    }
}

const MISSING: Option<&str> = Some(r#"Bearer realm="api""#);
const INVALID: Option<&str> = Some(r#"Bearer realm="api", error="invalid_token""#);

#[test]
fn a_failed_requirement_reports_the_reason_of_the_token_s_own_provider() {
    let p = policy_from(&policy_doc());
    let hs_expired = token(HS, json!({"iat": NOW - 7200, "exp": NOW - 3600}));
    let hs_wrong_aud = token(HS, json!({"aud": "billing"}));
    let hs_bad_sig = with_bad_signature(&token(HS, json!({})));
    let hs_ok = token(HS, json!({}));
    let idp_expired = token(IDP, json!({"iat": NOW - 7200, "exp": NOW - 3600}));
    let idp_ok = token(IDP, json!({}));
    let stranger = token("https://stranger.test", json!({}));
    let auth = |t: &str| format!("Bearer {t}");
    let (a_hs_expired, a_hs_wrong_aud, a_hs_bad_sig, a_idp_expired, a_idp_ok, a_stranger) =
        (auth(&hs_expired), auth(&hs_wrong_aud), auth(&hs_bad_sig), auth(&idp_expired), auth(&idp_ok), auth(&stranger));
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<(&str, &str)>, (&str, u16, Option<&str>))> = vec![
        // requires_any [idp, hs]: a token of hs that hs refuses is reported with hs's reason,
        // not idp's "issuer" (the token is not idp's), whatever the order of the alternatives.
        ("/any/", vec![("authorization", &a_hs_expired)], ("expired", 401, INVALID)),
        ("/any-rev/", vec![("authorization", &a_hs_expired)], ("expired", 401, INVALID)),
        ("/any/", vec![("authorization", &a_hs_bad_sig)], ("bad_signature", 401, INVALID)),
        ("/any/", vec![("x-hs-token", &hs_expired)], ("expired", 401, INVALID)),
        // Its status follows its reason, as with the single provider: a valid hs token for
        // another audience is 403 under requires_any too.
        ("/any/", vec![("authorization", &a_hs_wrong_aud)], ("audience", 403, None)),
        ("/hs/", vec![("authorization", &a_hs_wrong_aud)], ("audience", 403, None)),
        ("/any/", vec![("authorization", &a_idp_expired)], ("expired", 401, INVALID)),
        ("/any/", vec![("authorization", &a_stranger)], ("issuer", 401, INVALID)),
        ("/any/", vec![], ("missing", 401, MISSING)),
        // A provider that refuses every token unread (too long for it) did not claim the token:
        // the provider whose issuer it names reports.
        ("/small-any/", vec![("authorization", &a_hs_expired)], ("expired", 401, INVALID)),
        // requires_all: the failed token is reported, not the provider that found none.
        ("/all/", vec![("authorization", &a_hs_expired)], ("expired", 401, INVALID)),
        ("/all/", vec![("x-hs-token", &hs_expired)], ("expired", 401, INVALID)),
        ("/all/", vec![("authorization", &a_idp_ok), ("x-hs-token", &hs_expired)], ("expired", 401, INVALID)),
        ("/all/", vec![("authorization", &a_idp_expired), ("x-hs-token", &hs_ok)], ("expired", 401, INVALID)),
        ("/all/", vec![("authorization", &a_idp_ok), ("x-hs-token", &hs_ok)], ("allow", 200, None)),
        ("/all/", vec![("x-hs-token", &hs_ok)], ("missing", 401, MISSING)),
        // The only token is idp's: for hs it is a token of another issuer.
        ("/all/", vec![("authorization", &a_idp_ok)], ("issuer", 401, INVALID)),
        // Nested: the same rule at every level.
        ("/nested/", vec![("x-hs-token", &hs_expired)], ("expired", 401, INVALID)),
        ("/nested/", vec![("authorization", &a_hs_expired)], ("expired", 401, INVALID)),
        ("/nested/", vec![], ("missing", 401, MISSING)),
        // allow_missing: present tokens must be valid for their provider.
        ("/opt/", vec![("authorization", &a_hs_expired)], ("expired", 401, INVALID)),
        ("/opt/", vec![("x-hs-token", &stranger)], ("issuer", 401, INVALID)),
        // In Authorization, "small" cannot read it (too long for it): that says more than
        // "not mine" from the others, which read it.
        ("/opt/", vec![("authorization", &a_stranger)], ("too_large", 401, INVALID)),
        ("/opt/", vec![], ("allow", 200, None)),
    ];
    for (path, hs, (reason, status, www)) in cases {
        let o = decide(&p, path, &hs);
        assert_eq!(public(&o), (reason, status, www.map(str::to_owned)), "{path} with {:?}", hs.iter().map(|h| h.0).collect::<Vec<_>>());
        assert_eq!(o.reason.map(|r| r.as_str()), (reason != "allow").then_some(reason));
    }
}

fn with_client_address(client_address: Value) -> JwtPolicy {
    let mut doc = policy_doc();
    doc["client_address"] = client_address;
    policy_from(&doc)
}

#[test]
fn the_logged_client_follows_client_address_and_never_affects_authentication() {
    let p = with_client_address(json!({"xff_num_trusted_hops": 1}));
    let ok = format!("Bearer {}", token(IDP, json!({})));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();

    // Denied: the client is the address the trusted proxy saw, not the proxy.
    let o = decide_at(&p, "/idp/", &[("x-forwarded-for", "6.6.6.6, 203.0.113.9")], Some("10.0.0.1:4000"));
    assert_eq!(public(&o).0, "missing");
    assert_eq!(o.client, Some(Ok(ip("203.0.113.9"))));
    // Fewer entries than trusted hops: the peer.
    let o = decide_at(&p, "/idp/", &[], Some("10.0.0.1:4000"));
    assert_eq!(o.client, Some(Ok(ip("10.0.0.1"))));

    // A malformed x-forwarded-for changes no decision: a valid token passes, a missing one is
    // "missing" (never an IP filter's client_address_invalid) and the client is unknown.
    let bogus = [("x-forwarded-for", "10.9.9.9, bogus")];
    let o = decide_at(&p, "/idp/", &[bogus[0], ("authorization", &ok)], Some("10.0.0.1:4000"));
    assert_eq!((public(&o).0, o.client), ("allow", None), "allowed: nothing to log");
    let o = decide_at(&p, "/idp/", &bogus, Some("10.0.0.1:4000"));
    assert_eq!(public(&o), ("missing", 401, MISSING.map(str::to_owned)));
    assert_eq!(o.client, Some(Err(ClientAddressError::MalformedForwardedFor)));
    let o = decide_at(&p, "/idp/", &[], None);
    assert_eq!(o.client, Some(Err(ClientAddressError::NoPeer)));

    // Default settings: the peer, x-forwarded-for ignored.
    let p = policy_from(&policy_doc());
    let o = decide_at(&p, "/idp/", &[("x-forwarded-for", "203.0.113.9")], Some("[::ffff:10.0.0.2]:1"));
    assert_eq!(o.client, Some(Ok(ip("10.0.0.2"))));

    // trusted_proxies: right to left past the trusted ones.
    let p = with_client_address(json!({"trusted_proxies": ["10.0.0.0/8"]}));
    let o = decide_at(&p, "/idp/", &[("x-forwarded-for", "203.0.113.9, 10.1.1.1")], Some("10.0.0.1:1"));
    assert_eq!(o.client, Some(Ok(ip("203.0.113.9"))));
}

#[test]
fn allow_missing_fails_on_a_refused_token_even_beside_a_valid_one() {
    let p = policy_from(&policy_doc());
    let idp_ok = format!("Bearer {}", token(IDP, json!({})));
    let hs_expired = token(HS, json!({"iat": NOW - 7200, "exp": NOW - 3600}));
    let hs_ok = token(HS, json!({}));
    #[rustfmt::skip]
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        // hs refuses its own token: the request fails although idp's token is valid (Envoy
        // verifies every token under allow_missing).
        (vec![("authorization", &idp_ok), ("x-hs-token", &hs_expired)], "expired"),
        (vec![("authorization", &idp_ok), ("x-hs-token", &hs_ok)], "allow"),
        // Garbage beside a valid token is nobody's token; idp's token is too long for "small"
        // to read, and not hs's: neither is a refusal.
        (vec![("authorization", &idp_ok), ("x-hs-token", "not-a-jwt")], "allow"),
        (vec![("authorization", &idp_ok)], "allow"),
        (vec![("x-hs-token", "not-a-jwt")], "malformed"),
    ];
    for (hs, want) in cases {
        let o = decide(&p, "/opt/", &hs);
        assert_eq!(public(&o).0, want, "{:?}", hs.iter().map(|h| h.0).collect::<Vec<_>>());
    }
}

#[test]
fn allow_missing_or_failed_forwards_only_verified_tokens() {
    let p = policy_from(&policy_doc());
    let hs_expired = format!("Bearer {}", token(HS, json!({"iat": NOW - 7200, "exp": NOW - 3600})));
    let idp_ok = format!("Bearer {}", token(IDP, json!({"sub": "alice"})));
    // A failed token: allowed, nothing set, forged claim headers removed, the token left where
    // it was (it was not verified, so `forward: false` does not apply, as in Envoy).
    let o = decide(&p, "/lax/", &[("authorization", &hs_expired), ("x-hs-user", "forged")]);
    assert_eq!(public(&o).0, "allow");
    assert!(o.set_headers.is_empty() && o.verified.is_empty(), "{o:?}");
    assert!(o.remove_headers.contains(&"x-hs-user".to_string()));
    assert!(!o.remove_headers.contains(&"authorization".to_string()));
    // A valid token: its claims go upstream and the token is removed.
    let o = decide(&p, "/lax/", &[("authorization", &idp_ok), ("x-idp-user", "forged")]);
    assert_eq!(public(&o).0, "allow");
    assert_eq!(o.set_headers, vec![("x-idp-user".to_string(), "alice".to_string())]);
    assert!(o.remove_headers.contains(&"authorization".to_string()));
    assert_eq!(o.verified, vec![std::sync::Arc::<str>::from("idp")]);
}

#[test]
fn forward_false_strips_the_token_from_every_place_it_was_found() {
    let p = policy_from(&policy_doc());
    let t = token(HS, json!({}));
    let auth = format!("Bearer {t}");
    let path = format!("/hs/x?a=1&access_token={t}&b=2&access_token={t}");
    let cookie = format!("theme=dark; hs_session={t}; lang=en");
    let o = decide(&p, &path, &[("authorization", &auth), ("cookie", &cookie)]);
    assert_eq!(public(&o).0, "allow");
    assert!(o.remove_headers.contains(&"authorization".to_string()), "{o:?}");
    assert!(o.set_headers.contains(&(":path".into(), "/hs/x?a=1&b=2".into())), "{o:?}");
    assert!(o.remove_headers.contains(&"cookie".to_string()), "{o:?}");
    assert!(o.set_headers.contains(&("cookie".into(), "theme=dark; lang=en".into())), "{o:?}");

    // The token in the second of two cookie headers (HTTP/2 sends one per cookie): every cookie
    // header is removed, the others come back as one.
    let o = decide(&p, "/hs/", &[("cookie", "theme=dark"), ("cookie", &format!("hs_session={t}"))]);
    assert_eq!(public(&o).0, "allow");
    assert!(o.remove_headers.contains(&"cookie".to_string()), "{o:?}");
    assert_eq!(
        o.set_headers.iter().filter(|(k, _)| k == "cookie").collect::<Vec<_>>(),
        vec![&("cookie".to_string(), "theme=dark".to_string())]
    );
    // Only the token: no cookie header at all.
    let o = decide(&p, "/hs/", &[("cookie", &format!("hs_session={t}"))]);
    assert!(o.remove_headers.contains(&"cookie".to_string()));
    assert!(!o.set_headers.iter().any(|(k, _)| k == "cookie"), "{o:?}");

    // forward: true keeps it everywhere.
    let mut doc = policy_doc();
    doc["providers"]["hs"]["forward"] = json!(true);
    let o = decide(&policy_from(&doc), &path, &[("authorization", &auth), ("cookie", &cookie)]);
    assert_eq!(public(&o).0, "allow");
    assert!(!o.remove_headers.iter().any(|h| h == "authorization" || h == "cookie"), "{o:?}");
    assert!(!o.set_headers.iter().any(|(k, _)| k == ":path" || k == "cookie"), "{o:?}");
}

#[test]
fn payload_header_padded_on_request_and_claims_of_every_type() {
    let mut doc = policy_doc();
    doc["providers"]["hs"]["forward_payload_header"] = json!("x-jwt-payload");
    doc["providers"]["hs"]["claim_to_headers"] = json!([
        {"claim": "s", "header": "x-s"}, {"claim": "n", "header": "x-n"}, {"claim": "neg", "header": "x-neg"},
        {"claim": "f", "header": "x-f"}, {"claim": "b", "header": "x-b"}, {"claim": "o.inner.deep", "header": "x-deep"},
        {"claim": "o", "header": "x-o"}, {"claim": "a", "header": "x-a"}, {"claim": "nul", "header": "x-nul"},
        {"claim": "absent", "header": "x-absent"}
    ]);
    let claims = json!({"s": "text", "n": 42, "neg": -3, "f": 1.5, "b": false, "o": {"inner": {"deep": true}},
                        "a": ["x", 1], "nul": null});
    // Payloads of every length modulo 4 (the "pad" claim grows the JSON one byte at a time).
    for extra in 0..4 {
        let mut c = claims.clone();
        c["pad"] = json!("p".repeat(extra));
        let t = token(HS, c);
        let segment = t.split('.').nth(1).unwrap().to_string();
        let auth = format!("Bearer {t}");
        let header = |o: &JwtOutcome, h: &str| o.set_headers.iter().find(|(k, _)| k == h).map(|(_, v)| v.clone());
        let o = decide(&policy_from(&doc), "/hs/", &[("authorization", &auth)]);
        assert_eq!(header(&o, "x-jwt-payload"), Some(segment.clone()), "unpadded by default");
        assert_eq!(header(&o, "x-s").as_deref(), Some("text"));
        assert_eq!(header(&o, "x-n").as_deref(), Some("42"));
        assert_eq!(header(&o, "x-neg").as_deref(), Some("-3"));
        assert_eq!(header(&o, "x-f").as_deref(), Some("1.5"));
        assert_eq!(header(&o, "x-b").as_deref(), Some("false"));
        assert_eq!(header(&o, "x-deep").as_deref(), Some("true"));
        assert_eq!(header(&o, "x-o"), Some(b64(br#"{"inner":{"deep":true}}"#)));
        assert_eq!(header(&o, "x-a"), Some(b64(br#"["x",1]"#)));
        assert_eq!((header(&o, "x-nul"), header(&o, "x-absent")), (None, None));

        let mut padded = doc.clone();
        padded["providers"]["hs"]["pad_forward_payload_header"] = json!(true);
        let o = decide(&policy_from(&padded), "/hs/", &[("authorization", &auth)]);
        let v = header(&o, "x-jwt-payload").unwrap();
        assert_eq!(v.len() % 4, 0, "{v}");
        assert_eq!(v.trim_end_matches('='), segment);
        assert!(v.len() - segment.len() < 4);
    }
    let mut bad = policy_doc();
    bad["providers"]["hs"]["pad_forward_payload_header"] = json!(true);
    let err = compile::<JwtPolicy>(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.to_string(), "providers.hs.pad_forward_payload_header: true needs forward_payload_header");
}

/// Inside `requires_any`, `allow_missing` and `allow_missing_or_failed` apply to the listed
/// alternatives only (as in Envoy): a token of an unlisted provider is not accepted in their
/// place, and its claims are never forwarded on that route.
#[test]
fn allow_missing_inside_requires_any_covers_the_listed_providers_only() {
    let p = policy_from(&policy_doc());
    let idp_ok = format!("Bearer {}", token(IDP, json!({"sub": "alice"})));
    let hs_ok = token(HS, json!({"sub": "bob"}));
    let hs_expired = token(HS, json!({"iat": NOW - 7200, "exp": NOW - 3600}));
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<(&str, &str)>, &str, Vec<(&str, &str)>)> = vec![
        ("/opt-hs/", vec![], "allow", vec![]),
        ("/opt-hs/", vec![("x-hs-token", &hs_ok)], "allow", vec![("x-hs-user", "bob")]),
        ("/opt-hs/", vec![("x-hs-token", &hs_expired)], "expired", vec![]),
        // A valid token of idp, which the rule does not list: hs sees a token not its own.
        ("/opt-hs/", vec![("authorization", &idp_ok)], "issuer", vec![]),
        // Where the listed provider does not look, the request passes as without a token, and
        // the unlisted provider's claims do not reach the upstream.
        ("/opt-idp/", vec![("x-hs-token", &hs_ok)], "allow", vec![]),
        ("/opt-idp/", vec![("authorization", &idp_ok)], "allow", vec![("x-idp-user", "alice")]),
        ("/lax-idp/", vec![("x-hs-token", &hs_ok)], "allow", vec![]),
        ("/lax-idp/", vec![("authorization", &idp_ok)], "allow", vec![("x-idp-user", "alice")]),
    ];
    for (path, hs, want, set) in cases {
        let o = decide(&p, path, &hs);
        let names: Vec<&str> = hs.iter().map(|h| h.0).collect();
        assert_eq!(public(&o).0, want, "{path} with {names:?}");
        let set: Vec<(String, String)> = set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(o.set_headers, set, "{path} with {names:?}");
    }
}

/// Envoy's `provider_and_audiences`: the provider's token, with the requirement's audiences in
/// place of the provider's own, for that requirement only.
#[test]
fn provider_and_audiences_replaces_the_provider_s_audiences_for_that_requirement() {
    let mut doc = policy_doc();
    let pa = |auds: Value| json!({"provider_and_audiences": {"provider": "hs", "audiences": auds}});
    let rules = doc["rules"].as_array_mut().unwrap();
    rules.insert(0, json!({"name": "billing", "match": {"path_prefix": "/billing/"}, "requires": pa(json!(["billing", "payments"]))}));
    rules.insert(
        0,
        json!({"name": "billing-or-idp", "match": {"path_prefix": "/billing-or-idp/"},
                          "requires": {"requires_any": [pa(json!(["billing"])), {"provider": "idp"}]}}),
    );
    rules.insert(
        0,
        json!({"name": "both", "match": {"path_prefix": "/both/"},
                          "requires": {"requires_all": [pa(json!(["billing"])), {"provider": "hs"}]}}),
    );
    rules
        .insert(0, json!({"name": "same-again", "match": {"path_prefix": "/same-again/"}, "requires": pa(json!(["billing", "payments"]))}));
    let p = policy_from(&doc);
    // The copies are not providers of their own: not listed, not fetched for.
    assert_eq!(p.provider_names().collect::<Vec<_>>(), vec!["hs", "idp", "small"]);
    assert_eq!(p.remote_jwks().count(), 0);

    let auth = |t: &str| format!("Bearer {t}");
    let billing = auth(&token(HS, json!({"aud": ["other", "billing"]})));
    let payments = auth(&token(HS, json!({"aud": "payments"})));
    let api = auth(&token(HS, json!({})));
    let no_aud = auth(&token(HS, json!({"aud": null})));
    let expired_billing = auth(&token(HS, json!({"aud": "billing", "iat": NOW - 7200, "exp": NOW - 3600})));
    let idp = auth(&token(IDP, json!({})));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, (&str, u16, Option<&str>))> = vec![
        ("/billing/", &billing, ("allow", 200, None)),
        ("/billing/", &payments, ("allow", 200, None)),
        ("/same-again/", &payments, ("allow", 200, None)),
        // The provider's own audience does not count here, and no `aud` fails an audience list.
        ("/billing/", &api, ("audience", 403, None)),
        ("/billing/", &no_aud, ("audience", 403, None)),
        // Everything else about the provider still holds.
        ("/billing/", &expired_billing, ("expired", 401, INVALID)),
        ("/billing/", &idp, ("issuer", 401, INVALID)),
        ("/billing/", "", ("missing", 401, MISSING)),
        // Elsewhere the provider keeps its own audiences.
        ("/hs/", &billing, ("audience", 403, None)),
        ("/hs/", &api, ("allow", 200, None)),
        ("/billing-or-idp/", &billing, ("allow", 200, None)),
        ("/billing-or-idp/", &idp, ("allow", 200, None)),
        ("/billing-or-idp/", &api, ("audience", 403, None)),
        // One token for both: it must carry both audiences' worth.
        ("/both/", &billing, ("audience", 403, None)),
    ];
    for (path, authz, (reason, status, www)) in cases {
        let extra: Vec<(&str, &str)> = if authz.is_empty() { vec![] } else { vec![("authorization", authz)] };
        let o = decide(&p, path, &extra);
        assert_eq!(public(&o), (reason, status, www.map(str::to_owned)), "{path} with {authz}");
    }
    // A token with both audiences passes both parts; the claim header and the log name the
    // provider once.
    let both = auth(&token(HS, json!({"aud": ["api", "billing"]})));
    let o = decide(&p, "/both/", &[("authorization", &both)]);
    assert_eq!(public(&o).0, "allow");
    assert_eq!(o.verified.iter().map(|n| n.to_string()).collect::<Vec<_>>(), vec!["hs"]);
    assert_eq!(o.set_headers.iter().filter(|(k, _)| k == "x-hs-user").count(), 1);
    assert!(o.remove_headers.iter().any(|h| h == "authorization"));
}
