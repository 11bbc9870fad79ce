//! No panic on any input: mutated policies and random requests, from a fixed seed (so a failure
//! reproduces). A panic here would be a trapped VM in production.

use gatewarden_ip_geo_policy::IpGeoPolicy;
use gatewarden_policy::{compile, RequestFacts};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[u8] = b"0123456789abcdef.:/[]{}\",-_ *?()|\\^$%\x00\xff\xc3XKP";

#[test]
fn mutated_policies_never_panic() {
    let seed_policy = include_str!("fixtures/ip_geo_scenarios.json");
    let table: serde_json::Value = serde_json::from_str(seed_policy).unwrap();
    let base = table["policy"].to_string().into_bytes();
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut bytes = base.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = ALPHABET[rng.below(ALPHABET.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            }
        }
        if compile::<IpGeoPolicy>(&bytes).is_ok() {
            accepted += 1;
        }
    }
    assert!(accepted > 100, "the mutations should keep some policies valid, got {accepted}");
}

#[test]
fn random_requests_never_panic() {
    let table: serde_json::Value = serde_json::from_str(include_str!("fixtures/ip_geo_scenarios.json")).unwrap();
    let policy: IpGeoPolicy = compile(table["policy"].to_string().as_bytes()).unwrap();
    let mut rng = XorShift(0x5eed_0000_0000_0002);
    let piece = |rng: &mut XorShift| -> String {
        let len = rng.below(40);
        (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len())] as char).collect()
    };
    for _ in 0..20_000 {
        let headers = vec![
            (":path".to_string(), format!("/{}", piece(&mut rng))),
            (":method".to_string(), piece(&mut rng)),
            ("x-forwarded-for".to_string(), piece(&mut rng)),
            ("x-tenant-id".to_string(), piece(&mut rng)),
        ];
        let peer = piece(&mut rng);
        let _ = policy.decide(&RequestFacts::new(&headers, Some(&peer)), None);
    }
}
