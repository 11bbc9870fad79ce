//! Databases written by `MmdbWriter` read back through the `maxminddb` crate (the reader the
//! ip-geo filter uses), including its strict `verify()`.

// Test helpers outside #[test] fns fail loudly too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use gatewarden_testkit::{truncate_metadata, MmdbWriter, Record, RecordSize};
use maxminddb::Reader;
use serde::Deserialize;
use serde_json::{json, Value};

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap_or_else(|e| panic!("test network {s:?}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("test address {s:?}: {e}"))
}

/// Builds, opens and verifies a database.
fn open(writer: &MmdbWriter) -> Reader<Vec<u8>> {
    let bytes = writer.build().expect("build");
    let reader = Reader::from_source(bytes).expect("maxminddb opens the file");
    reader.verify().expect("maxminddb verify() accepts the file");
    reader
}

fn lookup(reader: &Reader<Vec<u8>>, addr: &str) -> Option<Value> {
    reader
        .lookup(ip(addr))
        .unwrap_or_else(|e| panic!("lookup {addr}: {e}"))
        .decode::<Value>()
        .unwrap_or_else(|e| panic!("decode {addr}: {e}"))
}

fn country_at(reader: &Reader<Vec<u8>>, addr: &str) -> Option<String> {
    lookup(reader, addr).map(|v| match v.get("country_code").and_then(Value::as_str) {
        Some(cc) => cc.to_owned(),
        None => panic!("{addr}: record without country_code: {v}"),
    })
}

fn assert_countries(reader: &Reader<Vec<u8>>, expected: &[(&str, Option<&str>)]) {
    for (addr, want) in expected {
        assert_eq!(country_at(reader, addr).as_deref(), *want, "lookup of {addr}");
    }
}

#[test]
fn ipv4_database_resolves_inserted_networks() {
    let mut writer = MmdbWriter::new(4, "Test-Country").unwrap();
    writer.insert_country(net("203.0.113.0/24"), "KP").unwrap();
    writer.insert_country(net("198.51.100.0/24"), "US").unwrap();
    writer.insert_country(net("192.0.2.7/32"), "AU").unwrap();
    let reader = open(&writer);
    assert_countries(
        &reader,
        &[
            ("203.0.113.0", Some("KP")),
            ("203.0.113.255", Some("KP")),
            ("198.51.100.42", Some("US")),
            ("192.0.2.7", Some("AU")),
            ("192.0.2.6", None),
            ("203.0.114.0", None),
            ("8.8.8.8", None),
        ],
    );
    assert_eq!(reader.metadata.ip_version, 4);
}

#[test]
fn ipv6_database_holds_ipv4_and_ipv6_networks() {
    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
    writer.insert_country(net("203.0.113.0/24"), "KP").unwrap();
    writer.insert_country(net("2001:db8:1::/48"), "IR").unwrap();
    writer.insert_country(net("2001:db8:2::1/128"), "NZ").unwrap();
    let reader = open(&writer);
    assert_countries(
        &reader,
        &[
            ("203.0.113.9", Some("KP")),
            // The same IPv4 address via the ::/96 subtree and the ::ffff:0:0/96 alias.
            ("::203.0.113.9", Some("KP")),
            ("::ffff:203.0.113.9", Some("KP")),
            ("2001:db8:1:ffff::1", Some("IR")),
            ("2001:db8:2::1", Some("NZ")),
            ("2001:db8:2::2", None),
            ("2001:db8:3::", None),
            ("203.0.112.255", None),
            ("::ffff:203.0.112.255", None),
        ],
    );
    let found = reader.lookup(ip("203.0.113.9")).unwrap();
    assert_eq!(found.network().unwrap().to_string(), "203.0.113.0/24");
}

#[test]
fn ipv4_lookup_in_ipv6_database_reports_the_ipv4_prefix() {
    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
    writer.insert_country(net("10.0.0.0/8"), "AU").unwrap();
    let reader = open(&writer);
    let found = reader.lookup(ip("10.20.30.40")).unwrap();
    assert!(found.has_data());
    assert_eq!(found.network().unwrap().to_string(), "10.0.0.0/8");
}

#[test]
fn later_more_specific_networks_override_parts_of_earlier_ones() {
    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
    writer.insert_country(net("10.0.0.0/8"), "AA").unwrap();
    writer.insert_country(net("10.1.0.0/16"), "BB").unwrap();
    writer.insert_country(net("10.1.2.0/24"), "CC").unwrap();
    writer.insert_country(net("10.1.2.128/32"), "DD").unwrap();
    writer.insert_country(net("2001:db8::/32"), "EE").unwrap();
    writer.insert_country(net("2001:db8:ffff::/48"), "FF").unwrap();
    let reader = open(&writer);
    assert_countries(
        &reader,
        &[
            ("10.0.0.1", Some("AA")),
            ("10.255.255.255", Some("AA")),
            ("10.1.0.1", Some("BB")),
            ("10.1.3.0", Some("BB")),
            ("10.1.2.3", Some("CC")),
            ("10.1.2.127", Some("CC")),
            ("10.1.2.128", Some("DD")),
            ("10.1.2.129", Some("CC")),
            ("2001:db8::1", Some("EE")),
            ("2001:db8:ffff::1", Some("FF")),
            ("2001:db8:fffe::1", Some("EE")),
            ("11.0.0.0", None),
        ],
    );
}

#[test]
fn later_wider_network_replaces_everything_inside_it() {
    let mut writer = MmdbWriter::new(4, "Test-Country").unwrap();
    writer.insert_country(net("10.1.2.0/24"), "CC").unwrap();
    writer.insert_country(net("10.1.0.0/16"), "BB").unwrap();
    let reader = open(&writer);
    assert_countries(&reader, &[("10.1.2.3", Some("BB")), ("10.1.9.9", Some("BB"))]);
}

#[test]
fn whole_address_space_networks_cover_everything() {
    let mut v4 = MmdbWriter::new(4, "Test-Country").unwrap();
    v4.insert_country(net("0.0.0.0/0"), "ZZ").unwrap();
    v4.insert_country(net("1.1.1.1/32"), "AU").unwrap();
    let reader = open(&v4);
    assert_countries(&reader, &[("1.1.1.1", Some("AU")), ("255.255.255.255", Some("ZZ"))]);

    let mut v6 = MmdbWriter::new(6, "Test-Country").unwrap();
    v6.insert_country(net("::/0"), "ZZ").unwrap();
    v6.insert_country(net("0.0.0.0/0"), "YY").unwrap();
    let reader = open(&v6);
    assert_countries(&reader, &[("2001:db8::1", Some("ZZ")), ("9.9.9.9", Some("YY")), ("::ffff:9.9.9.9", Some("YY"))]);
}

#[test]
fn alias_can_be_turned_off() {
    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap().with_ipv4_mapped_alias(false);
    writer.insert_country(net("203.0.113.0/24"), "KP").unwrap();
    let reader = open(&writer);
    assert_countries(&reader, &[("203.0.113.1", Some("KP")), ("::ffff:203.0.113.1", None)]);
}

#[test]
fn ipv4_mapped_networks_are_stored_as_ipv4() {
    let mut writer = MmdbWriter::new(4, "Test-Country").unwrap();
    writer.insert_country(net("::ffff:192.0.2.0/120"), "AU").unwrap();
    let reader = open(&writer);
    assert_countries(&reader, &[("192.0.2.55", Some("AU"))]);

    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
    writer.insert_country(net("::ffff:192.0.2.0/120"), "AU").unwrap();
    let reader = open(&writer);
    assert_countries(&reader, &[("192.0.2.55", Some("AU")), ("::ffff:192.0.2.55", Some("AU"))]);
}

#[test]
fn ipv6_network_in_ipv4_database_is_rejected() {
    let mut writer = MmdbWriter::new(4, "Test-Country").unwrap();
    let err = writer.insert_country(net("2001:db8::/32"), "AU").unwrap_err();
    assert!(err.is_invalid_input());
    assert_eq!(err.to_string(), "network \"2001:db8::/32\": an IPv6 network cannot be stored in an IPv4 database");
}

#[test]
fn unsupported_ip_version_is_rejected() {
    let err = MmdbWriter::new(5, "Test-Country").unwrap_err();
    assert_eq!(err.to_string(), "ip_version: unsupported value 5, expected 4 or 6");
}

#[test]
fn empty_database_is_valid_and_finds_nothing() {
    let reader = open(&MmdbWriter::new(6, "Test-Country").unwrap());
    assert!(!reader.lookup(ip("1.2.3.4")).unwrap().has_data());
    assert_eq!(lookup(&reader, "2001:db8::1"), None);
}

#[test]
fn every_record_size_round_trips() {
    for size in [RecordSize::Bits24, RecordSize::Bits28, RecordSize::Bits32] {
        let mut writer = MmdbWriter::new(6, "Test-Country").unwrap().with_record_size(size);
        writer.insert_country(net("203.0.113.0/24"), "KP").unwrap();
        writer.insert_country(net("2001:db8:1::/48"), "IR").unwrap();
        let reader = open(&writer);
        assert_eq!(reader.metadata.record_size, size.bits());
        assert_eq!(country_at(&reader, "203.0.113.1").as_deref(), Some("KP"), "{size:?}");
        assert_eq!(country_at(&reader, "2001:db8:1::1").as_deref(), Some("IR"), "{size:?}");
        assert_eq!(country_at(&reader, "2001:db8:2::1"), None, "{size:?}");
    }
}

#[test]
fn geoip2_layout_decodes_as_maxminddb_country() {
    let mut writer = MmdbWriter::new(6, "Test-GeoIP2-Country").unwrap();
    writer.insert_geoip2_country(net("1.1.1.0/24"), "AU").unwrap();
    let reader = open(&writer);
    let country = reader.lookup(ip("1.1.1.1")).unwrap().decode::<maxminddb::geoip2::Country>().unwrap().expect("1.1.1.1 has a record");
    assert_eq!(country.country.iso_code, Some("AU"));
    assert_eq!(country.registered_country.iso_code, Some("AU"));
    assert_eq!(lookup(&reader, "1.1.1.1"), Some(json!({"country": {"iso_code": "AU"}, "registered_country": {"iso_code": "AU"}})));
}

#[test]
fn country_code_layout_decodes_into_a_struct() {
    #[derive(Deserialize, Debug, PartialEq)]
    struct CountryCode<'a> {
        country_code: &'a str,
    }
    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
    writer.insert_country(net("2001:db8::/32"), "IR").unwrap();
    let reader = open(&writer);
    let record = reader.lookup(ip("2001:db8::5")).unwrap().decode::<CountryCode>().unwrap();
    assert_eq!(record, Some(CountryCode { country_code: "IR" }));
}

