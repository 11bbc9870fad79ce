//! Safe rollout: a candidate policy beside the active one, as a canary or in shadow.
//!
//! ```yaml
//! rollout:
//!   candidate: { policy_version: "v2", rules: [...], default: {...} }   # a whole second document
//!   percent: 10            # canary: this share of clients is decided by the candidate (0 to 100, 0.01 steps)
//!   hash_on: client_address  # default; or {header: x-user-id}
//!   shadow: false          # true: the active policy decides everything, the candidate is evaluated on
//!                          # all traffic and disagreements are counted (then `percent` must be absent)
//! ```
//!
//! Assignment is a pure function of the request and the two versions: the key (the client
//! address as the *active* policy resolves it, or the first value of the header) is hashed with
//! FNV-1a 64 salted with the candidate's `policy_version`, then mixed (the `fmix64` finaliser of
//! MurmurHash3) so that neighbouring addresses spread evenly; `bucket = hash mod 10000` and the
//! candidate decides iff `bucket < round(percent × 100)`. So one client sees one policy, raising
//! the percentage of the same candidate keeps its clients on it, and a new candidate draws a new
//! sample. No randomness: `on_configure` stays a pure function of the bytes.
//! A request whose key cannot be read (no header, unknown client address) goes to the active policy.

use std::net::IpAddr;
use std::sync::Arc;

use super::filter::FilterPolicy;
use super::header::Header;
use super::rollout_spec::{HashOn, RolloutDoc};
use super::spec::PolicyDocument;
use crate::decision::{Decision, Verdict};
use crate::error::{quote, ConfigError, FieldPath};
use crate::request::facts::{HeaderNeeds, RequestFacts};

/// Number of buckets clients are hashed into: a percentage has a resolution of 0.01.
pub const BUCKETS: u32 = 10_000;

/// Which policy decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Candidate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Candidate => "candidate",
        }
    }
}

/// A compiled rollout: the candidate policy and how requests are assigned to it.
#[derive(Debug)]
pub struct Rollout<P> {
    pub candidate: P,
    /// Buckets (of [`BUCKETS`]) assigned to the candidate.
    threshold: u32,
    /// The lowercase header name, or `None` for the client address.
    hash_header: Option<String>,
    pub shadow: bool,
    salt: Arc<str>,
}

/// The log line's words for an accepted document: `policy "v2" accepted`, and its candidate in
/// shadow or on a share of clients. Both hosts log it.
pub fn accepted_message<P: FilterPolicy>(active: &P, rollout: Option<&Rollout<P>>) -> String {
    let mut what = format!("policy {:?} accepted", &*active.header().policy_version);
    if let Some(r) = rollout {
        let v = &*r.candidate.header().policy_version;
        if r.shadow {
            what.push_str(&format!(" with candidate {v:?} in shadow"));
        } else {
            what.push_str(&format!(" with candidate {v:?} on {}.{:02} % of clients", r.threshold() / 100, r.threshold() % 100));
        }
    }
    what
}

/// A compiled policy document: the active policy and its optional rollout.
#[derive(Debug)]
pub struct PolicySet<P> {
    pub active: P,
    pub rollout: Option<Rollout<P>>,
}

impl<P: FilterPolicy> PolicySet<P> {
    /// The active policy's header.
    pub fn header(&self) -> &Header {
        self.active.header()
    }
}

fn prefix_error(e: ConfigError, prefix: &str) -> ConfigError {
    let path = if e.path().is_empty() { prefix.to_owned() } else { format!("{prefix}.{}", e.path()) };
    ConfigError::new(path, e.message())
}

