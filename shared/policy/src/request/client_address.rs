//! `ClientAddress`: who the client is, for the IP filter and the rate limiter alike.
//!
//! `x-forwarded-for` is never trusted by default: the client is the peer address. Two opt-ins,
//! with Envoy's semantics:
//! - `xff_num_trusted_hops: N` — N proxies we trust stand in front of us and each appends the
//!   address it saw; the client is the N-th address from the right of `x-forwarded-for`. With
//!   fewer than N entries the request did not come through them, so the peer is the client.
//! - `trusted_proxies: [CIDR…]` — walk the chain (the XFF entries, then the peer) from right to
//!   left, skipping trusted proxies; the first untrusted address is the client. If the peer is
//!   not trusted, XFF is ignored. If every address is trusted, the leftmost is the client.
//!
//! An entry that is not an address where we must read it makes the client address unknown
//! (never a trusted or allowed address): the filter then denies with `client_address_invalid`.
//! Several `x-forwarded-for` headers are read as one comma-separated list.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FieldPath};
use crate::request::cidr::{parse_address, CidrTable};
use crate::request::facts::{HeaderNeeds, RequestFacts};

/// Longest XFF chain we walk; a longer header is treated as malformed.
const MAX_XFF_ENTRIES: usize = 64;

/// How the client address is found. Default: the peer address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAddressConfig {
    /// Number of trusted proxies in front of this one (Envoy's `xff_num_trusted_hops`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub xff_num_trusted_hops: u32,
    /// Networks of trusted proxies; `x-forwarded-for` is walked right to left past them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why no client address could be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddressError {
    /// The host gave no peer address, or one we cannot parse.
    NoPeer,
    /// The `x-forwarded-for` entry we had to read is not an address (or the chain is too long).
    MalformedForwardedFor,
}

impl ClientAddressError {
    /// A fixed snake_case name, for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoPeer => "no_peer",
            Self::MalformedForwardedFor => "malformed_forwarded_for",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Strategy {
    Peer,
    TrustedHops(usize),
    TrustedProxies(CidrTable),
}

/// Compiled client-address settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddressResolver {
    strategy: Strategy,
}

impl Default for ClientAddressResolver {
    fn default() -> Self {
        Self { strategy: Strategy::Peer }
    }
}

impl ClientAddressResolver {
    pub fn compile(config: &ClientAddressConfig, path: &FieldPath) -> Result<Self, ConfigError> {
        let strategy = match (config.xff_num_trusted_hops, config.trusted_proxies.is_empty()) {
            (0, true) => Strategy::Peer,
            (n, true) => {
                if n as usize > MAX_XFF_ENTRIES {
                    return Err(path.field("xff_num_trusted_hops").error(format!("{n} is more than {MAX_XFF_ENTRIES}")));
                }
                Strategy::TrustedHops(n as usize)
            }
            (0, false) => Strategy::TrustedProxies(CidrTable::compile(&config.trusted_proxies, &path.field("trusted_proxies"))?),
            (_, false) => {
                return Err(path.error("set either xff_num_trusted_hops or trusted_proxies, not both"));
            }
        };
        Ok(Self { strategy })
    }

    /// Adds the headers `resolve` reads.
    pub fn add_needs(&self, needs: &mut HeaderNeeds) {
        if self.uses_forwarded_for() {
            needs.add("x-forwarded-for");
        }
    }

    /// Whether `x-forwarded-for` is consulted at all.
    pub fn uses_forwarded_for(&self) -> bool {
        self.strategy != Strategy::Peer
    }

    /// The client address of a request.
    pub fn resolve(&self, facts: &RequestFacts<'_>) -> Result<IpAddr, ClientAddressError> {
        // The peer is read only where it decides (reading it is a host call natively).
        let peer = || facts.peer_address().and_then(parse_address).ok_or(ClientAddressError::NoPeer);
        match &self.strategy {
            Strategy::Peer => peer(),
            Strategy::TrustedHops(n) => {
                // Counted, then the one entry picked: no list built.
                let count = xff_iter(facts).count();
                if count > MAX_XFF_ENTRIES {
                    return Err(ClientAddressError::MalformedForwardedFor);
                }
                match count.checked_sub(*n) {
                    Some(i) => xff_iter(facts).nth(i).and_then(parse_address).ok_or(ClientAddressError::MalformedForwardedFor),
                    None => peer(),
                }
            }
            Strategy::TrustedProxies(trusted) => {
                let peer = peer()?;
                if !trusted.contains(peer) {
                    return Ok(peer);
                }
                let entries = xff_entries(facts)?;
                let mut leftmost = peer;
                for entry in entries.iter().rev() {
                    let addr = parse_address(entry).ok_or(ClientAddressError::MalformedForwardedFor)?;
                    if !trusted.contains(addr) {
                        return Ok(addr);
                    }
                    leftmost = addr;
                }
                Ok(leftmost)
            }
        }
    }
}

/// The entries of every `x-forwarded-for` header, as one list, left to right.
fn xff_iter<'a>(facts: &RequestFacts<'a>) -> impl Iterator<Item = &'a str> + 'a {
    facts.header_values("x-forwarded-for").flat_map(|v| v.split(','))
}

