//! A minimal writer for the MaxMind DB format, version 2.0
//! (<https://maxmind.github.io/MaxMind-DB/>), written for tests.
//!
//! A database has three parts, and each has its own module here:
//! - [`tree`]: the binary search tree over address bits, where later inserts override earlier ones;
//! - [`encode`]: the data section's type/size control bytes and values;
//! - [`writer`]: the public [`MmdbWriter`], which assembles tree, separator, data and metadata.
//!
//! [`corrupt`] deliberately breaks a finished file for failure-path tests.

pub mod corrupt;
mod encode;
mod error;
mod record;
mod tree;
mod writer;

pub use corrupt::truncate_metadata;
pub use error::MmdbError;
pub use record::Record;
pub use writer::{MmdbWriter, RecordSize};
