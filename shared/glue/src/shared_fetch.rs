//! `SharedFetch`: one HTTP fetch of a resource (geo database, JWKS) serves every worker.
//!
//! The schedule is the pure [`RefreshSchedule`]; this module does the host calls: shared data
//! under `gatewarden/<filter>/<resource>/<hash of source>/{meta,data}` (the `gatewarden/` prefix
//! also names Kong's shm_kv zone), the callout, and status handling. Kong's CAS 0 means "only if
//! absent", Envoy's means "overwrite", so every overwrite passes the CAS it just read.

use std::cell::OnceCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use gatewarden_policy::refresh::{RefreshSchedule, SharedMeta};

use crate::host::{self, HostError, Level};
use crate::metrics;

/// Where a resource is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSource {
    /// Envoy cluster name, or `host:port` on Kong.
    pub upstream: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// Tick period of a filter while a shared resource is not loaded yet: fast, so the first load
/// follows the fetch closely.
pub const TICK_LOADING: Duration = Duration::from_millis(200);
/// Tick period once loaded: a tick reads one shared-data record per resource.
pub const TICK_LOADED: Duration = Duration::from_secs(1);

thread_local! {
    static VM_OWNER: OnceCell<u64> = const { OnceCell::new() };
}

/// This VM's fetch-owner id: random (WASI random through `RandomState`), fixed for the VM's
/// life, so a root context created by a policy update recognises a lease its predecessor took.
pub fn vm_owner_id() -> u64 {
    VM_OWNER.with(|o| *o.get_or_init(|| RandomState::new().hash_one(host::now_ms()).max(1)))
}

/// Counter suffixes a `SharedFetch` named `name` uses: define them at start.
pub fn counter_names(name: &str) -> Vec<String> {
    ["fetch_started", "fetch_succeeded", "fetch_failed", "fetch_early", "loaded", "load_failed"]
        .iter()
        .map(|s| format!("{name}_{s}"))
        .collect()
}

/// The fetcher of one resource in one worker.
#[derive(Debug)]
pub struct SharedFetch {
    filter: &'static str,
    name: &'static str,
    meta_key: String,
    data_key: String,
    source: FetchSource,
    schedule: RefreshSchedule,
    owner: u64,
    pending: Option<u32>,
}

impl SharedFetch {
    /// A fetcher for one root context; the lease owner is this VM ([`vm_owner_id`]).
    pub fn new(filter: &'static str, name: &'static str, source: FetchSource, schedule: RefreshSchedule) -> Self {
        let id = fnv1a(format!("{}\n{}\n{}", source.upstream, source.authority, source.path).as_bytes());
        let base = format!("gatewarden/{filter}/{name}/{id:016x}");
        Self {
            filter,
            name,
            meta_key: format!("{base}/meta"),
            data_key: format!("{base}/data"),
            source,
            schedule,
            owner: vm_owner_id(),
            pending: None,
        }
    }

    pub fn source(&self) -> &FetchSource {
        &self.source
    }

    fn count(&self, what: &str) {
        metrics::count(self.filter, &format!("{}_{what}", self.name));
    }

    fn read_meta(&self) -> Result<(Option<SharedMeta>, u32), HostError> {
        Ok(match host::get_shared_data(&self.meta_key)? {
            Some((bytes, cas)) => (SharedMeta::decode(&bytes), cas),
            None => (None, 0),
        })
    }

    /// The published generation and bytes, if a generation other than `have` is published.
    pub fn published_since(&self, have: Option<u64>) -> Option<(u64, Vec<u8>)> {
        let meta = self.read_meta().ok()?.0?;
        if meta.generation == 0 || Some(meta.generation) == have {
            return None;
        }
        let (bytes, _) = host::get_shared_data(&self.data_key).ok()??;
        Some((meta.generation, bytes))
    }

