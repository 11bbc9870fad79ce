//! Native tests of the IP/geo policy: every rule, table-driven, with a database the test builds.

use super::*;
use gatewarden_policy::document::compile;
use gatewarden_testkit::MmdbWriter;

const POLICY: &str = r#"{
  "policy_version": "t1",
  "geo_database": {"cluster": "geo", "path": "/db"},
  "rules": [
    {"name": "admin", "match": {"path_prefix": "/admin"}, "allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]},
    {"name": "eu-only", "match": {"path_prefix": "/eu"}, "allow_countries": ["de", "FR"], "allow": ["192.0.2.0/24"]},
    {"name": "eu-strict", "match": {"path_prefix": "/strict"}, "allow_countries": ["DE"], "allow": ["192.0.2.0/24"], "unknown_country": "deny"},
    {"name": "lenient", "match": {"path_prefix": "/lenient"}, "allow_countries": ["DE"], "unknown_country": "allow"},
    {"name": "tenant-acme", "match": {"headers": [{"name": "x-tenant-id", "exact": "acme"}]}, "allow": ["2001:db8:ace::/48"]},
    {"name": "embargo", "match": {"path_prefix": "/"}, "deny_countries": ["KP"], "deny": ["198.51.100.66"]}
  ],
  "default": {}
}"#;

/// 203.0.113.0/24 KP, 198.51.100.0/24 DE, 100.64.0.0/10 FR, 2001:db8:1::/48 KP.
/// 8.8.8.8, 192.0.2.0/24 and 10.0.0.0/8 are not in it (unknown country).
fn test_db() -> GeoDb {
    let mut w = MmdbWriter::new(6, "Gatewarden-Test-Country").unwrap();
    for (net, cc) in [("203.0.113.0/24", "KP"), ("198.51.100.0/24", "DE"), ("100.64.0.0/10", "FR"), ("2001:db8:1::/48", "KP")] {
        w.insert_country(net.parse().unwrap(), cc).unwrap();
    }
    GeoDb::from_bytes(w.build().unwrap()).unwrap()
}

fn policy(json: &str) -> IpGeoPolicy {
    compile::<IpGeoPolicy>(json.as_bytes()).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

fn decide(p: &IpGeoPolicy, db: Option<&GeoDb>, path: &str, peer: Option<&str>, extra: &[(&str, &str)]) -> (String, String) {
    let mut headers = vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), path.to_string())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let out = p.decide(&RequestFacts::new(&headers, peer), db);
    (out.decision.reason().unwrap_or("allow").to_string(), out.decision.rule.to_string())
}

#[test]
fn decision_table() {
    let p = policy(POLICY);
    let db = test_db();
    #[rustfmt::skip]
    let cases: &[(&str, &str, &[(&str, &str)], &str, &str)] = &[
        // path, peer, extra headers, expected outcome, expected rule
        ("/admin/x", "10.1.2.3:1000", &[], "allow", "admin"),
        ("/admin/x", "10.66.1.1:1000", &[], "ip_denied", "admin"),          // deny wins over allow
        ("/admin/x", "8.8.8.8:1000", &[], "ip_not_allowed", "admin"),
        ("/admin/x", "[::ffff:10.1.2.3]:1", &[], "allow", "admin"),         // mapped v6 is v4
        ("/eu/a", "198.51.100.1:1", &[], "allow", "eu-only"),               // DE
        ("/eu/a", "100.64.9.9:1", &[], "allow", "eu-only"),                 // FR
        ("/eu/a", "203.0.113.5:1", &[], "country_not_allowed", "eu-only"),  // KP
        ("/eu/a", "8.8.8.8:1", &[], "country_unknown", "eu-only"),          // not in DB, not in allow
        ("/eu/a", "192.0.2.9:1", &[], "allow", "eu-only"),                  // unknown country but allowed by network
        ("/strict", "192.0.2.9:1", &[], "country_unknown", "eu-strict"),    // explicit deny of unknown wins
        ("/strict", "198.51.100.1:1", &[], "allow", "eu-strict"),
        ("/lenient", "8.8.8.8:1", &[], "allow", "lenient"),                 // unknown allowed explicitly
        ("/lenient", "203.0.113.1:1", &[], "country_not_allowed", "lenient"),
        ("/", "203.0.113.5:1", &[], "country_denied", "embargo"),
        ("/", "[2001:db8:1::5]:443", &[], "country_denied", "embargo"),
        ("/", "[::ffff:203.0.113.5]:1", &[], "country_denied", "embargo"),
        ("/", "198.51.100.66:1", &[], "ip_denied", "embargo"),
        ("/", "198.51.100.67:1", &[], "allow", "embargo"),
        ("/", "8.8.8.8:1", &[], "allow", "embargo"),                        // unknown, no allow list
        ("/anything", "8.8.8.8:1", &[("x-tenant-id", "acme")], "ip_not_allowed", "tenant-acme"),
        ("/anything", "[2001:db8:ace::1]:1", &[("x-tenant-id", "acme")], "allow", "tenant-acme"),
        ("/admin", "garbage", &[], "client_address_invalid", "admin"),
    ];
    for (path, peer, extra, want, rule) in cases {
        let got = decide(&p, Some(&db), path, Some(peer), extra);
        assert_eq!(got, (want.to_string(), rule.to_string()), "{path} from {peer} {extra:?}");
    }
    assert_eq!(decide(&p, Some(&db), "/", None, &[]).0, "client_address_invalid", "no peer at all");
}

