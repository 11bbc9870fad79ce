//! Native tests of the rate-limit policy: decisions with injected time, keys, headers, the key
//! table under a flood, config errors.

use super::*;
use crate::config::RateLimitDocument;
use crate::table::{limit_tag, KeyState, MemoryTable, Slot, TableShape};
use gatewarden_policy::document::{compile, Mode};

const S: u64 = crate::gcra::US_PER_SECOND;
const T0: u64 = 1_764_000_000 * S;
const SEED: u64 = 7;

const POLICY: &str = r#"{
  "policy_version": "t1",
  "rules": [
    {"name": "api", "match": {"path_prefix": "/api"},
     "limits": [{"name": "per-second", "rate": 2, "per": "1s", "burst": 3}, {"name": "hourly", "rate": 5, "per_seconds": 3600}],
     "key": [{"header": "x-api-key"}], "headers": "ietf_and_legacy"},
    {"name": "costly", "match": {"path_prefix": "/search"},
     "limits": [{"name": "units", "rate": 10, "per": "1m"}],
     "cost": {"header": "x-cost", "max": 8}, "key": [{"claim_header": "x-user"}, "method"],
     "on_missing_key": "shared", "headers_on_allowed": true},
    {"name": "open", "match": {"path_prefix": "/open"},
     "limits": [{"name": "l", "rate": 1, "per": "1d"}], "key": [{"header": "x-api-key"}], "on_missing_key": "allow"},
    {"name": "free", "match": {"path_prefix": "/free"}}
  ],
  "default": {"limits": [{"name": "ip", "rate": 1, "per": "1s", "burst": 1}], "headers": "none"}
}"#;

fn policy(json: &str) -> RateLimitPolicy {
    compile::<RateLimitPolicy>(json.as_bytes()).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

fn request(path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), path.to_string())];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

fn decide(p: &RateLimitPolicy, t: &mut MemoryTable, now: u64, path: &str, peer: &str, extra: &[(&str, &str)]) -> RateLimitOutcome {
    let headers = request(path, extra);
    p.decide(&RequestFacts::new(&headers, Some(peer)), now, SEED, t)
}

fn verdict(o: &RateLimitOutcome) -> &'static str {
    o.decision.reason().unwrap_or("allow")
}

