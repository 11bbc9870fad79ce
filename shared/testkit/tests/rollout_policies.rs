//! The `rollout` field of a policy document: config errors with field paths, canary assignment
//! (stable, evenly spread, by client address or header), shadow settings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewarden_ip_geo_policy::IpGeoPolicy;
use gatewarden_policy::rollout::{PolicySet, Role};
use gatewarden_policy::{compile, compile_set, FilterPolicy, RequestFacts};
use serde_json::{json, Value};

fn doc(rollout: Value) -> String {
    json!({
        "policy_version": "v1",
        "filter": "ip_geo",
        "client_address": {"xff_num_trusted_hops": 1},
        "default": {"deny": ["192.0.2.0/24"]},
        "rollout": rollout,
    })
    .to_string()
}

fn candidate() -> Value {
    json!({"policy_version": "v2", "default": {"deny": ["198.51.100.0/24"]}})
}

fn set(rollout: Value) -> PolicySet<IpGeoPolicy> {
    compile_set::<IpGeoPolicy>(doc(rollout).as_bytes()).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn role(set: &PolicySet<IpGeoPolicy>, headers: &[(&str, &str)], peer: &str) -> Role {
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let facts = RequestFacts::new(&headers, Some(peer));
    set.rollout.as_ref().unwrap().assign(set.header(), &facts)
}

fn xff(ip: &str) -> [(&'static str, String); 1] {
    [("x-forwarded-for", ip.to_string())]
}

fn role_of_client(set: &PolicySet<IpGeoPolicy>, ip: &str) -> Role {
    let h = xff(ip);
    let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    role(set, &pairs, "10.0.0.1:5000")
}

#[test]
fn config_errors_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"candidate": candidate()}), "rollout.percent: required: the share of clients (0 to 100) the candidate decides"),
        (json!({"candidate": candidate(), "percent": 100.5}), "rollout.percent: 100.5 is not between 0 and 100"),
        (json!({"candidate": candidate(), "percent": -1}), "rollout.percent: -1 is not between 0 and 100"),
        (json!({"candidate": candidate(), "percent": 5, "shadow": true}), "rollout.percent: 5 with shadow: true; a shadow candidate is evaluated on all traffic, remove percent"),
        (json!({"candidate": candidate(), "percent": 5, "hash_on": {"header": "x user"}}), "rollout.hash_on.header: invalid header name \"x user\""),
        (json!({"candidate": {"policy_version": "v1"}, "percent": 5}), "rollout.candidate.policy_version: the candidate needs its own version: \"v1\" is the active policy's, so logs and counters could not tell them apart"),
        (json!({"candidate": {"policy_version": "v2", "default": {"deny": ["10.0.0/8"]}}, "percent": 5}), "rollout.candidate.default.deny[0]: invalid CIDR \"10.0.0/8\": expected an IPv4 or IPv6 network like \"10.0.0.0/8\" or \"2001:db8::/32\""),
        (json!({"candidate": {"policy_version": "v2", "filter": "jwt"}, "percent": 5}), "rollout.candidate.filter: this policy is for filter \"jwt\", not \"ip_geo\""),
        (
            json!({"candidate": {"policy_version": "v2", "rollout": {"candidate": {"policy_version": "v3"}, "percent": 1}}, "percent": 5}),
            "rollout.candidate.rollout: a candidate cannot carry its own rollout",
        ),
        (
            json!({"candidate": {"policy_version": "v2", "signatures": [{"key_id": "a", "sig": "x"}]}, "percent": 5}),
            "rollout.candidate.signatures: sign the whole document, not the candidate",
        ),
    ];
    for (rollout, want) in cases {
        let err = compile::<IpGeoPolicy>(doc(rollout.clone()).as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), want, "rollout {rollout}");
    }
    // The candidate uses the background resources of the active policy: no other geo database.
    let geo = |path: &str| json!({"cluster": "gatewarden_geo_db", "path": path});
    let mut with_db: Value =
        serde_json::from_str(&doc(json!({"percent": 5, "candidate": {"policy_version": "v2", "geo_database": geo("/b.mmdb")}}))).unwrap();
    with_db["geo_database"] = geo("/a.mmdb");
    let err = compile::<IpGeoPolicy>(with_db.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().starts_with("rollout.candidate.geo_database: a candidate must use the active policy's geo_database (cluster \"gatewarden_geo_db\", path \"/b.mmdb\")"), "{err}");
    with_db["rollout"]["candidate"]["geo_database"] = geo("/a.mmdb");
    compile::<IpGeoPolicy>(with_db.to_string().as_bytes()).unwrap();
    // Unknown fields, in the rollout and in the candidate, are serde errors with their paths.
    let err = compile::<IpGeoPolicy>(doc(json!({"candidate": candidate(), "percent": 5, "percentage": 5})).as_bytes()).unwrap_err();
    assert_eq!(err.path(), "rollout.percentage", "{err}");
    let err = compile::<IpGeoPolicy>(doc(json!({"candidate": {"policy_version": "v2", "mod": "x"}, "percent": 5})).as_bytes()).unwrap_err();
    assert_eq!(err.path(), "rollout.candidate.mod", "{err}");
    let err = compile::<IpGeoPolicy>(doc(json!({"candidate": candidate(), "percent": 5, "hash_on": "cookie"})).as_bytes()).unwrap_err();
    assert_eq!(err.path(), "rollout.hash_on", "{err}");
}

