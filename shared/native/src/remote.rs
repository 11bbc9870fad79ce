//! Remote resources (geo database, remote JWKS, fetched OpenAPI documents) in the native module:
//! **one copy per process**, fetched on Envoy's main thread by a filter configuration, read by
//! every worker without copying it.
//!
//! ```text
//! Resource (process registry, by kind + upstream + authority + path)
//!   value: the parsed copy (Arc)    generation: bumped on every new copy    meta: the schedule
//! Fetcher (one per configuration, main thread): ticks every TICK from a small thread that
//!   posts to the configuration's scheduler; a due resource is fetched with a configuration
//!   callout; a copy that parses replaces the value, one that does not is refused (last good kept)
//! Local<T> (per worker, in the filter's policy state): re-reads the value only when the
//!   generation moved (one relaxed atomic load per request otherwise)
//! ```
//! The schedule is the one the Wasm glue uses ([`RefreshSchedule`] over a [`SharedMeta`] record),
//! here in process memory: refresh after `refresh_seconds`, retry after `retry_seconds`, a fetch
//! brought forward by a request (an unknown JWT `kid`) at most once per `early_refetch_seconds`,
//! and a lease so that two configurations of the same resource (an update in progress) do not
//! both fetch it. A configuration's update keeps the resource (same origin: same copy), so a
//! policy push never waits for a fetch.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_glue::remote::ResourceEvent;
use gatewarden_policy::remote::{RemoteSource, SharedMeta};

use crate::envoy::{self, ConfigHandle, Level, Scheduler};

/// How often a configuration with resources looks at their schedules.
pub const TICK: Duration = Duration::from_millis(250);

/// A parsed copy, shared by every worker.
pub type Parsed = Arc<dyn Any + Send + Sync>;
/// Parses a fetched body: the value and a description for the log line, or why it is refused.
pub type Parser = Arc<dyn Fn(&[u8]) -> Result<(Parsed, String), String> + Send + Sync>;

/// One remote resource of the process.
pub struct Resource {
    label: &'static str,
    upstream: String,
    value: RwLock<Option<Parsed>>,
    generation: AtomicU64,
    meta: Mutex<Option<SharedMeta>>,
    wanted: AtomicBool,
}

impl Resource {
    /// Bumped on every new copy (0: none loaded yet).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current copy, if one is loaded and is a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let value = self.value.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        value.downcast::<T>().ok()
    }

    /// Asks for the next fetch to start early (a request needs a newer copy); the main thread
    /// decides on its next tick, rate-limited by the source's `early_refetch_seconds`.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }
}

type Key = (&'static str, String, String, String);

fn registry() -> &'static Mutex<HashMap<Key, Weak<Resource>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<Key, Weak<Resource>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process's resource of `source` (same kind and origin: the same copy), created if new.
pub fn resource(source: &RemoteSource) -> Arc<Resource> {
    let key = (source.kind, source.upstream.clone(), source.authority.clone(), source.path.clone());
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, r| r.strong_count() > 0);
    if let Some(r) = map.get(&key).and_then(Weak::upgrade) {
        return r;
    }
    let r = Arc::new(Resource {
        label: source.label,
        upstream: source.upstream.clone(),
        value: RwLock::new(None),
        generation: AtomicU64::new(0),
        meta: Mutex::new(None),
        wanted: AtomicBool::new(false),
    });
    map.insert(key, Arc::downgrade(&r));
    r
}

/// A worker's view of a resource: the current copy, re-read only when a new one was loaded.
pub struct Local<T> {
    resource: Arc<Resource>,
    seen: u64,
    value: Option<Arc<T>>,
}

impl<T: Any + Send + Sync> Local<T> {
    pub fn new(resource: Arc<Resource>) -> Self {
        Self { resource, seen: 0, value: None }
    }

