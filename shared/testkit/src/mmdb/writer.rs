//! [`MmdbWriter`]: collects networks and records, then lays out the file:
//! search tree, 16 zero bytes, data section, metadata marker, metadata map.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use ipnet::IpNet;
use serde_json::Value;

use super::encode::encode;
use super::tree::{Link, Prefix, SearchTree};
use super::{MmdbError, Record};

/// Marks the start of the metadata; readers look for its last occurrence.
pub(crate) const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

/// Zero bytes between the search tree and the data section.
const DATA_SECTION_SEPARATOR: usize = 16;

/// `::ffff:0:0/96`, the IPv4-mapped IPv6 addresses.
const IPV4_MAPPED: Prefix = Prefix { addr: 0xffff_0000_0000, len: 96 };

/// `::/96`, where an IPv6 tree keeps its IPv4 subtree.
const IPV4_SUBTREE: Prefix = Prefix { addr: 0, len: 96 };

/// Bits per record; a node is two records. Larger records address more nodes and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordSize {
    /// 6-byte nodes; node count plus data section size must stay below 2^24.
    Bits24,
    /// 7-byte nodes; the top 4 bits of both records share the middle byte. Below 2^28.
    #[default]
    Bits28,
    /// 8-byte nodes; below 2^32.
    Bits32,
}

impl RecordSize {
    /// The value written to the `record_size` metadata key.
    pub fn bits(self) -> u16 {
        match self {
            RecordSize::Bits24 => 24,
            RecordSize::Bits28 => 28,
            RecordSize::Bits32 => 32,
        }
    }

    fn max_value(self) -> u64 {
        (1u64 << self.bits()) - 1
    }

    /// Appends one node, left record then right record, in this size's layout.
    fn write_node(self, out: &mut Vec<u8>, left: u32, right: u32) {
        let [l3, l2, l1, l0] = left.to_be_bytes();
        let [r3, r2, r1, r0] = right.to_be_bytes();
        match self {
            RecordSize::Bits24 => out.extend_from_slice(&[l2, l1, l0, r2, r1, r0]),
            RecordSize::Bits28 => {
                let middle = ((l3 & 0x0F) << 4) | (r3 & 0x0F);
                out.extend_from_slice(&[l2, l1, l0, middle, r2, r1, r0]);
            }
            RecordSize::Bits32 => out.extend_from_slice(&[l3, l2, l1, l0, r3, r2, r1, r0]),
        }
    }
}

impl TryFrom<u16> for RecordSize {
    type Error = MmdbError;

    fn try_from(bits: u16) -> Result<Self, Self::Error> {
        match bits {
            24 => Ok(RecordSize::Bits24),
            28 => Ok(RecordSize::Bits28),
            32 => Ok(RecordSize::Bits32),
            other => Err(MmdbError::unsupported_record_size(other)),
        }
    }
}

/// Builds a MaxMind DB file in memory.
///
/// Semantics:
/// - Networks are applied in insertion order and the last insert wins for every address it
///   covers: a more specific network overrides part of an earlier, wider one; a wider network
///   inserted later replaces everything inside it.
/// - In an IPv6 database, IPv4 networks live under `::/96` (as in MaxMind's files), and by
///   default `::ffff:0:0/96` is an alias of that subtree, so an IPv4-mapped address resolves
///   exactly like the IPv4 address it embeds. IPv6 networks inside `::ffff:0:0/96` are stored
///   as the IPv4 networks they map.
/// - Identical records are stored once in the data section.
/// - Output is deterministic: `build_epoch` defaults to 0 rather than the wall clock.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    ip_version: u16,
    database_type: String,
    description: BTreeMap<String, String>,
    languages: Vec<String>,
    build_epoch: u64,
    record_size: RecordSize,
    ipv4_mapped_alias: bool,
    tree: SearchTree,
    /// Encoded records by id; the tree's `Link::Data` holds these ids.
    records: Vec<Vec<u8>>,
    record_ids: HashMap<Vec<u8>, u32>,
}