#[test]
fn no_rollout_compiles_to_none() {
    let bytes = json!({"policy_version": "v1", "default": {}}).to_string();
    let set = compile_set::<IpGeoPolicy>(bytes.as_bytes()).unwrap();
    assert!(set.rollout.is_none());
}

#[test]
fn canary_at_ten_percent_takes_about_a_tenth_of_distinct_clients() {
    let set = set(json!({"candidate": candidate(), "percent": 10}));
    let n = 10_000u32;
    let on_candidate = (0..n)
        .filter(|i| role_of_client(&set, &format!("100.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)) == Role::Candidate)
        .count() as f64;
    // Binomial(10000, 0.1): sd = 30; allow 5 sd.
    assert!((850.0..=1150.0).contains(&on_candidate), "{on_candidate} of {n}");
}

#[test]
fn assignment_is_stable_and_monotonic_in_percent() {
    let ten = set(json!({"candidate": candidate(), "percent": 10}));
    let twenty = set(json!({"candidate": candidate(), "percent": 20}));
    let half = set(json!({"candidate": candidate(), "percent": 0.5}));
    let mut half_count = 0;
    for i in 0..2000u32 {
        let ip = format!("203.0.{}.{}", i / 250, i % 250);
        let r = role_of_client(&ten, &ip);
        assert_eq!(r, role_of_client(&ten, &ip), "one client, one policy");
        if r == Role::Candidate {
            assert_eq!(role_of_client(&twenty, &ip), Role::Candidate, "raising the percentage keeps the canary's clients");
        }
        if role_of_client(&half, &ip) == Role::Candidate {
            half_count += 1;
            assert_eq!(r, Role::Candidate);
        }
    }
    assert!((1..=30).contains(&half_count), "0.5 % of 2000: {half_count}");
    assert_eq!(ten.rollout.as_ref().unwrap().threshold(), 1000);
    assert_eq!(half.rollout.as_ref().unwrap().threshold(), 50);
}

#[test]
fn zero_and_hundred_percent_and_shadow() {
    let none = set(json!({"candidate": candidate(), "percent": 0}));
    let all = set(json!({"candidate": candidate(), "percent": 100}));
    let shadow = set(json!({"candidate": candidate(), "shadow": true}));
    for i in 0..200u32 {
        let ip = format!("198.18.0.{i}");
        assert_eq!(role_of_client(&none, &ip), Role::Active);
        assert_eq!(role_of_client(&all, &ip), Role::Candidate);
        assert_eq!(role_of_client(&shadow, &ip), Role::Active, "shadow never enforces the candidate");
    }
    assert!(shadow.rollout.as_ref().unwrap().shadow);
}

#[test]
fn client_is_the_active_policys_client_address() {
    let set = set(json!({"candidate": candidate(), "percent": 50}));
    // xff_num_trusted_hops: 1 — a spoofed left entry must not change the assignment.
    for i in 0..100u32 {
        let ip = format!("192.0.2.{i}");
        let spoofed = format!("6.6.6.{i}, {ip}");
        assert_eq!(role_of_client(&set, &ip), role_of_client(&set, &spoofed));
    }
    // Malformed XFF: no client address, so the active policy decides.
    let all = self::set(json!({"candidate": candidate(), "percent": 100}));
    assert_eq!(role_of_client(&all, "not-an-ip"), Role::Active);
}

#[test]
fn hash_on_header() {
    let set = set(json!({"candidate": candidate(), "percent": 30, "hash_on": {"header": "X-User-Id"}}));
    let mut n = 0;
    for i in 0..1000 {
        let user = format!("user-{i}");
        let a = role(&set, &[("x-user-id", &user)], "10.0.0.1:1");
        let b = role(&set, &[("x-user-id", &user)], "10.9.9.9:1");
        assert_eq!(a, b, "the address does not matter");
        n += usize::from(a == Role::Candidate);
    }
    // Binomial(1000, 0.3): sd ≈ 14.5; allow 5 sd.
    assert!((227..=373).contains(&n), "{n}");
    assert_eq!(role(&set, &[], "10.0.0.1:1"), Role::Active, "no header: the active policy");
    assert_eq!(IpGeoPolicy::NAME, "ip_geo");
}

#[test]
fn mutated_rollout_and_signed_documents_never_panic() {
    use ed25519_compact::{KeyPair, Seed};
    use gatewarden_policy::approvals::{encode_b64, signing_message, TrustConfig};
    let kp = KeyPair::from_seed(Seed::new([7; 32]));
    let trust = TrustConfig::parse(
        json!({"trusted_signers": [{"key_id": "k", "public_key": encode_b64(kp.pk.as_ref())}], "required_signatures": 1})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let mut base: Value =
        serde_json::from_str(&doc(json!({"candidate": candidate(), "percent": 12.5, "hash_on": {"header": "x-u"}}))).unwrap();
    let sig = encode_b64(kp.sk.sign(signing_message(&base).unwrap(), None).as_ref());
    base["signatures"] = json!([{"key_id": "k", "sig": sig}]);
    let base = base.to_string().into_bytes();
    assert!(trust.verify(&base).is_ok());
    assert!(compile_set::<IpGeoPolicy>(&base).is_ok());
    const ALPHABET: &[u8] = b"0123456789.:/[]{}\",-_ e+E\\\x00\xff\xc3";
    let mut state = 0x5eed_7011_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let (mut compiled, mut verified) = (0, 0);
    for _ in 0..10_000 {
        let mut bytes = base.clone();
        for _ in 0..=next(3) {
            let at = next(bytes.len());
            match next(3) {
                0 => bytes[at] = ALPHABET[next(ALPHABET.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, ALPHABET[next(ALPHABET.len())]),
            }
        }
        if let Ok(set) = compile_set::<IpGeoPolicy>(&bytes) {
            compiled += 1;
            if let Some(r) = &set.rollout {
                let headers = vec![("x-u".to_string(), "someone".to_string())];
                let _ = r.assign(set.header(), &RequestFacts::new(&headers, Some("10.0.0.1:1")));
            }
        }
        if trust.verify(&bytes).is_ok() {
            verified += 1;
        }
    }
    assert!(compiled > 100, "mutations should keep some documents valid: {compiled}");
    // A change that survives parsing changes the signed content (or only whitespace/signatures).
    assert!(verified < compiled, "{verified} verified of {compiled} compiled");
}

#[test]
fn jwt_candidate_must_use_the_active_remote_jwks() {
    use gatewarden_jwt_policy::JwtPolicy;
    let provider = |path: &str| json!({"issuer": "https://idp", "remote_jwks": {"cluster": "jwks", "path": path}});
    let doc = |cand_path: &str| {
        json!({
            "policy_version": "j1",
            "providers": {"idp": provider("/a")},
            "default": {"requires": {"provider": "idp"}},
            "rollout": {"percent": 5, "candidate": {"policy_version": "j2", "providers": {"idp": provider(cand_path)}, "default": {"requires": {"provider": "idp"}}}}
        })
        .to_string()
    };
    compile::<JwtPolicy>(doc("/a").as_bytes()).unwrap();
    let err = compile::<JwtPolicy>(doc("/b").as_bytes()).unwrap_err();
    assert_eq!(err.path(), "rollout.candidate.providers.idp.remote_jwks", "{err}");
}
