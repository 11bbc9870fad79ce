//! The one error type of the MaxMind DB writer.
//!
//! The kind is private; callers ask the predicates. Messages are lowercase, without a trailing
//! period, and quote the offending value.

use std::fmt;

use ipnet::IpNet;

/// Why a database could not be written (or a file could not be corrupted on purpose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmdbError {
    kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ErrorKind {
    /// `ip_version` was neither 4 nor 6.
    UnsupportedIpVersion(u16),
    /// `record_size` was not 24, 28 or 32.
    UnsupportedRecordSize(u16),
    /// An IPv6 network (outside `::ffff:0:0/96`) was inserted into an IPv4 database.
    Ipv6NetworkInIpv4Database(IpNet),
    /// A JSON value has no MaxMind DB type (null, or a number outside every integer type).
    UnsupportedJson { path: String, what: String },
    /// A string, byte string, map or array is longer than the format can express.
    ValueTooLarge { what: &'static str, len: usize },
    /// The tree plus data section need pointer values beyond the record size.
    RecordSizeExceeded { record_size: u16, needed: u64 },
    /// The input to [`crate::truncate_metadata`] has no metadata marker.
    NotADatabase,
}

impl MmdbError {
    pub(crate) fn unsupported_ip_version(version: u16) -> Self {
        Self { kind: ErrorKind::UnsupportedIpVersion(version) }
    }

    pub(crate) fn unsupported_record_size(bits: u16) -> Self {
        Self { kind: ErrorKind::UnsupportedRecordSize(bits) }
    }

    pub(crate) fn ipv6_network_in_ipv4_database(net: IpNet) -> Self {
        Self { kind: ErrorKind::Ipv6NetworkInIpv4Database(net) }
    }

    pub(crate) fn unsupported_json(path: String, what: String) -> Self {
        Self { kind: ErrorKind::UnsupportedJson { path, what } }
    }

    pub(crate) fn value_too_large(what: &'static str, len: usize) -> Self {
        Self { kind: ErrorKind::ValueTooLarge { what, len } }
    }

    pub(crate) fn record_size_exceeded(record_size: u16, needed: u64) -> Self {
        Self { kind: ErrorKind::RecordSizeExceeded { record_size, needed } }
    }

    pub(crate) fn not_a_database() -> Self {
        Self { kind: ErrorKind::NotADatabase }
    }

    /// The caller passed something the writer cannot represent: a bad IP version or record size,
    /// a network of the wrong family, or a value without a MaxMind DB type.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::UnsupportedIpVersion(_)
                | ErrorKind::UnsupportedRecordSize(_)
                | ErrorKind::Ipv6NetworkInIpv4Database(_)
                | ErrorKind::UnsupportedJson { .. }
                | ErrorKind::ValueTooLarge { .. }
        )
    }

    /// The database is too big for the chosen record size; a larger record size may fit it.
    pub fn is_capacity(&self) -> bool {
        matches!(self.kind, ErrorKind::RecordSizeExceeded { .. })
    }

    /// The bytes given to [`crate::truncate_metadata`] are not a MaxMind DB file.
    pub fn is_not_a_database(&self) -> bool {
        matches!(self.kind, ErrorKind::NotADatabase)
    }
}

impl fmt::Display for MmdbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::UnsupportedIpVersion(v) => {
                write!(f, "ip_version: unsupported value {v}, expected 4 or 6")
            }
            ErrorKind::UnsupportedRecordSize(bits) => {
                write!(f, "record_size: unsupported value {bits}, expected 24, 28 or 32")
            }
            ErrorKind::Ipv6NetworkInIpv4Database(net) => {
                write!(f, "network \"{net}\": an IPv6 network cannot be stored in an IPv4 database")
            }
            ErrorKind::UnsupportedJson { path, what } => {
                write!(f, "{path}: {what} has no MaxMind DB type")
            }
            ErrorKind::ValueTooLarge { what, len } => {
                write!(f, "{what} of length {len} exceeds the format limit of 16843036")
            }
            ErrorKind::RecordSizeExceeded { record_size, needed } => {
                write!(f, "record_size {record_size}: pointer value {needed} does not fit, use a larger record size")
            }
            ErrorKind::NotADatabase => {
                write!(f, "no MaxMind DB metadata marker found in input")
            }
        }
    }
}

impl std::error::Error for MmdbError {}
