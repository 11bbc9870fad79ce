//! Fleet limits: limits counted across every gateway by a rate limit service speaking
//! `envoy.service.ratelimit.v3` (ours, `gatewarden-ratelimit`, envoyproxy/ratelimit, Limitador).
//!
//! ```text
//! decide ─ local limits admit ─▶ outcome.fleet = Some(FleetCheck)          (denied locally: no call)
//! fleet_start(check, leases, now) ─▶ Done(allowed from a lease) | Call(FleetCall { request, pending })
//!   glue: Envoy dispatch_grpc_call(rls::encode_request) | Kong dispatch_http_call(POST /json, protojson)
//! fleet_resume(pending, FleetAnswer::from_grpc / from_http / Failed, ..) ─▶ Done(outcome) | Call(again)
//! ```
//! **The request** (the contract shared with the service, `/tmp/lead/contract13.md` then the
//! service's docs): `domain` = `fleet.domain`; one descriptor per fleet limit of the matched rule,
//! in the rule's order: `("gatewarden_limit", "<rule>/<limit>")`, then one entry per key part in
//! the rule's order: client address → `("remote_address", ip)`, header H → `(h, value)`,
//! claim header H → `(h, value)`, path → `("path", …)`, method → `("method", …)`, rule →
//! `("rule", <rule>)`; a missing part under `on_missing_key: shared` has no entry. These are the
//! keys Envoy's own `rate_limits` actions produce, so Envoy's native ratelimit filter can share the
//! service and its limits. `hits_addend` = the request's cost (a zero-cost request is not sent: the
//! protocol reads 0 as 1, and such a request is not charged locally either).
//!
//! **The answer**: `OK` admits; `OVER_LIMIT` denies (429 `fleet_limited`, the violated limits'
//! names from the statuses marked `OVER_LIMIT`, `Retry-After` the longest `duration_until_reset`
//! among them when given). A timeout, a failed call, a non-OK gRPC status, an HTTP status without
//! an answer, an undecodable body or an `UNKNOWN` code go to `fleet.failure_mode`: `allow`,
//! `deny` (503 `fleet_unavailable`) or `local` (the fleet limits checked in this gateway's key
//! table, under a key of their own). Local limits already charged **stay charged** when the fleet
//! denies: undoing a GCRA charge is not safe once other requests have used the bucket after it,
//! and a request that reached the fleet check did spend local capacity.
//!
//! **Lease mode** ([`lease`]): see [`crate::config::LeaseSpec`].

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod lease;
mod step;

use std::sync::Arc;
use std::time::Duration;

use gatewarden_policy::document::FailureMode;
use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::remote::{check_authority, check_upstream};

use crate::config::{FleetFailureMode, FleetProtocol, FleetSpec};
use crate::gcra::Limit;
use crate::key::{BucketKey, KeyPart};
use crate::rls::{Entry, RateLimitDescriptor};

pub use lease::{Leases, Refusal, MAX_LEASES};
pub use step::{resume, start, FleetAnswer, FleetCall, FleetCheck, FleetFailure, FleetNote, FleetPending, FleetStep, OwnedStatus};

/// The descriptor entry naming the limit definition.
pub const LIMIT_ENTRY: &str = "gatewarden_limit";
/// `fleet.domain` when not given.
pub const DEFAULT_DOMAIN: &str = "gatewarden";
/// `fleet.service.timeout_ms` when not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 200;
const MAX_TIMEOUT_MS: u64 = 10_000;
const MIN_LEASE_UNITS: u32 = 2;
const MAX_LEASE_UNITS: u32 = 100_000;
const MAX_LEASE_MS: u64 = 60_000;
/// The largest answer read from the service.
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The fleet limits of one rule, in the rule's order: name and limit.
pub type FleetLimits = Arc<[(Arc<str>, Limit)]>;

/// Which proxy runs the filter (what a fleet target depends on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Envoy,
    /// Kong's engine: calls `host:port`, HTTP/1.1 only.
    NgxWasmModule,
}

/// The compiled `fleet` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    cluster: Option<String>,
    address: Option<String>,
    authority: Option<String>,
    protocol: Option<FleetProtocol>,
    pub timeout: Duration,
    pub domain: String,
    pub failure_mode: FleetFailureMode,
    pub lease: Option<Lease>,
}

/// Compiled lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub units: u32,
    pub lease_us: u64,
}

/// Where and how the calls go on one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTarget {
    pub protocol: FleetProtocol,
    /// Envoy cluster, or `host:port` on Kong's engine.
    pub upstream: String,
    /// `:authority` of HTTP calls.
    pub authority: String,
    pub timeout: Duration,
}