impl MmdbWriter {
    /// An empty database for `ip_version` 4 or 6 whose `database_type` metadata is
    /// `database_type`. Record size 28, description `{"en": "Gatewarden test database"}`, no
    /// languages, `build_epoch` 0.
    pub fn new(ip_version: u16, database_type: &str) -> Result<Self, MmdbError> {
        let bits = match ip_version {
            4 => 32,
            6 => 128,
            other => return Err(MmdbError::unsupported_ip_version(other)),
        };
        Ok(Self {
            ip_version,
            database_type: database_type.to_owned(),
            description: BTreeMap::from([("en".to_owned(), "Gatewarden test database".to_owned())]),
            languages: Vec::new(),
            build_epoch: 0,
            record_size: RecordSize::default(),
            ipv4_mapped_alias: true,
            tree: SearchTree::new(bits),
            records: Vec::new(),
            record_ids: HashMap::new(),
        })
    }

    /// Sets the record size (24, 28 or 32 bits).
    #[must_use]
    pub fn with_record_size(mut self, record_size: RecordSize) -> Self {
        self.record_size = record_size;
        self
    }

    /// Adds (or replaces) the description for language code `language`.
    #[must_use]
    pub fn with_description(mut self, language: &str, text: &str) -> Self {
        self.description.insert(language.to_owned(), text.to_owned());
        self
    }

