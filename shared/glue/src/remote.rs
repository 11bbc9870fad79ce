//! [`RemoteResource`]: a resource fetched from an upstream (geo database, JWKS) for every worker of
//! the process, described by the policy core's one [`RemoteSource`] type.
//!
//! What it owns, so that a filter does not: **fetch once per process** (a lease in shared data:
//! one worker fetches, see `gatewarden_policy::remote::RefreshSchedule`), **publication** of valid bytes in shared data
//! under `gatewarden/<filter>/<resource>/<hash of origin>/{meta,data}` (the `gatewarden/` prefix
//! also names Kong's shm_kv zone), **per-VM load** of the published copy on the next tick, and
//! **generations**: a VM parses each published generation once — a copy that does not parse is
//! refused (counted `<resource>_load_failed`, logged once) and the last good one keeps serving.
//! Loaded values are kept per VM by origin in a registry that outlives root contexts, so a policy
//! update with the same source keeps the loaded copy, and two users of one origin share it.
//! Kong's CAS 0 means "only if absent", Envoy's means "overwrite", so every overwrite passes the
//! CAS it just read.

use std::any::Any;
use std::cell::{OnceCell, RefCell};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

use gatewarden_policy::remote::{RemoteSource, SharedMeta};

use crate::fasthash::FastMap;
use crate::host::{self, HostError, Level};
use crate::metrics;

/// Tick period of a filter while a shared resource is not loaded yet: fast, so the first load
/// follows the fetch closely.
pub const TICK_LOADING: Duration = Duration::from_millis(200);
/// Tick period once loaded: a tick reads one shared-data record per resource.
pub const TICK_LOADED: Duration = Duration::from_secs(1);

/// What this VM took from shared data for one origin (by data key): survives root contexts.
struct Seen {
    /// The last generation parsed (loaded or refused): not parsed again.
    generation: u64,
    /// The last good value, if any.
    value: Option<Rc<dyn Any>>,
}

thread_local! {
    static VM_OWNER: OnceCell<u64> = const { OnceCell::new() };
    static SEEN: RefCell<FastMap<String, Seen>> = RefCell::new(FastMap::default());
}

/// This VM's fetch-owner id: random (WASI random through `RandomState`), fixed for the VM's
/// life, so a root context created by a policy update recognises a lease its predecessor took.
pub fn vm_owner_id() -> u64 {
    VM_OWNER.with(|o| *o.get_or_init(|| RandomState::new().hash_one(host::now_ms()).max(1)))
}

/// What happens to a remote resource, counted as `gatewarden_<filter>_<resource>_<event>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceEvent {
    FetchStarted,
    FetchSucceeded,
    FetchFailed,
    FetchEarly,
    Loaded,
    LoadFailed,
}

impl ResourceEvent {
    pub const ALL: [ResourceEvent; 6] =
        [Self::FetchStarted, Self::FetchSucceeded, Self::FetchFailed, Self::FetchEarly, Self::Loaded, Self::LoadFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FetchStarted => "fetch_started",
            Self::FetchSucceeded => "fetch_succeeded",
            Self::FetchFailed => "fetch_failed",
            Self::FetchEarly => "fetch_early",
            Self::Loaded => "loaded",
            Self::LoadFailed => "load_failed",
        }
    }
}

/// The counters of a resource kind named `name` (`geo_db`, `jwks`): define them at start.
pub fn counter_names(name: &str) -> Vec<String> {
    ResourceEvent::ALL.iter().map(|e| format!("{name}_{}", e.as_str())).collect()
}

/// One remote resource as seen by one root context of one worker.
#[derive(Debug)]
pub struct RemoteResource {
    filter: &'static str,
    meta_key: String,
    data_key: String,
    source: RemoteSource,
    /// Who uses it, for log lines (JWT: ` of idp,partner`); empty by default.
    subject: String,
    owner: u64,
    pending: Option<u32>,
}

impl RemoteResource {
    /// The resource `source` of filter `filter`; the lease owner is this VM ([`vm_owner_id`]).
    pub fn new(filter: &'static str, source: RemoteSource) -> Self {
        let id = fnv1a(format!("{}\n{}\n{}", source.upstream, source.authority, source.path).as_bytes());
        let base = format!("gatewarden/{filter}/{}/{id:016x}", source.kind);
        Self {
            filter,
            meta_key: format!("{base}/meta"),
            data_key: format!("{base}/data"),
            source,
            subject: String::new(),
            owner: vm_owner_id(),
            pending: None,
        }
    }

    /// Names who uses the resource in its log lines (`published JWKS of idp refused`).
    pub fn set_subject(&mut self, subject: String) {
        self.subject = subject;
    }

