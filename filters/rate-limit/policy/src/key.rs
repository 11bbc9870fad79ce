//! Bucket keys: built from a rule's key parts for one request.
//!
//! Locally a bucket is always per rule (each rule has its own limits), so the rule's name is
//! always hashed in; the `rule` part also names the rule in the key's parts (the descriptor a
//! limit service will see). Each part is hashed with a presence tag and its length, so no two
//! different part lists give the same byte stream, and a `shared` missing part cannot equal any
//! value.

use std::net::IpAddr;

use gatewarden_policy::client_address::ClientAddressResolver;
use gatewarden_policy::facts::RequestFacts;

use crate::config::OnMissingKey;

/// A compiled key part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientAddress,
    /// A lowercase header name.
    Header(String),
    /// A lowercase header name set by the JWT filter.
    ClaimHeader(String),
    Path,
    Method,
    Rule,
}

impl KeyPart {
    /// The part's label in logs and descriptors.
    pub fn label(&self) -> &str {
        match self {
            Self::ClientAddress => "client_address",
            Self::Header(h) | Self::ClaimHeader(h) => h,
            Self::Path => "path",
            Self::Method => "method",
            Self::Rule => "rule",
        }
    }
}

/// A request's bucket key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketKey {
    /// The 64-bit hash that indexes the key table; never 0 (0 marks an empty slot).
    pub fingerprint: u64,
    /// The parts as (label, value); `None` for a missing part under `shared`. Built only when
    /// asked for (`build_key`'s `with_parts`: a rule with fleet limits sends them to the service);
    /// empty otherwise, so a local limit allocates nothing for its key.
    pub parts: Vec<(String, Option<String>)>,
}

/// What the key parts give for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    Key(BucketKey),
    /// A part is missing and `on_missing_key` is `deny`: the label of the first missing part.
    Missing(String),
    /// A part is missing and `on_missing_key` is `allow`: no limit applies.
    Unlimited,
}

/// Builds the key of `facts` for the rule named `rule`. `seed` keys the hash (the glue picks one
/// per gateway and shares it between workers, so keys cannot be aimed at a slot from outside
/// unless the seed is known; any constant works for tests and the CLI). A client address is
/// hashed as its octets (4 or 16 bytes, tagged), every other part as its text.
pub fn build_key(
    parts: &[KeyPart],
    rule: &str,
    on_missing: OnMissingKey,
    facts: &RequestFacts<'_>,
    client: &ClientAddressResolver,
    seed: u64,
    with_parts: bool,
) -> KeyOutcome {
    let mut h = Hasher::new(seed);
    h.part(Some(rule.as_bytes()));
    let mut out = if with_parts { Vec::with_capacity(parts.len()) } else { Vec::new() };
    for part in parts {
        let mut ip = None;
        let value: Option<&str> = match part {
            KeyPart::ClientAddress => {
                ip = client.resolve(facts).ok();
                ip.map(|_| "")
            }
            KeyPart::Header(name) | KeyPart::ClaimHeader(name) => facts.header(name),
            KeyPart::Path => Some(facts.path()),
            KeyPart::Method => Some(facts.method()),
            KeyPart::Rule => Some(rule),
        };
        if value.is_none() {
            match on_missing {
                OnMissingKey::Deny => return KeyOutcome::Missing(part.label().to_owned()),
                OnMissingKey::Allow => return KeyOutcome::Unlimited,
                OnMissingKey::Shared => {}
            }
        }
        h.part(Some(part.label().as_bytes()));
        match ip {
            Some(IpAddr::V4(a)) => h.part(Some(&[&[4u8][..], &a.octets()].concat())),
            Some(IpAddr::V6(a)) => h.part(Some(&[&[6u8][..], &a.octets()].concat())),
            None => h.part(value.map(str::as_bytes)),
        }
        if with_parts {
            let text = match ip {
                Some(ip) => Some(ip.to_string()),
                None => value.map(str::to_owned),
            };
            out.push((part.label().to_owned(), text));
        }
    }
    KeyOutcome::Key(BucketKey { fingerprint: h.finish(), parts: out })
}

struct Hasher(u64);

impl Hasher {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(seed: u64) -> Self {
        Self(0xcbf2_9ce4_8422_2325 ^ mix(seed))
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(Self::PRIME);
        }
    }

    fn part(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.bytes(&[0]),
            Some(v) => {
                self.bytes(&[1]);
                self.bytes(&(v.len() as u64).to_le_bytes());
                self.bytes(v);
            }
        }
    }

    fn finish(&self) -> u64 {
        mix(self.0).max(1)
    }
}

/// splitmix64's finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
