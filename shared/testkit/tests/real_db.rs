//! A real database from npm (`@ip-location-db/geo-whois-asn-country-mmdb`, country codes from
//! WHOIS/ASN data) opens with the same `maxminddb` version the filter uses. The file is not in
//! the repository: scripts/setup.sh installs it under the workspace's `node_modules/` (the path
//! scripts/lib.sh and the e2e harness use). Absent, the test says so and passes, unless
//! `GATEWARDEN_REQUIRE_REAL_DB` is set (scripts/test.sh sets it): then absence fails.

// Test helpers outside #[test] fns fail loudly too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;

use maxminddb::Reader;
use serde_json::Value;

/// Where scripts/setup.sh puts the database: `<workspace>/node_modules/...` (this crate is
/// `<workspace>/shared/testkit`).
fn npm_database() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb")
}

/// `GATEWARDEN_REQUIRE_REAL_DB` set to anything but empty or `0`: a missing database is a failure.
fn real_db_required() -> bool {
    std::env::var("GATEWARDEN_REQUIRE_REAL_DB").is_ok_and(|v| !v.is_empty() && v != "0")
}

#[test]
fn npm_geo_whois_asn_country_db_reads_with_maxminddb() {
    let path = npm_database();
    if !path.is_file() {
        assert!(!real_db_required(), "GATEWARDEN_REQUIRE_REAL_DB is set and {} is missing (run scripts/setup.sh)", path.display());
        eprintln!("skipped: {} missing (run scripts/setup.sh)", path.display());
        return;
    }
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
    for addr in ["1.1.1.1", "8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"] {
        let ip: IpAddr = addr.parse().unwrap();
        let result = reader.lookup(ip).unwrap_or_else(|e| panic!("lookup {addr}: {e}"));
        let network = result.network().map(|n| n.to_string()).unwrap_or_default();
        let record = result.decode::<Value>().unwrap_or_else(|e| panic!("decode {addr}: {e}"));
        println!("{addr} -> {record:?} (network {network})");
        if addr != "::ffff:8.8.8.8" {
            assert!(record.is_some(), "{addr} should be in a full country database");
        }
    }
}