#[test]
fn json_records_round_trip_with_every_type() {
    let value = json!({
        "country": {"iso_code": "AU", "names": {"en": "Australia", "de": "Australien"}},
        "flags": [true, false],
        "asn": 13335,
        "big": 4_294_967_296u64,
        "offset": -5,
        "ratio": 0.25,
        "long_text": "x".repeat(70_000),
        "empty": {},
    });
    let mut writer = MmdbWriter::new(6, "Test-Json").unwrap();
    writer.insert_json(net("192.0.2.0/24"), &value).unwrap();
    writer.insert(net("192.0.2.1/32"), Record::map([("u16", Record::Uint16(7))])).unwrap();
    let reader = open(&writer);
    assert_eq!(lookup(&reader, "192.0.2.2"), Some(value));
    assert_eq!(lookup(&reader, "192.0.2.1"), Some(json!({"u16": 7})));
}

#[test]
fn identical_records_are_stored_once() {
    let mut writer = MmdbWriter::new(4, "Test-Country").unwrap();
    for i in 0..=255u8 {
        writer.insert_country(net(&format!("10.{i}.0.0/16")), "AU").unwrap();
    }
    writer.insert_country(net("11.0.0.0/8"), "NZ").unwrap();
    let reader = open(&writer);
    let offsets: std::collections::BTreeSet<usize> =
        reader.networks(Default::default()).unwrap().map(|r| r.unwrap().offset().expect("networks() yields only data")).collect();
    assert_eq!(offsets.len(), 2, "one data offset per distinct record, saw {offsets:?}");
}