impl Fleet {
    /// Validates the `fleet` section (at `path`); `policy_failure` is the policy's `failure_mode`,
    /// the default of `fleet.failure_mode`.
    pub fn compile(spec: &FleetSpec, policy_failure: FailureMode, path: &FieldPath) -> Result<Fleet, ConfigError> {
        let service = path.field("service");
        let s = &spec.service;
        if s.cluster.is_none() && s.address.is_none() {
            return Err(service.error("give \"cluster\" (an Envoy cluster), \"address\" (host:port, Kong's engine) or both"));
        }
        if let Some(c) = &s.cluster {
            check_upstream(c, &service.field("cluster"))?;
        }
        if let Some(a) = &s.address {
            check_upstream(a, &service.field("address"))?;
            check_host_port(a, &service.field("address"))?;
        }
        if let Some(a) = &s.authority {
            check_authority(a, &service.field("authority"))?;
        }
        let timeout_ms = s.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(service.field("timeout_ms").error(format!("{timeout_ms} is not between 1 and {MAX_TIMEOUT_MS}")));
        }
        let domain = spec.domain.clone().unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
        let domain_ok =
            !domain.is_empty() && domain.len() <= 128 && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
        if !domain_ok {
            return Err(path
                .field("domain")
                .error(format!("invalid domain {}: use 1 to 128 characters from A-Z a-z 0-9 - _ . : /", quote(&domain))));
        }
        let lease = match &spec.lease {
            None => None,
            Some(l) => {
                let lp = path.field("lease");
                if !(MIN_LEASE_UNITS..=MAX_LEASE_UNITS).contains(&l.units) {
                    return Err(lp.field("units").error(format!("{} is not between {MIN_LEASE_UNITS} and {MAX_LEASE_UNITS}", l.units)));
                }
                if !(1..=MAX_LEASE_MS).contains(&l.lease_ms) {
                    return Err(lp.field("lease_ms").error(format!("{} is not between 1 and {MAX_LEASE_MS}", l.lease_ms)));
                }
                Some(Lease { units: l.units, lease_us: l.lease_ms.saturating_mul(1000) })
            }
        };
        let failure_mode = spec.failure_mode.unwrap_or(match policy_failure {
            FailureMode::Allow => FleetFailureMode::Allow,
            FailureMode::Deny => FleetFailureMode::Deny,
        });
        Ok(Fleet {
            cluster: s.cluster.clone(),
            address: s.address.clone(),
            authority: s.authority.clone(),
            protocol: s.protocol,
            timeout: Duration::from_millis(timeout_ms),
            domain,
            failure_mode,
            lease,
        })
    }

    /// Checks one fleet limit (`rule`/`name`, found at `path`) against the lease size: a lease
    /// larger than the limit's burst could never be granted.
    pub(crate) fn check_limit(&self, rule: &str, name: &str, limit: &Limit, path: &FieldPath) -> Result<(), ConfigError> {
        match self.lease {
            Some(l) if u64::from(l.units) > limit.burst => {
                Err(FieldPath::root().field("fleet").field("lease").field("units").error(format!(
                    "{} is more than the burst {} of fleet limit {} ({}): a lease could never be granted",
                    l.units,
                    limit.burst,
                    quote(&format!("{rule}/{name}")),
                    path.as_str()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Where and how the calls go on `proxy`; the error (for the configure-time refusal) names
    /// the field path.
    pub fn target(&self, proxy: Proxy) -> Result<FleetTarget, String> {
        let (protocol, upstream) = match proxy {
            Proxy::Envoy => {
                let Some(c) = &self.cluster else {
                    return Err("fleet.service.cluster: Envoy calls a cluster; give the rate limit service's cluster name".to_owned());
                };
                (self.protocol.unwrap_or(FleetProtocol::Grpc), c)
            }
            Proxy::NgxWasmModule => {
                let Some(a) = &self.address else {
                    return Err("fleet.service.address: ngx_wasm_module calls host:port; give the rate limit service's address".to_owned());
                };
                if self.protocol == Some(FleetProtocol::Grpc) {
                    return Err("fleet.service.protocol: gRPC callouts are not available on ngx_wasm_module; use \"http\"".to_owned());
                }
                (FleetProtocol::Http, a)
            }
        };
        Ok(FleetTarget {
            protocol,
            upstream: upstream.clone(),
            authority: self.authority.clone().unwrap_or_else(|| upstream.clone()),
            timeout: self.timeout,
        })
    }
}

/// `host:port` with a port from 1 to 65535 (an IPv6 host in brackets).
fn check_host_port(value: &str, path: &FieldPath) -> Result<(), ConfigError> {
    let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
        let host_ok = !host.is_empty() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
        host_ok && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(path.error(format!("invalid address {}: host:port is required (e.g. 127.0.0.1:8081)", quote(value))))
    }
}

/// The descriptor key of a key part (the names Envoy's `rate_limits` actions use).
fn entry_key(part: &KeyPart) -> &str {
    match part {
        KeyPart::ClientAddress => "remote_address",
        KeyPart::Header(h) | KeyPart::ClaimHeader(h) => h,
        KeyPart::Path => "path",
        KeyPart::Method => "method",
        KeyPart::Rule => "rule",
    }
}

/// The descriptor entries of a request's key parts (`parts`, the rule's, in order; `key` built
/// from them): one per part, none for a part missing under `on_missing_key: shared`.
pub fn key_entries(parts: &[KeyPart], key: &BucketKey) -> Vec<(String, String)> {
    parts.iter().zip(&key.parts).filter_map(|(part, (_, value))| value.as_ref().map(|v| (entry_key(part).to_owned(), v.clone()))).collect()
}

/// One descriptor per fleet limit of rule `rule`: `gatewarden_limit` = `<rule>/<limit>`, then the
/// request's key entries ([`key_entries`]).
pub fn descriptors(rule: &str, limits: &[(Arc<str>, Limit)], key_entries: &[(String, String)]) -> Vec<RateLimitDescriptor> {
    limits
        .iter()
        .map(|(name, _)| {
            let mut entries = Vec::with_capacity(1 + key_entries.len());
            entries.push(Entry { key: LIMIT_ENTRY.to_owned(), value: format!("{rule}/{name}") });
            entries.extend(key_entries.iter().map(|(k, v)| Entry { key: k.clone(), value: v.clone() }));
            RateLimitDescriptor { entries, limit: None }
        })
        .collect()
}

#[cfg(test)]
mod tests;