    /// The copy to decide with (None while none is loaded). `changed` is set when it moved.
    pub fn current(&mut self) -> (Option<&Arc<T>>, bool) {
        let g = self.resource.generation();
        let changed = g != self.seen;
        if changed {
            self.value = self.resource.get::<T>();
            self.seen = g;
        }
        (self.value.as_ref(), changed)
    }

    pub fn resource(&self) -> &Arc<Resource> {
        &self.resource
    }
}

/// A resource a configuration fetches: where from, and how to parse it.
pub struct Source {
    pub source: RemoteSource,
    pub parse: Parser,
}

struct Fetch {
    resource: Arc<Resource>,
    source: RemoteSource,
    parse: Parser,
    pending: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// A lease owner id per configuration.
fn next_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A configuration's fetches and their ticker; counting goes through `count`.
pub struct Fetcher {
    filter: &'static str,
    owner: u64,
    fetches: Mutex<Vec<Fetch>>,
    ticker: Option<Ticker>,
}

/// Posts a tick to the configuration's scheduler every [`TICK`] from a small thread, until the
/// configuration is destroyed: then the scheduler is deleted under the lock the thread uses, the
/// thread is woken and joined (so no thread of this module outlives the configurations that use
/// it, even if Envoy unloads the module after the last one).
struct Ticker {
    shared: Arc<(Mutex<Option<Scheduler>>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(config: ConfigHandle) -> Option<Self> {
        let shared = Arc::new((Mutex::new(Some(config.scheduler()?)), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("gatewarden-fetch".into()).spawn(move || {
            let (lock, wake) = &*theirs;
            let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                guard = match wake.wait_timeout(guard, TICK) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
                match guard.as_ref() {
                    Some(s) => s.commit(0),
                    None => return,
                }
            }
        });
        match spawned {
            Ok(thread) => Some(Self { shared, thread: Some(thread) }),
            Err(e) => {
                envoy::log(Level::Error, format_args!("gatewarden: cannot start the fetch ticker thread: {e}"));
                None
            }
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        // Deleting the scheduler under the lock: the thread never commits to a deleted one.
        let _ = lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Fetcher {
    /// A configuration destroyed with a fetch in flight (Envoy cancels its callouts): the lease is
    /// given back, so the configuration that replaced it fetches on its next tick instead of
    /// waiting for the lease to expire.
    fn drop(&mut self) {
        let fetches = self.fetches.get_mut().unwrap_or_else(|p| p.into_inner());
        for f in fetches.iter().filter(|f| f.pending.is_some()) {
            let mut meta = f.resource.meta.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = meta.as_mut().filter(|m| m.owner == self.owner) {
                m.owner = 0;
                m.next_attempt_ms = 0;
            }
        }
    }
}

impl Fetcher {
    /// The fetches of a new configuration (none: no ticker, nothing to do).
    pub fn new(filter: &'static str, config: ConfigHandle, sources: Vec<Source>) -> Self {
        let fetches: Vec<Fetch> =
            sources.into_iter().map(|s| Fetch { resource: resource(&s.source), source: s.source, parse: s.parse, pending: None }).collect();
        let ticker = if fetches.is_empty() { None } else { Ticker::start(config) };
        Self { filter, owner: next_owner(), fetches: Mutex::new(fetches), ticker }
    }

    pub fn is_empty(&self) -> bool {
        self.ticker.is_none()
    }

    /// Main thread: starts the fetches that are due (or wanted early and allowed).
    pub fn tick(&self, config: ConfigHandle, count: &dyn Fn(&str)) {
        let now = now_ms();
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        for f in fetches.iter_mut() {
            if f.pending.is_some() {
                continue;
            }
            let schedule = &f.source.schedule;
            let mut meta = f.resource.meta.lock().unwrap_or_else(|p| p.into_inner());
            if f.resource.wanted.swap(false, Ordering::Relaxed) {
                let min = u64::try_from(f.source.early_refetch.as_millis()).unwrap_or(u64::MAX);
                if let Some(early) = schedule.bring_forward(meta.as_ref(), now, min) {
                    *meta = Some(early);
                    count(&format!("{}_{}", f.source.kind, ResourceEvent::FetchEarly.as_str()));
                    envoy::log(
                        Level::Info,
                        format_args!("gatewarden {}: {} refetch from {} brought forward", self.filter, f.source.kind, f.source.upstream),
                    );
                }
            }
            // A lease of this configuration with nothing pending was lost (cannot happen while
            // it lives, but costs nothing to allow); another's lease blocks until it expires.
            let ours = meta.as_ref().is_some_and(|m| m.owner == self.owner);
            if !ours && !schedule.is_due(meta.as_ref(), now) {
                continue;
            }
            let headers = vec![
                (":method".to_owned(), "GET".to_owned()),
                (":path".to_owned(), f.source.path.clone()),
                (":authority".to_owned(), f.source.authority.clone()),
            ];
            let timeout = u64::try_from(f.source.timeout.as_millis()).unwrap_or(u64::MAX);
            match config.http_callout(&f.source.upstream, &headers, b"", timeout) {
                Ok(id) => {
                    *meta = Some(schedule.lease(meta.as_ref(), now, self.owner));
                    f.pending = Some(id);
                    count(&format!("{}_{}", f.source.kind, ResourceEvent::FetchStarted.as_str()));
                }
                Err(status) => {
                    *meta = Some(schedule.failed(meta.as_ref(), now));
                    count(&format!("{}_{}", f.source.kind, ResourceEvent::FetchFailed.as_str()));
                    envoy::log(
                        Level::Warn,
                        format_args!(
                            "gatewarden {}: fetching {} from {} failed: cannot start the fetch (Envoy refused it, status {status})",
                            self.filter, f.source.kind, f.source.upstream
                        ),
                    );
                }
            }
        }
    }

    /// Main thread: a configuration callout finished. False when it is not one of ours.
    pub fn on_response(&self, id: u64, ok: bool, headers: &[(String, String)], body: &[u8], count: &dyn Fn(&str)) -> bool {
        let now = now_ms();
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = fetches.iter_mut().find(|f| f.pending == Some(id)) else { return false };
        f.pending = None;
        let status = headers.iter().find(|(k, _)| k == ":status").map(|(_, v)| v.as_str()).unwrap_or("");
        let outcome = if !ok || status.is_empty() {
            Err("no response (connection failure or timeout)".to_owned())
        } else if status != "200" {
            Err(format!("status {status}"))
        } else if body.len() > f.source.max_bytes {
            Err(format!("response of {} bytes exceeds max_bytes {}", body.len(), f.source.max_bytes))
        } else {
            (f.parse)(body).map_err(|why| format!("invalid content: {why}"))
        };
        let mut meta = f.resource.meta.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok((value, about)) => {
                *f.resource.value.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
                let generation = f.resource.generation.fetch_add(1, Ordering::AcqRel).saturating_add(1);
                *meta = Some(f.source.schedule.succeeded(meta.as_ref(), now));
                count(&format!("{}_{}", f.source.kind, ResourceEvent::FetchSucceeded.as_str()));
                count(&format!("{}_{}", f.source.kind, ResourceEvent::Loaded.as_str()));
                // The Wasm glue's two lines (fetched once; loaded per VM, here once per process).
                envoy::log(
                    Level::Info,
                    format_args!("gatewarden {}: {} fetched from {} ({} bytes)", self.filter, f.source.kind, f.source.upstream, body.len()),
                );
                envoy::log(
                    Level::Info,
                    format_args!("gatewarden {}: {} generation {generation} loaded {about}", self.filter, f.resource.label),
                );
            }
            Err(why) => {
                *meta = Some(f.source.schedule.failed(meta.as_ref(), now));
                count(&format!("{}_{}", f.source.kind, ResourceEvent::FetchFailed.as_str()));
                envoy::log(
                    Level::Warn,
                    format_args!("gatewarden {}: fetching {} from {} failed: {why}", self.filter, f.source.kind, f.resource.upstream),
                );
            }
        }
        true
    }
}