#[test]
fn metadata_has_every_required_key() {
    let writer = MmdbWriter::new(6, "Gatewarden-Test")
        .unwrap()
        .with_build_epoch(1_700_000_000)
        .with_languages(["en", "de"])
        .with_description("de", "Testdatenbank");
    let reader = open(&writer);
    let m = &reader.metadata;
    assert_eq!((m.binary_format_major_version, m.binary_format_minor_version), (2, 0));
    assert_eq!(m.build_epoch, 1_700_000_000);
    assert_eq!(m.database_type, "Gatewarden-Test");
    assert_eq!(m.description.get("en").map(String::as_str), Some("Gatewarden test database"));
    assert_eq!(m.description.get("de").map(String::as_str), Some("Testdatenbank"));
    assert_eq!(m.ip_version, 6);
    assert_eq!(m.languages, vec!["en".to_owned(), "de".to_owned()]);
    assert_eq!(m.record_size, 28);
    assert!(m.node_count > 0);
}

#[test]
fn output_is_deterministic() {
    let make = || {
        let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
        writer.insert_country(net("203.0.113.0/24"), "KP").unwrap();
        writer.insert_geoip2_country(net("2001:db8:1::/48"), "IR").unwrap();
        writer.build().unwrap()
    };
    assert_eq!(make(), make());
}