    /// On each tick: start a fetch if one is due and this worker wins the lease.
    pub fn tick(&mut self, now_ms: u64) {
        if self.pending.is_some() {
            return;
        }
        let Ok((meta, cas)) = self.read_meta() else { return };
        // A lease held by this VM while this root context has nothing pending: the root context
        // that took it was replaced by a policy update and its response will not reach us.
        let orphaned = meta.as_ref().is_some_and(|m| m.owner == self.owner);
        if !orphaned && !self.schedule.is_due(meta.as_ref(), now_ms) {
            return;
        }
        let lease = self.schedule.lease(meta.as_ref(), now_ms, self.owner);
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
                self.count("fetch_started");
            }
            Err(e) => self.fail(now_ms, &format!("cannot start the fetch from {:?} (status {})", self.source.upstream, e.0)),
        }
    }

    /// Asks for the next fetch to start now (on the next tick of any worker) because a request
    /// needs a newer resource, e.g. a JWT `kid` the loaded JWKS lacks. Shared by all workers and
    /// rate-limited by [`RefreshSchedule::bring_forward`]: at most one such fetch per
    /// `min_interval`. Returns whether the fetch was brought forward (counted `<name>_fetch_early`).
    pub fn bring_forward(&mut self, now_ms: u64, min_interval: Duration) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let Ok((meta, cas)) = self.read_meta() else { return false };
        let min_ms = u64::try_from(min_interval.as_millis()).unwrap_or(u64::MAX);
        let Some(early) = self.schedule.bring_forward(meta.as_ref(), now_ms, min_ms) else { return false };
        // A record exists (bring_forward needs one), so `cas` is its CAS on both hosts; a
        // mismatch means another worker changed it first.
        if host::set_shared_data(&self.meta_key, &early.encode(), cas).is_err() {
            return false;
        }
        self.count("fetch_early");
        host::log(Level::Info, &format!("gatewarden {}: {} refetch from {} brought forward", self.filter, self.name, self.source.upstream));
        true
    }

    /// Handles a callout response if `token` is this fetcher's. `validate` checks the bytes
    /// (e.g. opens the database); only valid bytes are published. Returns whether it was ours.
    pub fn on_response(
        &mut self,
        token: u32,
        body_size: usize,
        now_ms: u64,
        validate: impl FnOnce(&[u8]) -> Result<(), String>,
    ) -> bool {
        if self.pending != Some(token) {
            return false;
        }
        self.pending = None;
        let headers = host::http_call_response_headers().unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").map(|(_, v)| v.as_str()).unwrap_or("");
        if status != "200" {
            let why = if status.is_empty() { "no response (connection failure or timeout)".to_owned() } else { format!("status {status}") };
            self.fail(now_ms, &why);
            return true;
        }
        if body_size > self.source.max_bytes {
            self.fail(now_ms, &format!("response of {body_size} bytes exceeds max_bytes {}", self.source.max_bytes));
            return true;
        }
        let body = match host::http_call_response_body(body_size) {
            Ok(b) => b,
            Err(e) => {
                self.fail(now_ms, &format!("cannot read the response body (status {})", e.0));
                return true;
            }
        };
        if let Err(why) = validate(&body) {
            self.fail(now_ms, &format!("invalid content: {why}"));
            return true;
        }
        if let Err(e) = self.publish(&body, now_ms) {
            self.fail(now_ms, &format!("cannot store in shared data (status {})", e.0));
            return true;
        }
        self.count("fetch_succeeded");
        host::log(Level::Info, &format!("gatewarden {}: {} fetched from {} ({} bytes)", self.filter, self.name, self.source.upstream, body.len()));
        true
    }

    fn publish(&self, body: &[u8], now_ms: u64) -> Result<(), HostError> {
        overwrite(&self.data_key, body)?;
        let (meta, _) = self.read_meta()?;
        overwrite(&self.meta_key, &self.schedule.succeeded(meta.as_ref(), now_ms).encode())
    }

    fn fail(&mut self, now_ms: u64, why: &str) {
        self.count("fetch_failed");
        host::log(Level::Warn, &format!("gatewarden {}: fetching {} from {} failed: {why}", self.filter, self.name, self.source.upstream));
        if let Ok((meta, _)) = self.read_meta() {
            let _ = overwrite(&self.meta_key, &self.schedule.failed(meta.as_ref(), now_ms).encode());
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
