//! Gatewarden IP and geo filtering as a Proxy-Wasm module: glue only. The policy lives in
//! `gatewarden_ip_geo_policy`; the host adapter in `gatewarden_glue`.
//!
//! The country database is a [`RemoteResource`] (`geo_database`, the one remote-source type):
//! fetched by one worker after the policy is accepted, published in shared data, and loaded by
//! every worker on its next tick; it stays loaded across policy updates, a refresh replaces it
//! only when the new file opens and verifies, and after a change of source the database in use
//! keeps serving until the new one loads.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gatewarden_glue::host;
use gatewarden_glue::remote::{self, RemoteResource, TICK_LOADED, TICK_LOADING};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_ip_geo_policy::{GeoDb, IpGeoPolicy, IpGeoReason, GEO_DB};
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts};

const FILTER: &str = IpGeoPolicy::NAME;

/// Opens a published database: the value and its description for the log line.
fn open(bytes: &[u8]) -> Result<(GeoDb, String), String> {
    let db = GeoDb::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    let about = format!("({}, built {})", db.database_type(), db.build_epoch());
    Ok((db, about))
}

thread_local! {
    /// The database requests decide with: the newest policy's source's copy in this VM (the
    /// remote-resource registry keeps loaded copies across policy updates).
    static DB: RefCell<Option<Rc<GeoDb>>> = const { RefCell::new(None) };
}

fn set_db(db: Option<Rc<GeoDb>>) {
    DB.with(|d| *d.borrow_mut() = db);
}

struct IpGeo {
    geo: Option<RemoteResource>,
}

impl Enforcer for IpGeo {
    type Policy = IpGeoPolicy;
    type PolicyState = ();

    fn reasons() -> Vec<&'static str> {
        IpGeoReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        remote::counter_names(GEO_DB.name)
    }

    fn new(_root_context_id: u32) -> Self {
        Self { geo: None }
    }

    fn on_policy(&mut self, policy: &IpGeoPolicy) -> Option<Duration> {
        let Some(source) = policy.geo_database() else {
            set_db(None);
            return None;
        };
        let geo = RemoteResource::new(FILTER, source.clone());
        // A new source not loaded in this VM yet: the database in use keeps serving until the
        // new one loads, so a source change fails no request.
        if let Some(db) = geo.current::<GeoDb>() {
            set_db(Some(db));
        }
        self.geo = Some(geo);
        Some(TICK_LOADING)
    }

    fn on_tick(&mut self, _policy: &IpGeoPolicy) -> Option<Duration> {
        let geo = self.geo.as_mut()?;
        if let Some(db) = geo.load_published(open) {
            set_db(Some(db));
        }
        geo.tick(host::now_ms());
        let loaded = DB.with(|d| d.borrow().is_some());
        Some(if loaded { TICK_LOADED } else { TICK_LOADING })
    }

    fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        if let Some(geo) = &mut self.geo {
            if let Some(Some(db)) = geo.on_response(token, body_size, host::now_ms(), open) {
                set_db(Some(db));
            }
        }
    }

    fn header_needs(policy: &IpGeoPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(_policy: &IpGeoPolicy) {}

    fn decide(policy: &IpGeoPolicy, _state: &(), facts: &RequestFacts<'_>) -> Outcome {
        gatewarden_ip_geo_policy::adapter::to_outcome(DB.with(|d| policy.decide(facts, d.borrow().as_deref())))
    }
}

export_filter!(IpGeo);
