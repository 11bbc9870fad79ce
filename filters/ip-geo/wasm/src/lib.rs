//! Gatewarden IP and geo filtering as a Proxy-Wasm module: glue only. The policy lives in
//! `gatewarden_ip_geo_policy`; the host adapter in `gatewarden_glue`.
//!
//! The country database is fetched over HTTP (`geo_database.cluster`) by one worker after the
//! policy is accepted, published in shared data, and loaded by every worker on its next tick;
//! it stays loaded across policy updates (a per-VM static), and a refresh replaces it only when
//! the new file opens and verifies.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gatewarden_glue::host::{self, Level};
use gatewarden_glue::shared_fetch::{self, FetchSource, SharedFetch, TICK_LOADED, TICK_LOADING};
use gatewarden_glue::{export_filter, metrics, Enforcer, Evaluation};
use gatewarden_ip_geo_policy::{GeoDb, IpGeoPolicy, IpGeoReason};
use gatewarden_policy::refresh::RefreshSchedule;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts, Verdict};

const FILTER: &str = IpGeoPolicy::NAME;
const RESOURCE: &str = "geo_db";

struct LoadedDb {
    /// The shared-data key of the source it came from.
    source: FetchSource,
    generation: u64,
    db: Rc<GeoDb>,
}

thread_local! {
    // Per VM: survives policy updates (which create a new root context in the same VM).
    static GEO: RefCell<Option<LoadedDb>> = const { RefCell::new(None) };
    /// The last published generation this VM refused, by source: not parsed (nor counted, nor
    /// logged) again on every tick; a newer generation is tried.
    static REFUSED: RefCell<Option<(FetchSource, u64)>> = const { RefCell::new(None) };
}

struct IpGeo {
    fetch: Option<SharedFetch>,
}

impl IpGeo {
    /// Loads a newly published database into this worker.
    fn load_published(&mut self) -> bool {
        let Some(fetch) = &self.fetch else { return false };
        let loaded = GEO.with(|g| {
            g.borrow().as_ref().filter(|l| &l.source == fetch.source()).map(|l| l.generation)
        });
        let refused = REFUSED.with(|r| r.borrow().as_ref().filter(|(s, _)| s == fetch.source()).map(|(_, g)| *g));
        let have = loaded.max(refused);
        if let Some((generation, bytes)) = fetch.published_since(have) {
            match GeoDb::from_bytes(bytes) {
                Ok(db) => {
                    host::log(
                        Level::Info,
                        &format!("gatewarden {FILTER}: geo database generation {generation} loaded ({}, built {})", db.database_type(), db.build_epoch()),
                    );
                    metrics::count(FILTER, "geo_db_loaded");
                    let loaded = LoadedDb { source: fetch.source().clone(), generation, db: Rc::new(db) };
                    GEO.with(|g| *g.borrow_mut() = Some(loaded));
                }
                Err(e) => {
                    REFUSED.with(|r| *r.borrow_mut() = Some((fetch.source().clone(), generation)));
                    metrics::count(FILTER, "geo_db_load_failed");
                    host::log(Level::Error, &format!("gatewarden {FILTER}: published geo database refused: {e}"));
                }
            }
        }
        GEO.with(|g| g.borrow().as_ref().is_some_and(|l| &l.source == fetch.source()))
    }
}

impl Enforcer for IpGeo {
    type Policy = IpGeoPolicy;
    type PolicyState = ();

    fn reasons() -> Vec<&'static str> {
        IpGeoReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        shared_fetch::counter_names(RESOURCE)
    }

    fn new(_root_context_id: u32) -> Self {
        Self { fetch: None }
    }

    fn on_policy(&mut self, policy: &IpGeoPolicy) -> Option<Duration> {
        let src = policy.geo_database()?;
        let source = FetchSource {
            upstream: src.cluster.clone(),
            authority: src.authority.clone().unwrap_or_else(|| src.cluster.clone()),
            path: src.path.clone(),
            timeout: Duration::from_millis(src.timeout_ms),
            max_bytes: usize::try_from(src.max_bytes).unwrap_or(usize::MAX),
        };
        let schedule = RefreshSchedule {
            refresh_ms: src.refresh_seconds.saturating_mul(1000),
            retry_ms: src.retry_seconds.saturating_mul(1000),
            lease_ms: src.timeout_ms.saturating_add(2000),
        };
        self.fetch = Some(SharedFetch::new(FILTER, RESOURCE, source, schedule));
        Some(TICK_LOADING)
    }

    fn on_tick(&mut self, _policy: &IpGeoPolicy) -> Option<Duration> {
        let loaded = self.load_published();
        if let Some(fetch) = &mut self.fetch {
            fetch.tick(host::now_ms());
        }
        Some(if loaded { TICK_LOADED } else { TICK_LOADING })
    }

    fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        if let Some(fetch) = &mut self.fetch {
            let validate = |bytes: &[u8]| GeoDb::from_bytes(bytes.to_vec()).map(|_| ()).map_err(|e| e.to_string());
            if fetch.on_response(token, body_size, host::now_ms(), validate) {
                self.load_published();
            }
        }
    }

    fn header_needs(policy: &IpGeoPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(_policy: &IpGeoPolicy) {}

    fn evaluate(policy: &IpGeoPolicy, _state: &(), facts: &RequestFacts<'_>) -> Evaluation {
        let out = GEO.with(|g| {
            let g = g.borrow();
            policy.decide(facts, g.as_ref().map(|l| l.db.as_ref()))
        });
        // The detail is for the denial log line only: no formatting on the allow path.
        let detail = match (&out.decision.verdict, out.country) {
            (Verdict::Deny(_), Some(cc)) => format!("country={cc}"),
            _ => String::new(),
        };
        Evaluation::new(out.decision, out.client, detail)
    }
}

export_filter!(IpGeo);