    /// Sets the `languages` metadata array.
    #[must_use]
    pub fn with_languages<I, S>(mut self, languages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.languages = languages.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the `build_epoch` metadata (seconds since the Unix epoch).
    #[must_use]
    pub fn with_build_epoch(mut self, build_epoch: u64) -> Self {
        self.build_epoch = build_epoch;
        self
    }

    /// Turns the `::ffff:0:0/96` alias of an IPv6 database on or off (default on). Without it,
    /// IPv4-mapped addresses resolve only through IPv6 networks inserted for them.
    #[must_use]
    pub fn with_ipv4_mapped_alias(mut self, enabled: bool) -> Self {
        self.ipv4_mapped_alias = enabled;
        self
    }

    /// Maps every address in `net` to `record`, overriding earlier inserts for those addresses.
    ///
    /// Host bits of `net` are ignored. Fails for an IPv6 network (outside `::ffff:0:0/96`) in
    /// an IPv4 database, or a value too long for the format.
    pub fn insert(&mut self, net: IpNet, record: Record) -> Result<(), MmdbError> {
        let prefix = self.prefix(net)?;
        let mut encoded = Vec::new();
        encode(&record, &mut encoded)?;
        let id = self.intern(encoded);
        self.tree.insert(prefix, Link::Data(id));
        Ok(())
    }

    /// [`insert`](Self::insert) with a JSON value; see [`Record`]'s `TryFrom<&Value>` for the
    /// type mapping.
    pub fn insert_json(&mut self, net: IpNet, value: &Value) -> Result<(), MmdbError> {
        let record = Record::try_from(value)?;
        self.insert(net, record)
    }

    /// Inserts `{ "country_code": country }` (the ip-location-db layout).
    pub fn insert_country(&mut self, net: IpNet, country: &str) -> Result<(), MmdbError> {
        self.insert(net, Record::country_code(country))
    }

    /// Inserts `{ "country": { "iso_code": country }, "registered_country": { "iso_code":
    /// country } }` (the GeoIP2/GeoLite2 Country layout).
    pub fn insert_geoip2_country(&mut self, net: IpNet, country: &str) -> Result<(), MmdbError> {
        self.insert(net, Record::geoip2_country(country))
    }

    /// Writes the database. Fails only when the tree and data section outgrow the record size.
    pub fn build(&self) -> Result<Vec<u8>, MmdbError> {
        let mut tree = self.tree.clone();
        if self.ip_version == 6 && self.ipv4_mapped_alias {
            tree.alias(IPV4_MAPPED, IPV4_SUBTREE);
        }
        let numbered = tree.number();
        let record_size = self.record_size;
        let too_big = |needed: u64| MmdbError::record_size_exceeded(record_size.bits(), needed);
        let node_count = u32::try_from(numbered.records.len()).map_err(|_| too_big(numbered.records.len() as u64))?;

        // Data section: each referenced record once, in the order the tree first reaches it.
        let mut data = Vec::new();
        let mut offsets: Vec<Option<u64>> = vec![None; self.records.len()];
        let mut value_of = |link: Link| -> Result<u32, MmdbError> {
            let value = match link {
                Link::Empty => u64::from(node_count),
                Link::Node(n) => u64::from(n),
                Link::Data(id) => {
                    let index = usize::try_from(id).unwrap_or(usize::MAX);
                    let offset = match offsets.get(index).copied().flatten() {
                        Some(offset) => offset,
                        None => {
                            let offset = data.len() as u64;
                            let bytes = self.records.get(index).map_or(&[][..], Vec::as_slice);
                            data.extend_from_slice(bytes);
                            if let Some(slot) = offsets.get_mut(index) {
                                *slot = Some(offset);
                            }
                            offset
                        }
                    };
                    u64::from(node_count) + DATA_SECTION_SEPARATOR as u64 + offset
                }
            };
            if value > record_size.max_value() {
                return Err(too_big(value));
            }
            u32::try_from(value).map_err(|_| too_big(value))
        };

        let node_bytes = usize::from(record_size.bits()) / 4;
        let mut out = Vec::with_capacity(numbered.records.len() * node_bytes);
        for &(left, right) in &numbered.records {
            let left = value_of(left)?;
            let right = value_of(right)?;
            record_size.write_node(&mut out, left, right);
        }
        out.extend_from_slice(&[0u8; DATA_SECTION_SEPARATOR]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_MARKER);
        encode(&self.metadata(node_count), &mut out)?;
        Ok(out)
    }

    fn metadata(&self, node_count: u32) -> Record {
        let strings = |map: &BTreeMap<String, String>| Record::map(map.iter().map(|(k, v)| (k.clone(), Record::from(v.as_str()))));
        Record::map([
            ("binary_format_major_version", Record::Uint16(2)),
            ("binary_format_minor_version", Record::Uint16(0)),
            ("build_epoch", Record::Uint64(self.build_epoch)),
            ("database_type", Record::from(self.database_type.as_str())),
            ("description", strings(&self.description)),
            ("ip_version", Record::Uint16(self.ip_version)),
            ("languages", Record::Array(self.languages.iter().map(|l| Record::from(l.as_str())).collect())),
            ("node_count", Record::Uint32(node_count)),
            ("record_size", Record::Uint16(self.record_size.bits())),
        ])
    }

    fn intern(&mut self, encoded: Vec<u8>) -> u32 {
        if let Some(&id) = self.record_ids.get(&encoded) {
            return id;
        }
        let id = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        self.records.push(encoded.clone());
        self.record_ids.insert(encoded, id);
        id
    }

    /// `net` in this tree's coordinates.
    fn prefix(&self, net: IpNet) -> Result<Prefix, MmdbError> {
        let (v4_addr, v4_len) = match net {
            IpNet::V4(v4) => (u32::from(v4.network()), v4.prefix_len()),
            IpNet::V6(v6) => match ipv4_mapped(v6.network(), v6.prefix_len()) {
                Some(mapped) if self.ip_version == 4 || self.ipv4_mapped_alias => mapped,
                _ if self.ip_version == 4 => return Err(MmdbError::ipv6_network_in_ipv4_database(net)),
                _ => return Ok(Prefix { addr: u128::from(v6.network()), len: v6.prefix_len() }),
            },
        };
        Ok(match self.ip_version {
            4 => Prefix { addr: u128::from(v4_addr), len: v4_len },
            _ => Prefix { addr: u128::from(v4_addr), len: 96 + v4_len },
        })
    }
}

/// The IPv4 network an IPv6 network inside `::ffff:0:0/96` stands for.
fn ipv4_mapped(addr: Ipv6Addr, len: u8) -> Option<(u32, u8)> {
    let bits = u128::from(addr);
    let in_mapped_range = len >= 96 && bits >> 32 == 0xffff;
    in_mapped_range.then(|| ((bits & 0xFFFF_FFFF) as u32, len - 96))
}