fn xff_entries<'a>(facts: &RequestFacts<'a>) -> Result<Vec<&'a str>, ClientAddressError> {
    let entries: Vec<&str> = xff_iter(facts).take(MAX_XFF_ENTRIES + 1).collect();
    if entries.len() > MAX_XFF_ENTRIES {
        return Err(ClientAddressError::MalformedForwardedFor);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(json: &str) -> ClientAddressResolver {
        let config: ClientAddressConfig = serde_json::from_str(json).unwrap();
        ClientAddressResolver::compile(&config, &FieldPath::root().field("client_address")).unwrap()
    }

    fn resolve(r: &ClientAddressResolver, xff: &[&str], peer: Option<&str>) -> Result<String, ClientAddressError> {
        let headers: Vec<(String, String)> = xff.iter().map(|v| ("x-forwarded-for".to_string(), v.to_string())).collect();
        r.resolve(&RequestFacts::new(&headers, peer)).map(|ip| ip.to_string())
    }

    #[test]
    fn peer_by_default_ignores_xff() {
        let r = resolver("{}");
        assert_eq!(resolve(&r, &["1.1.1.1"], Some("10.0.0.1:5555")).unwrap(), "10.0.0.1");
        assert_eq!(resolve(&r, &[], Some("[::ffff:10.0.0.2]:1")).unwrap(), "10.0.0.2");
        assert_eq!(resolve(&r, &[], Some("10.0.0.3")).unwrap(), "10.0.0.3", "Kong gives the bare ip");
        assert_eq!(resolve(&r, &[], None), Err(ClientAddressError::NoPeer));
        assert_eq!(resolve(&r, &[], Some("garbage")), Err(ClientAddressError::NoPeer));
    }

    #[test]
    fn trusted_hops_take_nth_from_right() {
        let one = resolver(r#"{"xff_num_trusted_hops":1}"#);
        let two = resolver(r#"{"xff_num_trusted_hops":2}"#);
        assert_eq!(resolve(&one, &["203.0.113.9"], Some("10.0.0.1:1")).unwrap(), "203.0.113.9");
        assert_eq!(resolve(&one, &["6.6.6.6, 203.0.113.9"], Some("10.0.0.1:1")).unwrap(), "203.0.113.9", "spoofed left entry ignored");
        assert_eq!(resolve(&two, &["6.6.6.6, 203.0.113.9, 10.0.0.7"], Some("10.0.0.1:1")).unwrap(), "203.0.113.9");
        assert_eq!(
            resolve(&two, &["6.6.6.6", "203.0.113.9, 10.0.0.7"], Some("10.0.0.1:1")).unwrap(),
            "203.0.113.9",
            "several headers are one list"
        );
        assert_eq!(resolve(&two, &["10.0.0.7"], Some("198.51.100.1:1")).unwrap(), "198.51.100.1", "fewer entries: the peer");
        assert_eq!(resolve(&one, &[], Some("198.51.100.1:1")).unwrap(), "198.51.100.1");
        assert_eq!(resolve(&one, &[" [2001:db8::5]:443 "], Some("10.0.0.1:1")).unwrap(), "2001:db8::5");
    }

    #[test]
    fn malformed_entry_where_we_read_is_an_error_not_an_address() {
        let one = resolver(r#"{"xff_num_trusted_hops":1}"#);
        assert_eq!(resolve(&one, &["10.0.0.1, not-an-ip"], Some("10.0.0.1:1")), Err(ClientAddressError::MalformedForwardedFor));
        assert_eq!(
            resolve(&one, &["not-an-ip, 203.0.113.9"], Some("10.0.0.1:1")).unwrap(),
            "203.0.113.9",
            "garbage left of the client is irrelevant"
        );
        let long = vec!["1.1.1.1"; 65].join(",");
        assert_eq!(resolve(&one, &[&long], Some("10.0.0.1:1")), Err(ClientAddressError::MalformedForwardedFor));
    }

    #[test]
    fn trusted_proxies_walk_right_to_left() {
        let r = resolver(r#"{"trusted_proxies":["10.0.0.0/8","2001:db8:ffff::/48"]}"#);
        assert_eq!(resolve(&r, &["6.6.6.6, 203.0.113.9, 10.1.1.1"], Some("10.0.0.1:1")).unwrap(), "203.0.113.9");
        assert_eq!(resolve(&r, &["203.0.113.9"], Some("198.51.100.1:1")).unwrap(), "198.51.100.1", "untrusted peer: XFF ignored");
        assert_eq!(resolve(&r, &["10.2.2.2, 10.1.1.1"], Some("10.0.0.1:1")).unwrap(), "10.2.2.2", "all trusted: leftmost");
        assert_eq!(resolve(&r, &[], Some("10.0.0.1:1")).unwrap(), "10.0.0.1");
        assert_eq!(resolve(&r, &["203.0.113.9, bogus, 10.1.1.1"], Some("10.0.0.1:1")), Err(ClientAddressError::MalformedForwardedFor));
        assert_eq!(resolve(&r, &["::ffff:203.0.113.9, 2001:db8:ffff::9"], Some("[2001:db8:ffff::1]:1")).unwrap(), "203.0.113.9");
    }

    #[test]
    fn config_errors() {
        let both: ClientAddressConfig = serde_json::from_str(r#"{"xff_num_trusted_hops":1,"trusted_proxies":["10.0.0.0/8"]}"#).unwrap();
        let err = ClientAddressResolver::compile(&both, &FieldPath::root().field("client_address")).unwrap_err();
        assert_eq!(err.to_string(), "client_address: set either xff_num_trusted_hops or trusted_proxies, not both");
        let bad: ClientAddressConfig = serde_json::from_str(r#"{"trusted_proxies":["10.0.0.0/8","10.0.0/8"]}"#).unwrap();
        let err = ClientAddressResolver::compile(&bad, &FieldPath::root().field("client_address")).unwrap_err();
        assert!(err.to_string().starts_with("client_address.trusted_proxies[1]: invalid CIDR \"10.0.0/8\""), "{err}");
    }
}
