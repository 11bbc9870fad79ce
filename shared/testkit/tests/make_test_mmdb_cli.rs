//! The `make-test-mmdb` binary writes files that `maxminddb` opens (or, with `--corrupt`,
//! refuses to open), and reports bad arguments with exit status 2.

// Test helpers outside #[test] fns fail loudly too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use maxminddb::Reader;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_make-test-mmdb");

/// A file in its own directory under the system temp dir (one per test, so parallel tests never
/// remove each other's directory); both are removed when the guard drops.
struct TempFile(PathBuf);

impl TempFile {
    fn to_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn temp_path(name: &str) -> TempFile {
    let dir = std::env::temp_dir().join(format!("gatewarden-testkit-{}-{}", std::process::id(), name.trim_end_matches(".mmdb")));
    std::fs::create_dir_all(&dir).unwrap();
    TempFile(dir.join(name))
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn lookup(reader: &Reader<Vec<u8>>, addr: &str) -> Option<Value> {
    let ip: IpAddr = addr.parse().unwrap();
    reader.lookup(ip).unwrap().decode::<Value>().unwrap()
}

#[test]
fn country_code_fixture_resolves_each_entry() {
    let out = temp_path("country_code.mmdb");
    let status = run(&[out.to_str(), "203.0.113.0/24=KP", "198.51.100.0/24=US", "2001:db8:1::/48=IR", "203.0.113.128/25=CN"]);
    assert!(status.status.success(), "stderr: {}", String::from_utf8_lossy(&status.stderr));
    let reader = Reader::open_readfile(&out.0).unwrap();
    reader.verify().unwrap();
    assert_eq!(reader.metadata.database_type, "Gatewarden-Test-Country-Code");
    assert_eq!(lookup(&reader, "203.0.113.1"), Some(json!({"country_code": "KP"})));
    assert_eq!(lookup(&reader, "203.0.113.200"), Some(json!({"country_code": "CN"})));
    assert_eq!(lookup(&reader, "198.51.100.7"), Some(json!({"country_code": "US"})));
    assert_eq!(lookup(&reader, "2001:db8:1::9"), Some(json!({"country_code": "IR"})));
    assert_eq!(lookup(&reader, "192.0.2.1"), None);
}

#[test]
fn geoip2_fixture_uses_the_geoip2_layout() {
    let out = temp_path("geoip2.mmdb");
    let status = run(&[out.to_str(), "--layout", "geoip2", "1.1.1.0/24=AU"]);
    assert!(status.status.success(), "stderr: {}", String::from_utf8_lossy(&status.stderr));
    let reader = Reader::open_readfile(&out.0).unwrap();
    assert_eq!(lookup(&reader, "1.1.1.1"), Some(json!({"country": {"iso_code": "AU"}, "registered_country": {"iso_code": "AU"}})));
}

#[test]
fn corrupt_fixture_does_not_open() {
    let out = temp_path("corrupt.mmdb");
    let status = run(&[out.to_str(), "--corrupt", "203.0.113.0/24=KP"]);
    assert!(status.status.success(), "stderr: {}", String::from_utf8_lossy(&status.stderr));
    assert!(Reader::open_readfile(&out.0).is_err(), "a file with truncated metadata opened");
}

#[test]
fn bad_entry_exits_with_status_2_and_usage() {
    let out = temp_path("never-written.mmdb");
    let output = run(&[out.to_str(), "203.0.113.0/24"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("make-test-mmdb: entry \"203.0.113.0/24\": expected NET=CC, e.g. 203.0.113.0/24=KP\nusage:"),
        "stderr was: {stderr}"
    );
    assert!(!out.0.exists(), "nothing is written on a usage error");
}

#[test]
fn ipv6_entry_in_ipv4_fixture_exits_with_status_1() {
    let out = temp_path("v4-only.mmdb");
    let output = run(&[out.to_str(), "--ip-version", "4", "2001:db8::/32=IR"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "make-test-mmdb: network \"2001:db8::/32\": an IPv6 network cannot be stored in an IPv4 database\n"
    );
}
