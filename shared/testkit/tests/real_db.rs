//! A real database from npm (`@ip-location-db/geo-whois-asn-country-mmdb`, country codes from
//! WHOIS/ASN data) opens with the same `maxminddb` version the filter uses. The file is not in
//! the repository; the test says so and passes when it is absent.

// Test helpers outside #[test] fns fail loudly too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;

use maxminddb::Reader;
use serde_json::Value;

const CANDIDATES: &[&str] = &[
    "/work/main/node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb",
    "/tmp/npmprobe/node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb",
];

#[test]
fn npm_geo_whois_asn_country_db_reads_with_maxminddb() {
    let Some(path) = CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()) else {
        println!("skipped: no geo-whois-asn-country.mmdb at any of {CANDIDATES:?}");
        return;
    };
    let reader = Reader::open_readfile(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = &reader.metadata;
    println!(
        "{}: database_type={:?} ip_version={} record_size={} node_count={} build_epoch={} languages={:?} description={:?}",
        path.display(),
        m.database_type,
        m.ip_version,
        m.record_size,
        m.node_count,
        m.build_epoch,
        m.languages,
        m.description
    );
    for addr in [
        "1.1.1.1",
        "8.8.8.8",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
    ] {
        let ip: IpAddr = addr.parse().unwrap();
        let result = reader
            .lookup(ip)
            .unwrap_or_else(|e| panic!("lookup {addr}: {e}"));
        let network = result.network().map(|n| n.to_string()).unwrap_or_default();
        let record = result
            .decode::<Value>()
            .unwrap_or_else(|e| panic!("decode {addr}: {e}"));
        println!("{addr} -> {record:?} (network {network})");
        if addr != "::ffff:8.8.8.8" {
            assert!(
                record.is_some(),
                "{addr} should be in a full country database"
            );
        }
    }
}
