//! IP and geo filtering, natively. The country database (`geo_database`) is one copy per
//! process, fetched on the main thread ([`gatewarden_native::remote`]); each worker reads it
//! through its [`Local`] view (re-read only when a new copy loads).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use gatewarden_glue::remote::counter_names;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_ip_geo_policy::{GeoDb, IpGeoPolicy, IpGeoReason, GEO_DB};
use gatewarden_native::remote::{self, Local, Parsed, Source};
use gatewarden_native::NativeFilter;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::RequestFacts;

pub struct IpGeo;

impl NativeFilter for IpGeo {
    const BORROWS_HEADERS: bool = true;

    fn sources(policy: &IpGeoPolicy) -> Vec<Source> {
        let Some(source) = policy.geo_database() else { return Vec::new() };
        let parse = Arc::new(|bytes: &[u8]| {
            let db = GeoDb::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
            let about = format!("({}, built {})", db.database_type(), db.build_epoch());
            Ok((Arc::new(db) as Parsed, about))
        });
        vec![Source { source: source.clone(), parse }]
    }
}

impl Enforcer for IpGeo {
    type Policy = IpGeoPolicy;
    /// This worker's view of the process's geo database, when the policy has one.
    type PolicyState = RefCell<Option<Local<GeoDb>>>;

    fn reasons() -> Vec<&'static str> {
        IpGeoReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        counter_names(GEO_DB.name)
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &IpGeoPolicy) -> Option<Duration> {
        None
    }

    fn header_needs(policy: &IpGeoPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(policy: &IpGeoPolicy) -> RefCell<Option<Local<GeoDb>>> {
        RefCell::new(policy.geo_database().map(|s| Local::new(remote::resource(s))))
    }

    fn decide(policy: &IpGeoPolicy, geo: &RefCell<Option<Local<GeoDb>>>, facts: &RequestFacts<'_>) -> Outcome {
        let mut geo = geo.try_borrow_mut().ok();
        let db = geo.as_deref_mut().and_then(Option::as_mut).and_then(|l| l.current().0.cloned());
        gatewarden_ip_geo_policy::adapter::to_outcome(policy.decide(facts, db.as_deref()))
    }
}