#[test]
fn no_rule_matches_means_default() {
    let p = policy(
        r#"{"policy_version":"t","rules":[{"match":{"path_prefix":"/x"},"deny":["0.0.0.0/0"]}],"default":{"allow":["10.0.0.0/8"]}}"#,
    );
    assert_eq!(decide(&p, None, "/x", Some("10.0.0.1:1"), &[]), ("ip_denied".into(), "rules[0]".into()));
    assert_eq!(decide(&p, None, "/y", Some("10.0.0.1:1"), &[]), ("allow".into(), "default".into()));
    assert_eq!(decide(&p, None, "/y", Some("11.0.0.1:1"), &[]), ("ip_not_allowed".into(), "default".into()));
}

#[test]
fn geo_unavailable_follows_failure_mode() {
    let closed = policy(POLICY);
    assert_eq!(decide(&closed, None, "/eu", Some("198.51.100.1:1"), &[]).0, "geo_unavailable");
    assert_eq!(decide(&closed, None, "/admin", Some("10.0.0.1:1"), &[]).0, "allow", "rules without countries need no DB");

    let open = policy(&POLICY.replace(r#""policy_version": "t1","#, r#""policy_version": "t1", "failure_mode": "allow","#));
    assert_eq!(decide(&open, None, "/eu", Some("203.0.113.5:1"), &[]).0, "allow", "country checks skipped");
    assert_eq!(decide(&open, None, "/", Some("198.51.100.66:1"), &[]).0, "ip_denied", "network checks still apply");
}

#[test]
fn xff_with_trusted_hops_decides_on_the_client_not_the_proxy() {
    let p =
        policy(&POLICY.replace(r#""policy_version": "t1","#, r#""policy_version": "t1", "client_address": {"xff_num_trusted_hops": 1},"#));
    let db = test_db();
    // The proxy (10.0.0.1) is in the admin allow list; the client behind it is not.
    assert_eq!(decide(&p, Some(&db), "/admin", Some("10.0.0.1:1"), &[("x-forwarded-for", "8.8.8.8")]).0, "ip_not_allowed");
    assert_eq!(decide(&p, Some(&db), "/admin", Some("10.0.0.1:1"), &[("x-forwarded-for", "8.8.8.8, 10.9.9.9")]).0, "allow");
    assert_eq!(decide(&p, Some(&db), "/admin", Some("10.0.0.1:1"), &[("x-forwarded-for", "10.9.9.9, bogus")]).0, "client_address_invalid");
    assert_eq!(decide(&p, Some(&db), "/", Some("10.0.0.1:1"), &[("x-forwarded-for", "203.0.113.9")]).0, "country_denied");
}

#[test]
fn geoip2_layout_is_read_too() {
    let mut w = MmdbWriter::new(6, "GeoLite2-Country").unwrap();
    w.insert_geoip2_country("203.0.113.0/24".parse().unwrap(), "KP").unwrap();
    let db = GeoDb::from_bytes(w.build().unwrap()).unwrap();
    assert_eq!(db.country("203.0.113.1".parse().unwrap()).unwrap().map(|c| c.to_string()), Some("KP".into()));
    assert_eq!(decide(&policy(POLICY), Some(&db), "/", Some("203.0.113.1:1"), &[]).0, "country_denied");
}

#[test]
fn country_code_preference_and_fallbacks() {
    use gatewarden_testkit::Record;
    let iso = |cc: &str| Record::map([("iso_code", Record::from(cc))]);
    let names = Record::map([("names", Record::map([("en", Record::from("Somewhere"))]))]);
    let mut w = MmdbWriter::new(6, "t").unwrap();
    let records = [
        // country.iso_code wins over everything.
        ("198.51.100.0/26", Record::map([("country", iso("DE")), ("country_code", Record::from("FR")), ("registered_country", iso("IT"))])),
        // A country without iso_code: country_code next.
        (
            "198.51.100.64/26",
            Record::map([("country", names.clone()), ("country_code", Record::from("FR")), ("registered_country", iso("IT"))]),
        ),
        // Only the registered country (e.g. anycast): its iso_code.
        ("198.51.100.128/26", Record::map([("registered_country", iso("IT")), ("continent", names.clone())])),
        // No code at all: unknown.
        ("198.51.100.192/26", Record::map([("continent", names)])),
    ];
    for (net, record) in records {
        w.insert(net.parse().unwrap(), record).unwrap();
    }
    let db = GeoDb::from_bytes(w.build().unwrap()).unwrap();
    for (ip, want) in [
        ("198.51.100.1", Some("DE")),
        ("198.51.100.65", Some("FR")),
        ("198.51.100.129", Some("IT")),
        ("198.51.100.193", None),
        ("192.0.2.1", None),
    ] {
        assert_eq!(db.country(ip.parse().unwrap()).unwrap().map(|c| c.to_string()).as_deref(), want, "{ip}");
    }
    // A record whose country is not a map is a lookup error, not a country.
    let mut w = MmdbWriter::new(6, "t").unwrap();
    w.insert("192.0.2.0/24".parse().unwrap(), Record::map([("country", Record::from("DE"))])).unwrap();
    w.insert("203.0.113.0/24".parse().unwrap(), Record::country_code("KP")).unwrap();
    let db = GeoDb::from_bytes(w.build().unwrap()).unwrap();
    assert!(db.country("192.0.2.1".parse().unwrap()).is_err());
    assert_eq!(db.country("203.0.113.1".parse().unwrap()).unwrap().map(|c| c.to_string()).as_deref(), Some("KP"));
}

#[test]
fn corrupt_or_foreign_database_is_refused() {
    assert!(GeoDb::from_bytes(b"not a database".to_vec()).is_err());
    let mut w = MmdbWriter::new(6, "t").unwrap();
    w.insert_country("203.0.113.0/24".parse().unwrap(), "KP").unwrap();
    let good = w.build().unwrap();
    assert!(GeoDb::from_bytes(gatewarden_testkit::truncate_metadata(&good).unwrap()).is_err());
    assert!(GeoDb::from_bytes(good[..good.len() / 2].to_vec()).is_err());
}

#[test]
fn config_errors_name_field_and_value() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        (r#"{"policy_version":"t","rules":[{"deny":["10.0.0.0/8","10.0.0.300"]}]}"#,
         r#"rules[0].deny[1]: invalid CIDR "10.0.0.300""#),
        (r#"{"policy_version":"t","rules":[{"alow":["10.0.0.0/8"]}]}"#,
         "rules[0].alow: unknown field `alow`, expected one of `name`, `match`, `allow`"),
        (r#"{"policy_version":"t","mode":"enforcing"}"#,
         "mode: unknown variant `enforcing`, expected `enforce` or `dry_run`"),
        (r#"{"policy_version":"t","geo_database":{"cluster":"g","path":"/db"},"rules":[{},{"deny_countries":["DE","USA"]}]}"#,
         r#"rules[1].deny_countries[1]: invalid ISO 3166-1 alpha-2 country code "USA""#),
        (r#"{"policy_version":"t","rules":[{"allow_countries":["DE"]}]}"#,
         "rules[0].allow_countries: country rules need a geo_database to be configured"),
        (r#"{"policy_version":"t","default":{"deny_countries":["DE"]}}"#,
         "default.deny_countries: country rules need a geo_database to be configured"),
        (r#"{"policy_version":"t","rules":[{"match":{"path_regex":"("}}]}"#,
         r#"rules[0].match.path_regex: invalid regex "(""#),
        (r#"{"policy_version":"t","rules":[{"name":"a"},{"name":"a"}]}"#,
         r#"rules[1].name: duplicate rule name "a""#),
        (r#"{"policy_version":"t","default":{"name":"d"}}"#,
         "default: the default takes no \"name\" and no \"match\""),
        (r#"{"policy_version":"t","geo_database":{"cluster":"g","path":"db"}}"#,
         r#"geo_database.path: path must start with "/" and hold no spaces or control characters, got "db""#),
        (r#"{"policy_version":"t","geo_database":{"cluster":"g","path":"/db","refresh_seconds":1}}"#,
         "geo_database.refresh_seconds: 1 is less than the minimum 10"),
        (r#"{"policy_version":"t","client_address":{"xff_num_trusted_hops":-1}}"#,
         "client_address.xff_num_trusted_hops: invalid value: integer `-1`, expected u32"),
        (r#"{"policy_version":"t","filter":"jwt"}"#,
         r#"filter: this policy is for filter "jwt", not "ip_geo""#),
        (r#"{"policy_version":"t","unknown":1}"#,
         "unknown: unknown field `unknown`"),
        (r#"{"mode":"enforce"}"#,
         "missing field `policy_version`"),
        (r#"{"policy_version":"t"} trailing"#,
         "trailing characters"),
        ("", "empty configuration: a policy document is required"),
        ("{", "EOF while parsing an object"),
    ];
    for (config, want) in cases {
        let err = compile::<IpGeoPolicy>(config.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with(want), "config {config}\n  expected error starting: {want}\n  got: {err}");
    }
}

#[test]
fn lookup_cost_does_not_depend_on_list_size() {
    // Not a timing test: the table merges into ranges searched by bisection, so a lookup in
    // 100,000 networks touches at most ceil(log2(100,000)) = 17 ranges. Here we check the result.
    let entries: Vec<String> = (0u32..100_000).map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x2000_0000 + i * 2))).collect();
    let json = serde_json::json!({"policy_version": "big", "default": {"deny": entries}}).to_string();
    let p = policy(&json);
    assert_eq!(decide(&p, None, "/", Some("32.0.0.2:1"), &[]).0, "ip_denied");
    assert_eq!(decide(&p, None, "/", Some("32.0.0.3:1"), &[]).0, "allow");
    assert_eq!(decide(&p, None, "/", Some("32.3.13.62:1"), &[]).0, "ip_denied", "last entry");
}

#[test]
fn header_needs_list_exactly_what_decide_reads() {
    let names = |json: &str| policy(json).header_needs().names().to_vec();
    assert!(names(r#"{"policy_version":"t","default":{"deny":["10.0.0.0/8"]}}"#).is_empty(), "peer-only policy reads no header");
    assert_eq!(names(r#"{"policy_version":"t","client_address":{"xff_num_trusted_hops":1}}"#), ["x-forwarded-for"]);
    assert_eq!(names(POLICY), [":path", "x-tenant-id"], "path rules and the tenant header");
    assert_eq!(
        names(r#"{"policy_version":"t","rules":[{"match":{"methods":["GET"],"hosts":["a.example"],"headers":[{"name":"X-A"}]}}]}"#),
        [":authority", ":method", "x-a"]
    );
}

#[test]
fn country_set_membership() {
    let codes: Vec<String> = ["de", "FR", "aa", "ZZ", "zz", "Fr"].iter().map(|s| s.to_string()).collect();
    let set = compile_countries(&codes, &FieldPath::root().field("allow_countries")).unwrap();
    assert_eq!(set.len, 4, "duplicates in any case count once");
    for (code, want) in [("DE", true), ("FR", true), ("AA", true), ("ZZ", true), ("ZY", false), ("ED", false), ("US", false)] {
        assert_eq!(set.contains(CountryCode::parse(code).unwrap()), want, "{code}");
    }
    assert!(!set.is_empty());
    assert!(compile_countries(&[], &FieldPath::root()).unwrap().is_empty());
    let err = compile_countries(&["de".into(), "d1".into()], &FieldPath::root().field("deny_countries")).unwrap_err();
    assert!(err.to_string().starts_with("deny_countries[1]: invalid ISO 3166-1 alpha-2 country code \"d1\""), "{err}");
}

#[test]
fn decision_header_is_on_unless_turned_off() {
    assert!(policy(r#"{"policy_version": "t1"}"#).header().decision_header);
    assert!(policy(r#"{"policy_version": "t1", "decision_header": true}"#).header().decision_header);
    assert!(!policy(r#"{"policy_version": "t1", "decision_header": false}"#).header().decision_header);
    let err = compile::<IpGeoPolicy>(br#"{"policy_version": "t1", "decision_header": "off"}"#).unwrap_err();
    assert_eq!(err.path(), "decision_header");
    assert!(err.to_string().contains("\"off\""), "{err}");
}