impl<P: FilterPolicy> Rollout<P> {
    /// Compiles the `rollout` field of a document whose active policy is `active`. Errors carry
    /// the `rollout.` (and `rollout.candidate.`) prefix.
    pub fn compile(doc: RolloutDoc<P::Document>, active: &P) -> Result<Self, ConfigError> {
        let path = FieldPath::root().field("rollout");
        let mut candidate = *doc.candidate;
        let cpath = path.field("candidate");
        if candidate.take_rollout().is_some() {
            return Err(cpath.field("rollout").error("a candidate cannot carry its own rollout"));
        }
        if !candidate.signatures().is_empty() {
            return Err(cpath.field("signatures").error("sign the whole document, not the candidate"));
        }
        let candidate = P::compile(candidate).map_err(|e| prefix_error(e, "rollout.candidate"))?;
        active.check_candidate(&candidate).map_err(|e| prefix_error(e, "rollout.candidate"))?;
        let version = &candidate.header().policy_version;
        if version == &active.header().policy_version {
            return Err(cpath.field("policy_version").error(format!(
                "the candidate needs its own version: {} is the active policy's, so logs and counters could not tell them apart",
                quote(version)
            )));
        }
        let threshold = match (doc.shadow, doc.percent) {
            (true, Some(p)) => {
                return Err(path
                    .field("percent")
                    .error(format!("{p} with shadow: true; a shadow candidate is evaluated on all traffic, remove percent")));
            }
            (true, None) => 0,
            (false, None) => return Err(path.field("percent").error("required: the share of clients (0 to 100) the candidate decides")),
            (false, Some(p)) => {
                if !p.is_finite() || !(0.0..=100.0).contains(&p) {
                    return Err(path.field("percent").error(format!("{p} is not between 0 and 100")));
                }
                // In 0..=10000 by the check above.
                (p * 100.0).round() as u32
            }
        };
        let hash_header = match doc.hash_on {
            HashOn::ClientAddress => None,
            HashOn::Header(name) => {
                let ok = !name.is_empty() && name.len() <= 256 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(path.field("hash_on").field("header").error(format!("invalid header name {}", quote(&name))));
                }
                Some(name.to_ascii_lowercase())
            }
        };
        Ok(Self { salt: Arc::clone(version), candidate, threshold, hash_header, shadow: doc.shadow })
    }

    /// The share of buckets of the candidate, in hundredths of a percent.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Adds the header the assignment reads, if any.
    pub fn add_needs(&self, needs: &mut HeaderNeeds) {
        if let Some(h) = &self.hash_header {
            needs.add(h);
        }
    }

    /// The bucket (0..10000) of a client key.
    pub fn bucket(&self, key: &[u8]) -> u32 {
        bucket(&self.salt, key)
    }

    /// Which policy decides this request under a canary (`Active` under shadow: it enforces).
    /// `active` is the active policy's header (its client-address settings identify the client).
    pub fn assign(&self, active: &Header, facts: &RequestFacts<'_>) -> Role {
        if self.shadow || self.threshold == 0 {
            return Role::Active;
        }
        let b = match &self.hash_header {
            Some(name) => match facts.header(name) {
                Some(v) => self.bucket(v.as_bytes()),
                None => return Role::Active,
            },
            None => match active.client_address.resolve(facts) {
                Ok(IpAddr::V4(ip)) => self.bucket(&ip.octets()),
                Ok(IpAddr::V6(ip)) => self.bucket(&ip.octets()),
                Err(_) => return Role::Active,
            },
        };
        if b < self.threshold {
            Role::Candidate
        } else {
            Role::Active
        }
    }
}

/// FNV-1a 64 over `salt`, a zero byte and `key`, then MurmurHash3's fmix64, modulo [`BUCKETS`].
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in salt.as_bytes().iter().chain(&[0u8]).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// Whether a shadow candidate's decision disagrees with the active one's: allow vs deny, or
/// denials with different reasons or statuses. Modes are not compared: a dry-run policy's
/// verdict is what it would enforce.
pub fn disagree(active: &Decision, candidate: &Decision) -> bool {
    match (&active.verdict, &candidate.verdict) {
        (Verdict::Allow, Verdict::Allow) => false,
        (Verdict::Deny(a), Verdict::Deny(c)) => a.reason != c.reason || a.status != c.status,
        _ => true,
    }
}

/// `allow` or `deny:<reason>:<status>`, for the shadow log line.
pub fn verdict_label(d: &Decision) -> String {
    match &d.verdict {
        Verdict::Allow => "allow".to_owned(),
        Verdict::Deny(den) => format!("deny:{}:{}", den.reason, den.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Denial;

    #[test]
    fn bucket_is_stable_and_salted() {
        // Fixed values: a change of the hash would silently move clients between policies.
        let a = bucket("v2", &[203, 0, 113, 9]);
        assert_eq!(a, bucket("v2", &[203, 0, 113, 9]));
        assert_ne!(
            (0..50u8).map(|i| bucket("v2", &[10, 0, 0, i])).collect::<Vec<_>>(),
            (0..50u8).map(|i| bucket("v3", &[10, 0, 0, i])).collect::<Vec<_>>(),
            "another candidate draws another sample"
        );
        assert!(a < BUCKETS);
    }

    #[test]
    fn bucket_pins_known_values() {
        // Computed once by this implementation; pinned so the assignment never drifts.
        let got: Vec<u32> = [[10u8, 0, 0, 1], [10, 0, 0, 2], [192, 168, 1, 1]].iter().map(|k| bucket("v2", k)).collect();
        assert_eq!(got, PINNED.to_vec());
    }
    const PINNED: [u32; 3] = [2073, 8188, 4380];

    #[test]
    fn sequential_addresses_spread_evenly() {
        // 100,000 consecutive addresses into 10 deciles: each within 5 % of 10,000.
        let mut deciles = [0u32; 10];
        for i in 0..100_000u32 {
            let ip = (0x0a00_0000u32 + i).to_be_bytes();
            deciles[(bucket("2026-11-23.1", &ip) / 1000) as usize] += 1;
        }
        for (i, n) in deciles.iter().enumerate() {
            assert!((9_500..=10_500).contains(n), "decile {i}: {n} of 100000");
        }
    }

    #[test]
    fn disagreement_compares_verdict_reason_and_status() {
        let rule: Arc<str> = Arc::from("r");
        let deny = |reason, status| Decision::deny(&rule, Denial { status, body: "", reason });
        let allow = Decision::allow(&rule);
        assert!(!disagree(&allow, &allow));
        assert!(disagree(&allow, &deny("ip_denied", 403)));
        assert!(disagree(&deny("ip_denied", 403), &allow));
        assert!(!disagree(&deny("ip_denied", 403), &deny("ip_denied", 403)));
        assert!(disagree(&deny("ip_denied", 403), &deny("country_denied", 403)));
        assert!(disagree(&deny("x", 403), &deny("x", 401)));
        assert_eq!(verdict_label(&deny("ip_denied", 403)), "deny:ip_denied:403");
    }
}
