//! The free default database (npm @ip-location-db/geo-whois-asn-country-mmdb, installed by
//! scripts/setup.sh) opens and answers known addresses. Skipped with a message when the file is
//! absent, unless GATEWARDEN_REQUIRE_REAL_DB=1 (scripts/test.sh sets it), where absence fails.

use gatewarden_ip_geo_policy::GeoDb;

const DB: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb");

#[test]
fn free_default_database_opens_and_answers() {
    let bytes = match std::fs::read(DB) {
        Ok(b) => b,
        Err(e) => {
            assert!(std::env::var("GATEWARDEN_REQUIRE_REAL_DB").is_err(), "{DB}: {e}");
            eprintln!("skipped: {DB}: {e} (run scripts/setup.sh)");
            return;
        }
    };
    let db = GeoDb::from_bytes(bytes).unwrap();
    for (ip, cc) in [("1.1.1.1", "AU"), ("8.8.8.8", "US"), ("2001:4860:4860::8888", "US"), ("::ffff:8.8.8.8", "US")] {
        let got = db.country(ip.parse().unwrap()).unwrap().map(|c| c.to_string());
        assert_eq!(got.as_deref(), Some(cc), "{ip}");
    }
    assert_eq!(db.country("10.0.0.1".parse().unwrap()).unwrap(), None, "private addresses have no country");
}