    pub fn source(&self) -> &RemoteSource {
        &self.source
    }

    fn count(&self, event: ResourceEvent) {
        metrics::count_named(self.filter, &format!("{}_{}", self.source.kind, event.as_str()));
    }

    fn read_meta(&self) -> Result<(Option<SharedMeta>, u32), HostError> {
        Ok(match host::get_shared_data(&self.meta_key)? {
            Some((bytes, cas)) => (SharedMeta::decode(&bytes), cas),
            None => (None, 0),
        })
    }

    /// The value this VM has loaded from this origin (by any root context), if any.
    pub fn current<T: 'static>(&self) -> Option<Rc<T>> {
        SEEN.with(|s| s.borrow().get(&self.data_key).and_then(|e| e.value.clone())).and_then(|v| v.downcast::<T>().ok())
    }

    /// Loads a newly published generation into this VM: `parse` turns the bytes into the value
    /// and what the log line says after `loaded` (e.g. `(GeoLite2-Country, built …)`). A generation is parsed once: a refused one is
    /// counted and logged once and the last good value stays. Returns the value loaded now, if
    /// a new generation was loaded.
    pub fn load_published<T: 'static>(&self, parse: impl FnOnce(&[u8]) -> Result<(T, String), String>) -> Option<Rc<T>> {
        let have = SEEN.with(|s| s.borrow().get(&self.data_key).map(|e| e.generation));
        let meta = self.read_meta().ok()?.0?;
        if meta.generation == 0 || Some(meta.generation) == have {
            return None;
        }
        let (bytes, _) = host::get_shared_data(&self.data_key).ok()??;
        self.install(meta.generation, parse(&bytes))
    }

    /// Records generation `generation` as seen, with its value when it parsed.
    fn install<T: 'static>(&self, generation: u64, parsed: Result<(T, String), String>) -> Option<Rc<T>> {
        let (filter, label, subject) = (self.filter, self.source.label, &self.subject);
        match parsed {
            Ok((value, about)) => {
                host::log(Level::Info, format_args!("gatewarden {filter}: {label} generation {generation} loaded {about}"));
                self.count(ResourceEvent::Loaded);
                let value = Rc::new(value);
                let any: Rc<dyn Any> = value.clone();
                SEEN.with(|s| s.borrow_mut().insert(self.data_key.clone(), Seen { generation, value: Some(any) }));
                Some(value)
            }
            Err(why) => {
                self.count(ResourceEvent::LoadFailed);
                host::log(
                    Level::Error,
                    format_args!(
                        "gatewarden {filter}: published {label}{subject} refused (generation {generation}), the previous copy stays: {why}"
                    ),
                );
                SEEN.with(|s| {
                    let mut s = s.borrow_mut();
                    let value = s.get(&self.data_key).and_then(|e| e.value.clone());
                    s.insert(self.data_key.clone(), Seen { generation, value });
                });
                None
            }
        }
    }

    /// On each tick: start a fetch if one is due and this worker wins the lease.
    pub fn tick(&mut self, now_ms: u64) {
        if self.pending.is_some() {
            return;
        }
        let Ok((meta, cas)) = self.read_meta() else { return };
        let schedule = &self.source.schedule;
        // A lease held by this VM while this root context has nothing pending: the root context
        // that took it was replaced by a policy update and its response will not reach us.
        let orphaned = meta.as_ref().is_some_and(|m| m.owner == self.owner);
        if !orphaned && !schedule.is_due(meta.as_ref(), now_ms) {
            return;
        }
        let lease = schedule.lease(meta.as_ref(), now_ms, self.owner);
        if host::set_shared_data(&self.meta_key, &lease.encode(), cas).is_err() {
            return; // another worker changed it first (CAS mismatch): it fetches
        }
        // Envoy's CAS 0 overwrites, so two first-time writers can both succeed: read back and
        // let the last writer win.
        match self.read_meta() {
            Ok((Some(m), _)) if m.owner == self.owner => {}
            _ => return,
        }
        let headers = [(":method", "GET"), (":path", self.source.path.as_str()), (":authority", self.source.authority.as_str())];
        match host::dispatch_http_call(&self.source.upstream, &headers, self.source.timeout) {
            Ok(token) => {
                self.pending = Some(token);
                self.count(ResourceEvent::FetchStarted);
            }
            Err(e) => self.fail(now_ms, &format!("cannot start the fetch from {:?} (status {})", self.source.upstream, e.0)),
        }
    }

    /// Asks for the next fetch to start now (on the next tick of any worker) because a request
    /// needs a newer copy, e.g. a JWT `kid` the loaded JWKS lacks. Shared by all workers and
    /// rate-limited by `RefreshSchedule::bring_forward`: at most one such fetch per
    /// `early_refetch` of the source. Returns whether the fetch was brought forward (counted
    /// `<resource>_fetch_early`).
    pub fn bring_forward(&mut self, now_ms: u64) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let Ok((meta, cas)) = self.read_meta() else { return false };
        let min_ms = u64::try_from(self.source.early_refetch.as_millis()).unwrap_or(u64::MAX);
        let Some(early) = self.source.schedule.bring_forward(meta.as_ref(), now_ms, min_ms) else { return false };
        // A record exists (bring_forward needs one), so `cas` is its CAS on both hosts; a
        // mismatch means another worker changed it first.
        if host::set_shared_data(&self.meta_key, &early.encode(), cas).is_err() {
            return false;
        }
        self.count(ResourceEvent::FetchEarly);
        host::log(
            Level::Info,
            format_args!("gatewarden {}: {} refetch from {} brought forward", self.filter, self.source.kind, self.source.upstream),
        );
        true
    }

    /// Handles a callout response if `token` is this resource's: checks status and size,
    /// `parse`s the body (only a body that parses is published), publishes it for every worker
    /// and loads it into this VM. Returns `None` when the token is not ours, else
    /// `Some(value loaded now)`.
    pub fn on_response<T: 'static>(
        &mut self,
        token: u32,
        body_size: usize,
        now_ms: u64,
        parse: impl FnOnce(&[u8]) -> Result<(T, String), String>,
    ) -> Option<Option<Rc<T>>> {
        if self.pending != Some(token) {
            return None;
        }
        self.pending = None;
        let headers = host::http_call_response_headers().unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").map(|(_, v)| v.as_str()).unwrap_or("");
        if status != "200" {
            let why = if status.is_empty() { "no response (connection failure or timeout)".to_owned() } else { format!("status {status}") };
            self.fail(now_ms, &why);
            return Some(None);
        }
        if body_size > self.source.max_bytes {
            self.fail(now_ms, &format!("response of {body_size} bytes exceeds max_bytes {}", self.source.max_bytes));
            return Some(None);
        }
        let body = match host::http_call_response_body(body_size) {
            Ok(b) => b,
            Err(e) => {
                self.fail(now_ms, &format!("cannot read the response body (status {})", e.0));
                return Some(None);
            }
        };
        let parsed = match parse(&body) {
            Ok(p) => p,
            Err(why) => {
                self.fail(now_ms, &format!("invalid content: {why}"));
                return Some(None);
            }
        };
        let generation = match self.publish(&body, now_ms) {
            Ok(g) => g,
            Err(e) => {
                self.fail(now_ms, &format!("cannot store in shared data (status {})", e.0));
                return Some(None);
            }
        };
        self.count(ResourceEvent::FetchSucceeded);
        host::log(
            Level::Info,
            format_args!("gatewarden {}: {} fetched from {} ({} bytes)", self.filter, self.source.kind, self.source.upstream, body.len()),
        );
        Some(self.install(generation, Ok(parsed)))
    }

    /// Publishes `body` as the next generation; returns it.
    fn publish(&self, body: &[u8], now_ms: u64) -> Result<u64, HostError> {
        overwrite(&self.data_key, body)?;
        let (meta, _) = self.read_meta()?;
        let next = self.source.schedule.succeeded(meta.as_ref(), now_ms);
        overwrite(&self.meta_key, &next.encode())?;
        Ok(next.generation)
    }

    fn fail(&mut self, now_ms: u64, why: &str) {
        self.count(ResourceEvent::FetchFailed);
        host::log(
            Level::Warn,
            format_args!("gatewarden {}: fetching {} from {} failed: {why}", self.filter, self.source.kind, self.source.upstream),
        );
        if let Ok((meta, _)) = self.read_meta() {
            let _ = overwrite(&self.meta_key, &self.source.schedule.failed(meta.as_ref(), now_ms).encode());
        }
    }
}

/// Writes `key` whatever its current value, on both hosts: pass the CAS just read (0 when
/// absent, which Kong accepts only for an absent key), retrying once if it changed meanwhile.
fn overwrite(key: &str, value: &[u8]) -> Result<(), HostError> {
    let mut last = Err(HostError(host::STATUS_CAS_MISMATCH));
    for _ in 0..2 {
        let cas = host::get_shared_data(key)?.map_or(0, |(_, cas)| cas);
        last = host::set_shared_data(key, value, cas);
        if last.is_ok() {
            break;
        }
    }
    last
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