fn header<'a>(o: &'a RateLimitOutcome, name: &str) -> Option<&'a str> {
    o.response_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn several_limits_and_the_429_response() {
    let p = policy(POLICY);
    let mut t = MemoryTable::new(1024);
    let k = [("x-api-key", "alice")];
    let got: Vec<_> = (0..4).map(|_| verdict(&decide(&p, &mut t, T0, "/api/x", "192.0.2.1:1", &k))).collect();
    assert_eq!(got, ["allow", "allow", "allow", "limited"], "burst 3 of the per-second limit");
    let o = decide(&p, &mut t, T0, "/api/x", "192.0.2.1:1", &k);
    assert_eq!(o.decision.rule.as_ref(), "api");
    assert_eq!(o.decision.verdict, gatewarden_policy::Verdict::Deny(RateLimitReason::Limited.denial()));
    assert_eq!(o.violated.iter().map(|v| v.as_ref()).collect::<Vec<_>>(), ["per-second"]);
    assert_eq!(o.client, Some("192.0.2.1".parse().unwrap()), "the denial's log line names the client");
    let body: serde_json::Value = serde_json::from_str(o.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
            "title": "Request cannot be satisfied as assigned quota has been exceeded", "status": 429,
            "violated-policies": ["per-second"]})
    );
    assert_eq!(header(&o, "content-type"), Some("application/problem+json"));
    assert_eq!(header(&o, "retry-after"), Some("1"), "0.5 s rounded up");
    assert_eq!(header(&o, "ratelimit-policy"), Some(r#""per-second";q=2;w=1, "hourly";q=5;w=3600"#));
    assert_eq!(header(&o, "ratelimit"), Some(r#""per-second";r=0;t=2, "hourly";r=2;t=2160"#));
    assert_eq!(header(&o, "x-ratelimit-limit"), Some("2"), "legacy headers describe the most constraining limit");
    assert_eq!(header(&o, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&o, "x-ratelimit-reset"), Some("2"));

    // Another key has its own buckets; an allowed response carries no headers here.
    let bob = decide(&p, &mut t, T0, "/api/x", "192.0.2.1:1", &[("x-api-key", "bob")]);
    assert_eq!((verdict(&bob), bob.response_headers.len(), bob.client), ("allow", 0, None));

    // 0.5 s later one unit came back; 2 s later the per-second bucket is full but the hourly
    // limit (5, of which 3 spent) admits only 2 more, and denies alone.
    assert_eq!(verdict(&decide(&p, &mut t, T0 + S / 2, "/api/x", "192.0.2.1:1", &k)), "allow");
    let got: Vec<_> = (0..3).map(|_| verdict(&decide(&p, &mut t, T0 + 3 * S, "/api/x", "192.0.2.1:1", &k))).collect();
    assert_eq!(got, ["allow", "limited", "limited"]);
    let o = decide(&p, &mut t, T0 + 3 * S, "/api/x", "192.0.2.1:1", &k);
    assert_eq!(o.violated.iter().map(|v| v.as_ref()).collect::<Vec<_>>(), ["hourly"]);
    assert_eq!(header(&o, "retry-after"), Some("717"), "one hourly unit (720 s) after the first, minus the 3 s passed");
}

#[test]
fn cost_from_a_header_and_headers_on_allowed() {
    let p = policy(POLICY);
    let mut t = MemoryTable::new(1024);
    let user = |cost: &'static str| [("x-user", "u1"), ("x-cost", cost)];
    let o = decide(&p, &mut t, T0, "/search", "192.0.2.1:1", &user("4"));
    assert_eq!((verdict(&o), o.cost), ("allow", Some(4)));
    assert_eq!(header(&o, "ratelimit"), Some(r#""units";r=6;t=24"#), "headers_on_allowed, ietf only");
    assert_eq!(header(&o, "x-ratelimit-limit"), None);
    assert_eq!(verdict(&decide(&p, &mut t, T0, "/search", "192.0.2.1:1", &user("7"))), "limited", "6 left");
    assert_eq!(verdict(&decide(&p, &mut t, T0, "/search", "192.0.2.1:1", &user("6"))), "allow");
    for bad in ["9", "-1", "1.5", "", "abc", "99999999999999999999999"] {
        assert_eq!(verdict(&decide(&p, &mut t, T0, "/search", "192.0.2.1:1", &user(bad))), "cost_invalid", "{bad:?}");
    }
    let o = decide(&p, &mut t, T0, "/search", "192.0.2.1:1", &user("0"));
    assert_eq!(verdict(&o), "limited", "cost 0 is still checked while exhausted");
    // Missing x-cost: the default 1. The method is part of the key: POST has its own bucket.
    let mut post = request("/search", &[("x-user", "u1")]);
    post[0].1 = "POST".into();
    assert_eq!(verdict(&p.decide(&RequestFacts::new(&post, Some("192.0.2.1:1")), T0, SEED, &mut t)), "allow");

    // A cost above the burst: never admitted, no Retry-After.
    let p2 = policy(
        r#"{"policy_version":"t","default":{"limits":[{"name":"l","rate":10,"per":"1s","burst":2}],"cost":{"header":"x-cost","max":5}}}"#,
    );
    let o = decide(&p2, &mut MemoryTable::new(8), T0, "/", "192.0.2.1:1", &[("x-cost", "3")]);
    assert_eq!(verdict(&o), "cost_over_burst");
    assert_eq!(o.decision.verdict, gatewarden_policy::Verdict::Deny(RateLimitReason::CostOverBurst.denial()));
    assert_eq!(header(&o, "retry-after"), None);
    assert_eq!(o.violated.len(), 1);
}

#[test]
fn missing_key_parts() {
    let p = policy(POLICY);
    let mut t = MemoryTable::new(1024);
    // deny (the default): 403 key_missing.
    let o = decide(&p, &mut t, T0, "/api", "192.0.2.1:1", &[]);
    assert_eq!(
        (verdict(&o), o.decision.verdict.clone()),
        ("key_missing", gatewarden_policy::Verdict::Deny(RateLimitReason::KeyMissing.denial()))
    );
    // allow: unlimited.
    for _ in 0..5 {
        assert_eq!(verdict(&decide(&p, &mut t, T0, "/open", "192.0.2.1:1", &[])), "allow");
    }
    let got: Vec<_> = (0..2).map(|_| verdict(&decide(&p, &mut t, T0, "/open", "192.0.2.1:1", &[("x-api-key", "k")]))).collect();
    assert_eq!(got, ["allow", "limited"], "with the key, the limit applies");
    // shared: every request without x-user shares one bucket (10 units), apart from any user's.
    let anon = |t: &mut MemoryTable, peer| verdict(&decide(&p, t, T0, "/search", peer, &[("x-cost", "5")]));
    assert_eq!([anon(&mut t, "192.0.2.1:1"), anon(&mut t, "198.51.100.7:1"), anon(&mut t, "203.0.113.9:1")], ["allow", "allow", "limited"]);
    assert_eq!(
        verdict(&decide(&p, &mut t, T0, "/search", "192.0.2.1:1", &[("x-user", ""), ("x-cost", "5")])),
        "allow",
        "an empty value is a value"
    );
    // client_address unresolvable under the default rule (key client_address, on_missing deny).
    let headers = request("/", &[]);
    assert_eq!(verdict(&p.decide(&RequestFacts::new(&headers, None), T0, SEED, &mut t)), "key_missing");
}

#[test]
fn keys_are_per_rule_and_client_address_follows_trusted_hops() {
    let p =
        policy(&POLICY.replace(r#""policy_version": "t1","#, r#""policy_version": "t1", "client_address": {"xff_num_trusted_hops": 1},"#));
    let mut t = MemoryTable::new(1024);
    let via = |t: &mut MemoryTable, xff: &str| verdict(&decide(&p, t, T0, "/", "10.0.0.1:1", &[("x-forwarded-for", xff)]));
    assert_eq!([via(&mut t, "8.8.8.8"), via(&mut t, "8.8.8.8"), via(&mut t, "8.8.4.4")], ["allow", "limited", "allow"]);
    assert_eq!(via(&mut t, "bogus"), "key_missing");
    let a = decide(&p, &mut t, T0 + 10 * S, "/", "10.0.0.1:1", &[("x-forwarded-for", "8.8.8.8")]).key.unwrap();
    assert!(a.parts.is_empty(), "a rule without fleet limits builds no parts");
    // The same key value under another rule is another bucket.
    let b = decide(&p, &mut t, T0, "/api", "10.0.0.1:1", &[("x-api-key", "8.8.8.8")]).key.unwrap();
    assert_ne!(a.fingerprint, b.fingerprint);
    // Deterministic for one seed, different for another.
    let facts_h = request("/", &[("x-forwarded-for", "8.8.8.8")]);
    let f = RequestFacts::new(&facts_h, Some("10.0.0.1:1"));
    let parts = [crate::key::KeyPart::ClientAddress, crate::key::KeyPart::Path, crate::key::KeyPart::Rule];
    let resolver = &p.header().client_address;
    let k = |seed| match crate::key::build_key(&parts, "default", OnMissingKey::Deny, &f, resolver, seed, true) {
        KeyOutcome::Key(k) => k,
        other => panic!("{other:?}"),
    };
    assert_eq!(k(1), k(1));
    assert_ne!(k(1).fingerprint, k(2).fingerprint);
    assert_eq!(k(1).parts[0], ("client_address".to_string(), Some("8.8.8.8".to_string())));
    assert_eq!(k(1).parts[2], ("rule".to_string(), Some("default".to_string())));
    // Parts or not, the same bucket; the decision's key is this key.
    let bare = match crate::key::build_key(&parts[..1], "default", OnMissingKey::Deny, &f, resolver, SEED, false) {
        KeyOutcome::Key(k) => k,
        other => panic!("{other:?}"),
    };
    assert!(bare.parts.is_empty());
    assert_eq!(bare.fingerprint, a.fingerprint);
    // An IPv4-mapped IPv6 address is the same client as its IPv4 form: the same bucket.
    let mapped_h = request("/", &[("x-forwarded-for", "::ffff:8.8.8.8")]);
    let mapped = RequestFacts::new(&mapped_h, Some("10.0.0.1:1"));
    let m = match crate::key::build_key(&parts[..1], "default", OnMissingKey::Deny, &mapped, resolver, SEED, false) {
        KeyOutcome::Key(k) => k,
        other => panic!("{other:?}"),
    };
    assert_eq!(m.fingerprint, bare.fingerprint);
}

#[test]
fn rules_without_limits_and_dry_run() {
    let p = policy(POLICY);
    let mut t = MemoryTable::new(8);
    for _ in 0..100 {
        assert_eq!(verdict(&decide(&p, &mut t, T0, "/free", "192.0.2.1:1", &[])), "allow");
    }
    assert!(t.slots().iter().all(Slot::is_empty), "a rule without limits stores nothing");
    assert_eq!(p.header().mode, Mode::Enforce);
    let dry = policy(&POLICY.replace(r#""policy_version": "t1","#, r#""policy_version": "t1", "mode": "dry_run","#));
    assert_eq!(dry.header().mode, Mode::DryRun, "the glue lets a would-be denial through");
    assert_eq!(verdict(&decide(&dry, &mut t, T0, "/", "192.0.2.1:1", &[])), "allow");
    assert_eq!(verdict(&decide(&dry, &mut t, T0, "/", "192.0.2.1:1", &[])), "limited", "decided as in enforce mode");
}

/// A deterministic stream of pseudo-random u64s.
fn stream(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::key::mix(x)
    }
}

#[test]
fn a_flood_of_random_keys_never_evicts_a_limited_bucket() {
    // 10 per hour: an exhausted bucket stays limited for 6 minutes, longer than the flood.
    // Burst 10: each flood key's bucket is fuller than an exhausted one (an LRU would evict
    // the attackers, written first). Burst 1: each flood key is itself limited, and limited
    // later than the attackers (evicting the "fullest" without the limited guard would pick them).
    for burst in [10, 1] {
        let p = policy(&format!(
            r#"{{"policy_version":"t","failure_mode":"allow","max_keys":1024,"default":{{"limits":[{{"name":"h","rate":10,"per":"1h","burst":{burst}}}],"key":[{{"header":"x-api-key"}}]}}}}"#
        ));
        assert_eq!(p.max_keys(), 1024);
        let mut t = MemoryTable::new(p.max_keys());
        let attackers: Vec<String> = (0..64).map(|i| format!("attacker-{i}")).collect();
        for a in &attackers {
            let got: Vec<_> = (0..11).map(|_| verdict(&decide(&p, &mut t, T0, "/", "192.0.2.1:1", &[("x-api-key", a)]))).collect();
            assert_eq!(got.iter().filter(|v| **v == "allow").count(), burst, "{a}: {got:?}");
        }
        let mut rnd = stream(42);
        let mut now = T0;
        let mut flood_allowed = 0u32;
        for _ in 0..1_000_000 {
            now += 1; // 1 s of flood in all
            let key = format!("{:016x}", rnd());
            flood_allowed += u32::from(verdict(&decide(&p, &mut t, now, "/", "192.0.2.1:1", &[("x-api-key", &key)])) == "allow");
        }
        assert_eq!(t.slots().len(), 1024, "memory is fixed");
        assert_eq!(flood_allowed, 1_000_000, "each flood key is new: tracked, or in a full set let through by failure_mode allow");
        for a in &attackers {
            let o = decide(&p, &mut t, now, "/", "192.0.2.1:1", &[("x-api-key", a)]);
            assert_eq!(verdict(&o), "limited", "burst {burst}: {a} was reset by the flood");
        }
        // Once refilled (6 min per unit), an attacker's bucket admits again.
        assert_eq!(verdict(&decide(&p, &mut t, now + 360 * S, "/", "192.0.2.1:1", &[("x-api-key", &attackers[0])])), "allow");
    }
}

#[test]
fn a_set_of_limited_buckets_is_full_and_failure_mode_decides() {
    let doc = |fm: &str| {
        format!(
            r#"{{"policy_version":"t","failure_mode":"{fm}","max_keys":8,"default":{{"limits":[{{"name":"d","rate":1,"per":"1d"}}],"key":[{{"header":"k"}}]}}}}"#
        )
    };
    for (fm, want) in [("deny", "table_full"), ("allow", "allow")] {
        let p = policy(&doc(fm));
        let mut t = MemoryTable::new(p.max_keys());
        assert_eq!(t.shape(), TableShape::new(8));
        assert_eq!(t.shape().sets(), 1);
        for i in 0..8 {
            assert_eq!(verdict(&decide(&p, &mut t, T0, "/", "192.0.2.1:1", &[("k", &i.to_string())])), "allow");
        }
        // All 8 slots hold exhausted buckets: a new key cannot take one.
        let o = decide(&p, &mut t, T0, "/", "192.0.2.1:1", &[("k", "new")]);
        assert_eq!(verdict(&o), want, "failure_mode {fm}");
        for i in 0..8 {
            assert_eq!(verdict(&decide(&p, &mut t, T0, "/", "192.0.2.1:1", &[("k", &i.to_string())])), "limited");
        }
    }
    assert_eq!(RateLimitReason::TableFull.denial().status, 503);
}

/// The documented accuracy of one set (`max_keys` 8: one set of 8 ways), keys taking turns at
/// 5 per day, 1 ms apart: 8 keys are each held to exactly 5; with a 9th key in the set every
/// newcomer replaces a partly drained bucket and no key is ever limited; a key that exhausts its
/// bucket between the others' turns is held all the same (a limited bucket is never replaced).
#[test]
fn one_set_is_exact_up_to_8_active_keys_and_an_overflowing_set_admits_its_cycling_keys() {
    let p = policy(r#"{"policy_version":"t","max_keys":8,"default":{"limits":[{"name":"d","rate":5,"per":"1d"}],"key":[{"header":"k"}]}}"#);
    let run = |keys: usize, passes: usize| {
        let mut t = MemoryTable::new(p.max_keys());
        let mut now = T0;
        let mut admitted = vec![0; keys];
        for _ in 0..passes {
            for (k, n) in admitted.iter_mut().enumerate() {
                now += 1_000;
                *n += usize::from(verdict(&decide(&p, &mut t, now, "/", "192.0.2.1:1", &[("k", &k.to_string())])) == "allow");
            }
        }
        (admitted, t, now)
    };
    assert_eq!(run(8, 20).0, vec![5; 8]);
    assert_eq!(run(9, 20).0, vec![20; 9], "an overflowing set: every cycling key is admitted every time");
    // Nine keys, one of which drains its bucket at once: it is limited and stays held.
    let (_, mut t, mut now) = run(9, 1);
    for _ in 0..5 {
        decide(&p, &mut t, now, "/", "192.0.2.1:1", &[("k", "0")]);
    }
    for _ in 0..10 {
        for k in 0..9 {
            now += 1_000;
            let v = verdict(&decide(&p, &mut t, now, "/", "192.0.2.1:1", &[("k", &k.to_string())]));
            if k == 0 {
                assert_eq!(v, "limited");
            }
        }
    }
}

#[test]
fn eviction_takes_a_full_bucket_then_the_fullest_never_a_limited_one() {
    use crate::table::{choose, decode_set, encode_set, update_set, Choice, SET_BYTES, WAYS};
    let slot = |fp, until| Slot { fingerprint: fp, state: KeyState { limited_until: until, ..KeyState::default() } };
    // A bucket with state word `tat` (one limit) and `limited_until`.
    let drained = |fp, until, tat| Slot {
        fingerprint: fp,
        state: KeyState { limited_until: until, tags: [1, 0, 0, 0, 0, 0, 0, 0], states: [tat, 0, 0, 0, 0, 0, 0, 0] },
    };
    let now = 1_000;
    assert_eq!(choose(&[slot(1, 0), slot(2, 0), slot(3, 0), slot(4, 0)], 3, now), Choice::Hit(2));
    assert_eq!(choose(&[slot(1, 0), Slot::default(), slot(3, 0), Slot::default()], 9, now), Choice::Take(1));
    // No full bucket: the smallest limited_until that is not after now.
    assert_eq!(
        choose(&[drained(1, 900, 2_000), drained(2, 100, 1_500), drained(3, 5_000, 9_000), drained(4, 1_000, 1_001)], 9, now),
        Choice::Take(1)
    );
    assert_eq!(choose(&[slot(1, 1_001), slot(2, 2_000), slot(3, 5_000), slot(4, u64::MAX)], 9, now), Choice::Full);
    // A fully refilled bucket (every state at or before now) goes first, even when a partly
    // drained one of another limit has an earlier limited_until (a larger burst).
    assert_eq!(choose(&[drained(1, 10, 5_000), drained(2, 1_000, 1_000), drained(3, 20, 3_000)], 9, now), Choice::Take(1));
    assert_eq!(choose(&[drained(1, 10, 5_000), drained(2, 1_001, 1_000)], 9, now), Choice::Take(0), "still limited: not full");
    assert_eq!(choose(&[slot(1, 0)], 9, now), Choice::Take(0), "a short set still works");
    // Encoding round-trips; anything else is an empty slot.
    let s = Slot {
        fingerprint: 5,
        state: KeyState { limited_until: 6, tags: [9, 8, 7, 6, 5, 4, 3, u16::MAX], states: [1, 2, 3, 4, 5, 6, 7, u64::MAX] },
    };
    assert_eq!(Slot::decode(&s.encode()), s);
    assert_eq!(Slot::BYTES, 96);
    assert!(Slot::decode(&s.encode()[..95]).is_empty());
    assert!(Slot::decode(b"").is_empty());
    // A set: 8 slots concatenated, empty ones included; another size is an empty set.
    let mut set = [Slot::default(); WAYS];
    set[3] = s;
    let bytes = encode_set(&set);
    assert_eq!((bytes.len(), SET_BYTES, WAYS), (768, 768, 8));
    assert_eq!(decode_set(&bytes), set);
    assert_eq!(&bytes[3 * 96..4 * 96], &s.encode()[..]);
    for bad in [&bytes[..767], &[bytes.as_slice(), &[0]].concat()[..], b"", &[0xff; 96][..]] {
        assert!(decode_set(bad).iter().all(Slot::is_empty), "{} bytes", bad.len());
    }
    // update_set: a new key takes the first empty way; `None` leaves the set unchanged.
    let mut set = [Slot::default(); WAYS];
    let st = KeyState { limited_until: 7, ..KeyState::default() };
    assert_eq!(update_set(&mut set, 42, now, &mut |_| Some(st)), Ok(true));
    assert_eq!(set[0], Slot { fingerprint: 42, state: st });
    assert_eq!(
        update_set(&mut set, 43, now, &mut |cur| {
            assert_eq!(*cur, KeyState::default());
            None
        }),
        Ok(false)
    );
    assert!(set[1].is_empty());
    // Sets: `fingerprint mod sets`, 1024 slots in 128 sets; at least one set.
    let shape = TableShape::new(1030);
    assert_eq!((shape.slots(), shape.sets()), (1024, 128));
    let mut rnd = stream(1);
    for _ in 0..10_000 {
        let fp = rnd();
        assert!(shape.set_of(fp) < 128 && shape.set_of(fp) as u64 == fp % 128);
    }
    assert_eq!(TableShape::new(0).slots(), 8);
    assert_eq!(TableShape::new(15).slots(), 8);
}

#[test]
fn header_needs_list_exactly_what_decide_reads() {
    let names = |json: &str| policy(json).header_needs().names().to_vec();
    assert_eq!(names(POLICY), [":method", ":path", "x-api-key", "x-cost", "x-user"]);
    assert!(names(r#"{"policy_version":"t","default":{"limits":[{"name":"l","rate":1,"per":"1s"}]}}"#).is_empty(), "peer address only");
    assert_eq!(
        names(
            r#"{"policy_version":"t","client_address":{"xff_num_trusted_hops":1},"default":{"limits":[{"name":"l","rate":1,"per":"1s"}]}}"#
        ),
        ["x-forwarded-for"]
    );
    assert!(
        names(r#"{"policy_version":"t","client_address":{"xff_num_trusted_hops":1},"default":{"key":[{"header":"x-a"}]}}"#).is_empty(),
        "no limits, nothing read"
    );
}

#[test]
fn config_errors_name_field_and_value() {
    let lim = r#""limits":[{"name":"l","rate":10,"per":"1s"}]"#;
    #[rustfmt::skip]
    let cases: Vec<(String, &str)> = vec![
        (r#"{"policy_version":"t","rules":[{"limits":[{"name":"a b","rate":1,"per":"1s"}]}]}"#.into(),
         r#"rules[0].limits[0].name: invalid limit name "a b": use 1 to 64 characters from A-Z a-z 0-9 - _ . : /"#),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1,"per":"1s"},{"name":"a","rate":2,"per":"1m"}]}}"#.into(),
         r#"default.limits[1].name: duplicate limit name "a""#),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":0,"per":"1s"}]}}"#.into(),
         "default.limits[0].rate: must be at least 1, got 0"),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1,"per":"2s"}]}}"#.into(),
         "default.limits[0].per: unknown variant `2s`, expected one of `1s`, `1m`, `1h`, `1d`"),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1}]}}"#.into(),
         r#"default.limits[0]: give the period: "per" (1s, 1m, 1h, 1d) or "per_seconds""#),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1,"per":"1s","per_seconds":1}]}}"#.into(),
         r#"default.limits[0]: give either "per" or "per_seconds", not both"#),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1,"per_seconds":0}]}}"#.into(),
         "default.limits[0].per_seconds: 0 is not between 1 and 31536000"),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1,"per":"1s","burst":0}]}}"#.into(),
         "default.limits[0].burst: 0 is not between 1 and 1000000000"),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":2000000,"per":"1s","burst":1}]}}"#.into(),
         "default.limits[0].rate: 2000000 per 1 s is more than one unit per microsecond"),
        (r#"{"policy_version":"t","default":{"limits":[{"name":"a","rate":1,"per":"1s","brust":1}]}}"#.into(),
         "default.limits[0].brust: unknown field `brust`, expected one of `name`, `rate`, `per_seconds`, `per`, `burst`"),
        (format!(r#"{{"policy_version":"t","default":{{"limits":[{}]}}}}"#, [r#"{"name":"x","rate":1,"per":"1s"}"#; 9].join(",")),
         "default.limits: at most 8 limits per rule, got 9"),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"cost":0}}}}"#),
         "default.cost: must be at least 1, got 0"),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"cost":11}}}}"#),
         r#"default.cost: 11 is more than the burst 10 of limit "l": every request would be denied"#),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"cost":{{"header":"x cost","max":5}}}}}}"#),
         r#"default.cost.header: invalid header name "x cost""#),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"cost":{{"header":"x-cost","max":0}}}}}}"#),
         "default.cost.max: must be at least 1, got 0"),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"cost":{{"header":"x-cost","max":5,"default":6}}}}}}"#),
         "default.cost.default: 6 is more than max 5"),
        (format!(r#"{{"policy_version":"t","rules":[{{{lim},"key":["path",{{"header":"X:Y"}}]}}]}}"#),
         r#"rules[0].key[1].header: invalid header name "X:Y""#),
        (format!(r#"{{"policy_version":"t","rules":[{{{lim},"key":[{{"claim_header":""}}]}}]}}"#),
         r#"rules[0].key[0].claim_header: invalid header name """#),
        (format!(r#"{{"policy_version":"t","rules":[{{{lim},"key":["host"]}}]}}"#),
         "rules[0].key[0]: unknown variant `host`, expected one of `client_address`, `header`, `claim_header`, `path`, `method`, `rule`"),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"on_missing_key":"skip"}}}}"#),
         "default.on_missing_key: unknown variant `skip`, expected one of `deny`, `allow`, `shared`"),
        (format!(r#"{{"policy_version":"t","default":{{{lim},"headers":"legacy"}}}}"#),
         "default.headers: unknown variant `legacy`, expected one of `ietf`, `ietf_and_legacy`, `none`"),
        (r#"{"policy_version":"t","max_keys":7}"#.into(),
         "max_keys: 7 is not between 8 and 16777216"),
        (r#"{"policy_version":"t","max_keys":16777217}"#.into(),
         "max_keys: 16777217 is not between 8 and 16777216"),
        (r#"{"policy_version":"t","filter":"ip_geo"}"#.into(),
         r#"filter: this policy is for filter "ip_geo", not "rate_limit""#),
        (r#"{"policy_version":"t","mode":"enforcing"}"#.into(),
         "mode: unknown variant `enforcing`, expected `enforce` or `dry_run`"),
        (r#"{"policy_version":"t","rules":[{"name":"a"},{"name":"a"}]}"#.into(),
         r#"rules[1].name: duplicate rule name "a""#),
    ];
    for (config, want) in &cases {
        let err = compile::<RateLimitPolicy>(config.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with(want), "config {config}\n  expected error starting: {want}\n  got: {err}");
    }
}

#[test]
fn a_rollout_candidate_keeps_the_table_size() {
    let a = policy(r#"{"policy_version":"t","max_keys":1024}"#);
    assert!(a.check_candidate(&policy(r#"{"policy_version":"u","max_keys":1024}"#)).is_ok());
    let err = a.check_candidate(&policy(r#"{"policy_version":"u"}"#)).unwrap_err();
    assert_eq!(err.path(), "max_keys");
    assert!(err.message().contains("(1024), got 65536"), "{err}");
}

#[test]
fn reasons_are_distinct_snake_case() {
    let names: Vec<_> = RateLimitReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["limited", "cost_over_burst", "cost_invalid", "key_missing", "table_full", "fleet_limited", "fleet_unavailable"]);
    assert_eq!(RateLimitReason::Limited.denial().status, 429);
    assert_eq!(RateLimitReason::CostInvalid.denial().status, 400);
}

#[test]
fn no_panic_on_random_requests_and_documents() {
    let p = policy(POLICY);
    let mut t = MemoryTable::new(16);
    let mut rnd = stream(9);
    let pick = |r: u64, xs: &[&'static str]| xs[(r % xs.len() as u64) as usize];
    for _ in 0..20_000 {
        let path = pick(rnd(), &["/api", "/search", "/open", "/free", "/", "", "/api?x", "\u{0}"]);
        let cost = pick(rnd(), &["1", "0", "8", "9", "18446744073709551615", "18446744073709551616", " 3 ", "+1", "x"]);
        let key = pick(rnd(), &["a", "", "é", "b\u{7f}"]);
        let peer = pick(rnd(), &["192.0.2.1:1", "[2001:db8::1]:1", "junk", ""]);
        let now = match rnd() % 5 {
            0 => 0,
            1 => u64::MAX,
            _ => T0 + rnd() % (100 * S) - 50 * S,
        };
        let _ = decide(&p, &mut t, now, path, peer, &[("x-api-key", key), ("x-user", key), ("x-cost", cost)]);
    }
    // Mutated documents: compile or refuse, never panic.
    let bytes = POLICY.as_bytes();
    for i in 0..bytes.len() {
        for b in [b'0', b'"', b'{', b'-', b'9'] {
            let mut m = bytes.to_vec();
            m[i] = b;
            let _ = compile::<RateLimitPolicy>(&m);
        }
    }
}

#[test]
fn an_empty_key_is_one_bucket_for_the_rule() {
    let p = policy(r#"{"policy_version":"t","default":{"limits":[{"name":"all","rate":2,"per":"1m"}],"key":[]}}"#);
    let mut t = MemoryTable::new(8);
    let got: Vec<_> =
        ["192.0.2.1:1", "198.51.100.1:1", "203.0.113.1:1"].iter().map(|peer| verdict(&decide(&p, &mut t, T0, "/", peer, &[]))).collect();
    assert_eq!(got, ["allow", "allow", "limited"]);
}

#[test]
fn the_schema_carries_the_field_docs() {
    let schema = serde_json::to_string(&schemars::schema_for!(RateLimitDocument)).unwrap();
    for text in ["Units admitted per period", "one bucket for every request of the rule", "ietf_and_legacy", "claim_header", "max_keys"] {
        assert!(schema.contains(text), "{text} missing from the schema");
    }
}

#[test]
fn a_live_update_keeps_the_state_of_every_unchanged_limit() {
    let v1 = policy(
        r#"{"policy_version": "1", "default": {"key": [{"header": "k"}], "headers": "none",
            "limits": [{"name": "a", "rate": 2, "per": "1m"}, {"name": "b", "rate": 3, "per": "1m"}]}}"#,
    );
    let mut t = MemoryTable::new(64);
    let k = [("k", "alice")];
    assert_eq!(verdict(&decide(&v1, &mut t, T0, "/", "192.0.2.1:1", &k)), "allow");
    assert_eq!(verdict(&decide(&v1, &mut t, T0, "/", "192.0.2.1:1", &k)), "allow");
    assert_eq!(verdict(&decide(&v1, &mut t, T0, "/", "192.0.2.1:1", &k)), "limited", "a (2/min) is spent");
    // v2: a limit added in front, b unchanged, a's rate changed. b keeps its state (1 of 3 left),
    // a starts full under its new definition.
    let v2 = policy(
        r#"{"policy_version": "2", "default": {"key": [{"header": "k"}], "headers": "none",
            "limits": [{"name": "new", "rate": 100, "per": "1m"}, {"name": "b", "rate": 3, "per": "1m"},
                       {"name": "a", "rate": 5, "per": "1m"}]}}"#,
    );
    assert_eq!(verdict(&decide(&v2, &mut t, T0, "/", "192.0.2.1:1", &k)), "allow");
    let o = decide(&v2, &mut t, T0, "/", "192.0.2.1:1", &k);
    assert_eq!(verdict(&o), "limited");
    assert_eq!(o.violated.iter().map(|v| v.as_ref()).collect::<Vec<_>>(), ["b"], "b remembered its two units");
    // Back to v1: v2 stored `a` under its new tag, so v1's `a` starts full again; b is still spent.
    let o = decide(&v1, &mut t, T0, "/", "192.0.2.1:1", &k);
    assert_eq!(o.violated.iter().map(|v| v.as_ref()).collect::<Vec<_>>(), ["b"]);
    // A changed key (another header, same value) is another bucket.
    let v3 = policy(
        r#"{"policy_version": "3", "default": {"key": [{"header": "k2"}], "headers": "none",
            "limits": [{"name": "a", "rate": 2, "per": "1m"}, {"name": "b", "rate": 3, "per": "1m"}]}}"#,
    );
    assert_eq!(verdict(&decide(&v3, &mut t, T0, "/", "192.0.2.1:1", &[("k2", "alice")])), "allow");
    // Tags: the definition, never 0.
    let l = |r| crate::gcra::Limit::new(r, 60, r).unwrap();
    assert_ne!(limit_tag("a", &l(2)), limit_tag("a", &l(5)));
    assert_ne!(limit_tag("a", &l(2)), limit_tag("b", &l(2)));
    assert_eq!(limit_tag("a", &l(2)), limit_tag("a", &l(2)));
    assert!((0..10_000u64).all(|r| limit_tag(&r.to_string(), &l(r + 1)) != 0));
}
