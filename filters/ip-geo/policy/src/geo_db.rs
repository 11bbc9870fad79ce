//! `GeoDb`: the country database, a MaxMind DB (`.mmdb`) held in memory.
//!
//! Two record layouts are read: GeoIP2/GeoLite2 Country (`country.iso_code`, falling back to
//! `registered_country.iso_code`) and ip-location-db's (`country_code`), so a user can swap the
//! free default for their own GeoLite2/GeoIP2 file without rebuilding the module.

use std::fmt;
use std::net::IpAddr;

use maxminddb::{PathElement, Reader};

use gatewarden_policy::cidr::normalize;

/// An ISO 3166-1 alpha-2 code, uppercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Parses two ASCII letters, any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()])),
            _ => None,
        }
    }

    /// The two uppercase ASCII letters.
    pub const fn bytes(self) -> [u8; 2] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a database was refused or a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoDbError(String);

impl fmt::Display for GeoDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeoDbError {}

/// Where the country code is, in order of preference: GeoIP2/GeoLite2's `country.iso_code`,
/// ip-location-db's `country_code`, GeoIP2's `registered_country.iso_code`. Read by path, not
/// by decoding the whole record into a struct: one small decoder instance in the module (each
/// struct, nested struct and `Option` costs kilobytes of Wasm) and no decoding of the names.
const CODE_PATHS: [&[PathElement<'static>]; 3] = [
    &[PathElement::Key("country"), PathElement::Key("iso_code")],
    &[PathElement::Key("country_code")],
    &[PathElement::Key("registered_country"), PathElement::Key("iso_code")],
];

/// A loaded country database.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    build_epoch: u64,
    database_type: String,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb").field("database_type", &self.database_type).field("build_epoch", &self.build_epoch).finish()
    }
}

impl GeoDb {
    /// Opens a database from its bytes. A file that is not a MaxMind DB, is truncated, or whose
    /// search tree or records cannot be read at the probe addresses is refused here.
    ///
    /// Why not `Reader::verify`: it also rejects files that every reader accepts (the free
    /// ip-location-db file has an empty `description` map), and it doubles the module's MaxMind
    /// code. A corrupt record elsewhere is a lookup error at request time, which the policy
    /// treats as "database unavailable" (`failure_mode`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoDbError> {
        let reader = Reader::from_source(bytes).map_err(|e| GeoDbError(format!("not a valid MaxMind DB: {e}")))?;
        if !matches!(reader.metadata.ip_version, 4 | 6) {
            return Err(GeoDbError(format!("not a valid MaxMind DB: ip_version {}", reader.metadata.ip_version)));
        }
        let db = Self { build_epoch: reader.metadata.build_epoch, database_type: reader.metadata.database_type.clone(), reader };
        // Probe lookups across the address space so a truncated or corrupt tree is caught now.
        let probes = [
            IpAddr::from([1, 1, 1, 1]),
            IpAddr::from([8, 8, 8, 8]),
            IpAddr::from([100, 64, 0, 1]),
            IpAddr::from([198, 51, 100, 1]),
            IpAddr::from([203, 0, 113, 1]),
            IpAddr::from([223, 255, 255, 254]),
            IpAddr::from([0x2001, 0x4860, 0, 0, 0, 0, 0, 0x8888]),
            IpAddr::from([0x2a00, 0x1450, 0, 0, 0, 0, 0, 1]),
        ];
        for probe in probes {
            if db.reader.metadata.ip_version == 4 && probe.is_ipv6() {
                continue;
            }
            db.country(probe)?;
        }
        Ok(db)
    }

    /// The country of `ip`, `Ok(None)` when the database does not know the address.
    pub fn country(&self, ip: IpAddr) -> Result<Option<CountryCode>, GeoDbError> {
        let ip = normalize(ip);
        if ip.is_ipv6() && self.reader.metadata.ip_version == 4 {
            return Ok(None);
        }
        let found = self.reader.lookup(ip).map_err(|e| GeoDbError(format!("lookup failed: {e}")))?;
        let mut code: Option<&str> = None;
        for path in CODE_PATHS {
            code = found.decode_path(path).map_err(|e| GeoDbError(format!("lookup failed: {e}")))?;
            if code.is_some() {
                break;
            }
        }
        Ok(code.and_then(CountryCode::parse))
    }

    /// The database's `build_epoch` (seconds since 1970), for logs.
    pub fn build_epoch(&self) -> u64 {
        self.build_epoch
    }

    /// The database's `database_type`, for logs.
    pub fn database_type(&self) -> &str {
        &self.database_type
    }
}
