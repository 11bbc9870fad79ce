//! IP and geo filtering, natively. A policy with a geo database (`geo_database`, fetched) is
//! refused: the native module does not fetch remote resources yet.

use std::time::Duration;

use gatewarden_glue::pipeline::HostCaps;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_ip_geo_policy::{IpGeoPolicy, IpGeoReason};
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{RequestFacts, Verdict};

pub struct IpGeo;

impl Enforcer for IpGeo {
    type Policy = IpGeoPolicy;
    type PolicyState = ();

    fn reasons() -> Vec<&'static str> {
        IpGeoReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &IpGeoPolicy) -> Option<Duration> {
        None
    }

    fn check_host(policy: &IpGeoPolicy, host: &HostCaps) -> Result<(), String> {
        match policy.geo_database() {
            Some(_) => Err(format!("geo_database: a fetched geo database is not available in the {} module yet", host.name)),
            None => Ok(()),
        }
    }

    fn header_needs(policy: &IpGeoPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(_policy: &IpGeoPolicy) {}

    fn decide(policy: &IpGeoPolicy, _state: &(), facts: &RequestFacts<'_>) -> Outcome {
        let out = policy.decide(facts, None);
        let detail = match (&out.decision.verdict, out.country) {
            (Verdict::Deny(_), Some(cc)) => format!("country={cc}"),
            _ => String::new(),
        };
        Outcome::new(out.decision, out.client, detail)
    }
}
