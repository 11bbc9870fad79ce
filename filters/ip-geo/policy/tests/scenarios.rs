//! The shared IP/geo scenario table (tests/fixtures/ip_geo_scenarios.json), run natively.
//! The same table runs through the built .wasm in wasm-host/tests/ip_geo.rs.

use gatewarden_ip_geo_policy::{GeoDb, IpGeoPolicy};
use gatewarden_policy::{compile, RequestFacts};
use gatewarden_testkit::MmdbWriter;

#[test]
fn ip_geo_scenarios_natively() {
    let table: serde_json::Value = serde_json::from_str(include_str!("fixtures/ip_geo_scenarios.json")).unwrap();
    let mut w = MmdbWriter::new(6, "scenarios").unwrap();
    for (net, cc) in table["geo_db"].as_object().unwrap() {
        w.insert_country(net.parse().unwrap(), cc.as_str().unwrap()).unwrap();
    }
    let db = GeoDb::from_bytes(w.build().unwrap()).unwrap();
    let policy: IpGeoPolicy = compile(table["policy"].to_string().as_bytes()).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let mut headers =
            vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), case["path"].as_str().unwrap().to_string())];
        if let Some(xff) = case["xff"].as_str() {
            headers.push(("x-forwarded-for".into(), xff.into()));
        }
        if let Some(extra) = case["headers"].as_object() {
            headers.extend(extra.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())));
        }
        let peer = case["peer"].as_str().unwrap_or("10.0.0.1:5000");
        let out = policy.decide(&RequestFacts::new(&headers, Some(peer)), Some(&db));
        let got = out.decision.reason().unwrap_or("allow");
        assert_eq!(got, case["expect"].as_str().unwrap(), "case {:?}", case["name"]);
        assert_eq!(&*out.decision.rule, case["rule"].as_str().unwrap(), "case {:?}", case["name"]);
    }
}