#[test]
fn truncated_metadata_is_rejected_by_the_reader() {
    let mut writer = MmdbWriter::new(6, "Test-Country").unwrap();
    writer.insert_country(net("203.0.113.0/24"), "KP").unwrap();
    let broken = truncate_metadata(&writer.build().unwrap()).unwrap();
    let Err(err) = Reader::from_source(broken) else {
        panic!("a file with truncated metadata opened");
    };
    println!("maxminddb error for truncated metadata: {err}");
}

#[test]
fn truncate_metadata_needs_a_database() {
    let err = truncate_metadata(b"not a database").unwrap_err();
    assert!(err.is_not_a_database());
    assert_eq!(err.to_string(), "no MaxMind DB metadata marker found in input");
}

/// xorshift64*: a fixed-seed generator so the large test is reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_network(rng: &mut Rng) -> ipnet::IpNet {
    if rng.below(2) == 0 {
        let len = 8 + rng.below(25) as u8;
        let addr = std::net::Ipv4Addr::from(rng.next() as u32);
        ipnet::IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc())
    } else {
        // Keep IPv6 networks out of ::/8 so they never land in the IPv4 ranges.
        let len = 16 + rng.below(49) as u8;
        let bits = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let addr = std::net::Ipv6Addr::from(bits | (1u128 << 127));
        ipnet::IpNet::V6(ipnet::Ipv6Net::new(addr, len).unwrap().trunc())
    }
}

fn random_address_in(rng: &mut Rng, net: ipnet::IpNet) -> IpAddr {
    match net {
        ipnet::IpNet::V4(n) => {
            let host = (rng.next() as u32) & !u32::from(n.netmask());
            IpAddr::V4((u32::from(n.network()) | host).into())
        }
        ipnet::IpNet::V6(n) => {
            let random = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let host = random & !u128::from(n.netmask());
            IpAddr::V6((u128::from(n.network()) | host).into())
        }
    }
}

#[test]
fn fifty_thousand_random_networks_round_trip() {
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let networks: Vec<ipnet::IpNet> = (0..50_000).map(|_| random_network(&mut rng)).collect();
    let mut writer = MmdbWriter::new(6, "Test-Large").unwrap();
    for (i, n) in networks.iter().enumerate() {
        writer.insert(*n, Record::map([("id", Record::Uint32(i as u32))])).unwrap();
    }
    let reader = open(&writer);
    println!("50,000 networks: {} nodes", reader.metadata.node_count);

    // The expected record for an address is the last inserted network that contains it.
    for _ in 0..1_000 {
        let picked = networks[rng.below(networks.len() as u64) as usize];
        let addr = random_address_in(&mut rng, picked);
        let expected = networks.iter().rposition(|n| n.contains(&addr)).expect("picked contains it");
        let got = lookup(&reader, &addr.to_string());
        assert_eq!(got, Some(json!({"id": expected})), "lookup of {addr} (picked from {picked})");
    }
    for addr in ["0.0.0.0", "255.255.255.255", "2001:db8::1"] {
        let expected = networks.iter().rposition(|n| n.contains(&ip(addr)));
        assert_eq!(lookup(&reader, addr), expected.map(|id| json!({"id": id})), "lookup of {addr}");
    }
    // ::/96 is the IPv4 subtree, so ::1 is 0.0.0.1 and ::ffff:1.2.3.4 is 1.2.3.4.
    assert_eq!(lookup(&reader, "::1"), lookup(&reader, "0.0.0.1"), "::1 resolves like 0.0.0.1");
    assert_eq!(lookup(&reader, "::ffff:1.2.3.4"), lookup(&reader, "1.2.3.4"), "mapped 1.2.3.4");
}
