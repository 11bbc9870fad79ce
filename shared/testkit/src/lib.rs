//! Test support for Gatewarden.
//!
//! The main piece is a small MaxMind DB (`.mmdb`) writer, so filter tests can build the exact
//! geolocation database they need instead of shipping opaque binary fixtures:
//!
//! ```
//! use gatewarden_testkit::MmdbWriter;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut writer = MmdbWriter::new(6, "Gatewarden-Test-Country")?;
//! writer.insert_country("203.0.113.0/24".parse()?, "KP")?;
//! writer.insert_country("2001:db8:1::/48".parse()?, "IR")?;
//! let bytes: Vec<u8> = writer.build()?;
//! # assert!(!bytes.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! The `make-test-mmdb` binary wraps the same writer for end-to-end fixtures.

#![forbid(unsafe_code)]

pub mod mmdb;

pub use mmdb::{truncate_metadata, MmdbError, MmdbWriter, Record, RecordSize};
