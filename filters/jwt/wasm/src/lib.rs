//! Gatewarden JWT authentication as a Proxy-Wasm module: glue only. The policy lives in
//! `gatewarden_jwt_policy`; the host adapter in `gatewarden_glue`.
//!
//! - Every request header is read in one crossing: the policy counts them, finds tokens in
//!   headers, cookies and the query, and strips the headers it sets (a client cannot forge
//!   `x-jwt-payload` or a claim header).
//! - Remote JWKS: one [`SharedFetch`] per distinct source (resource `jwks`), started after the
//!   policy is accepted, refreshed every `cache_duration_seconds`, retried after
//!   `retry_seconds`. One worker fetches, every worker loads the published set on its next tick
//!   into a per-VM [`RemoteKeys`] (a thread_local: it survives policy updates whose source is
//!   unchanged). A set that does not parse is refused and the previous one kept; keys skipped
//!   inside a set are logged with their reason.
//! - A request whose token names a `kid` the loaded set lacks (or that finds no set loaded)
//!   reports `needs_keys`; the next tick brings that provider's fetch forward, at most once per
//!   `unknown_kid_refetch_seconds` across all workers ([`SharedFetch::bring_forward`]).
//! - The verified-token cache is the policy state of the glue ([`Enforcer::PolicyState`]): one
//!   per VM and compiled policy, bounded by `token_cache_entries`, cleared when the key sets'
//!   generation changes.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use gatewarden_glue::host::{self, Level};
use gatewarden_glue::shared_fetch::{self, FetchSource, SharedFetch, TICK_LOADED, TICK_LOADING};
use gatewarden_glue::{export_filter, metrics, Enforcer, Evaluation};
use gatewarden_policy::cidr::parse_address;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_jwt_policy::{
    JwksSet, JwtPolicy, JwtReason, KeyLookup, NoRemoteKeys, RemoteKeys, TokenCache,
};
use gatewarden_policy::refresh::RefreshSchedule;
use gatewarden_policy::{FilterPolicy, RequestFacts, Verdict};

const FILTER: &str = JwtPolicy::NAME;
const RESOURCE: &str = "jwks";

/// What this VM last took from shared data for one provider.
struct Seen {
    provider: String,
    source: FetchSource,
    /// The generation loaded, or refused (a refused generation is not parsed again).
    generation: u64,
}

/// Per-VM state: survives policy updates (which create a new root context in the same VM).
#[derive(Default)]
struct VmKeys {
    keys: RemoteKeys,
    seen: Vec<Seen>,
    /// Providers whose requests needed keys since the last tick (at most one entry each).
    wanted: Vec<Arc<str>>,
}

impl VmKeys {
    fn seen_generation(&self, provider: &str, source: &FetchSource) -> Option<u64> {
        self.seen
            .iter()
            .find(|s| s.provider == provider && &s.source == source)
            .map(|s| s.generation)
    }

    fn mark_seen(&mut self, provider: &str, source: &FetchSource, generation: u64) {
        match self.seen.iter_mut().find(|s| s.provider == provider) {
            Some(s) => {
                s.source = source.clone();
                s.generation = generation;
            }
            None => self.seen.push(Seen {
                provider: provider.to_owned(),
                source: source.clone(),
                generation,
            }),
        }
    }
}

thread_local! {
    static VM: RefCell<VmKeys> = RefCell::new(VmKeys::default());
}

/// One remote JWKS source and the providers that use it.
struct Fetcher {
    fetch: SharedFetch,
    providers: Vec<String>,
    /// The shortest `unknown_kid_refetch_seconds` of its providers.
    min_refetch: Duration,
}

impl Fetcher {
    /// Loads a newly published key set into this VM. Returns whether every provider has one.
    fn load_published(&self) -> bool {
        let source = self.fetch.source();
        let have = VM.with(|vm| {
            let vm = vm.borrow();
            let gens: Vec<Option<u64>> = self
                .providers
                .iter()
                .map(|p| vm.seen_generation(p, source))
                .collect();
            match gens.first() {
                Some(first) if gens.iter().all(|g| g == first) => *first,
                _ => None,
            }
        });
        if let Some((generation, bytes)) = self.fetch.published_since(have) {
            let names = self.providers.join(",");
            match JwksSet::parse(&bytes) {
                Ok(set) => {
                    for s in set.skipped() {
                        host::log(
                            Level::Warn,
                            &format!("gatewarden {FILTER}: JWKS of {names}: keys[{}] (kid {:?}) skipped: {}", s.index, s.kid.as_deref().unwrap_or(""), s.reason),
                        );
                    }
                    host::log(Level::Info, &format!("gatewarden {FILTER}: JWKS generation {generation} loaded for {names} ({} keys)", set.len()));
                    metrics::count(FILTER, "jwks_loaded");
                    set.prepare();
                    let set = Arc::new(set);
                    VM.with(|vm| {
                        let mut vm = vm.borrow_mut();
                        for p in &self.providers {
                            vm.keys.set(p, Arc::clone(&set));
                            vm.mark_seen(p, source, generation);
                        }
                    });
                }
                Err(e) => {
                    metrics::count(FILTER, "jwks_load_failed");
                    host::log(Level::Error, &format!("gatewarden {FILTER}: published JWKS of {names} refused, the previous set stays: {e}"));
                    VM.with(|vm| {
                        let mut vm = vm.borrow_mut();
                        for p in &self.providers {
                            vm.mark_seen(p, source, generation);
                        }
                    });
                }
            }
        }
        VM.with(|vm| {
            let vm = vm.borrow();
            self.providers
                .iter()
                .all(|p| vm.keys.remote_jwks(p).is_some())
        })
    }
}

struct Jwt {
    fetchers: Vec<Fetcher>,
}

fn seconds(s: u64) -> u64 {
    s.saturating_mul(1000)
}

impl Enforcer for Jwt {
    type Policy = JwtPolicy;
    type PolicyState = RefCell<TokenCache>;

    fn reasons() -> Vec<&'static str> {
        JwtReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        shared_fetch::counter_names(RESOURCE)
    }

    fn new(_root_context_id: u32) -> Self {
        Self {
            fetchers: Vec::new(),
        }
    }

    fn on_policy(&mut self, policy: &JwtPolicy) -> Option<Duration> {
        policy.prepare_local_keys();
        let mut fetchers: Vec<Fetcher> = Vec::new();
        for src in policy.remote_jwks() {
            let spec = src.spec;
            let source = FetchSource {
                upstream: spec.cluster.clone(),
                authority: spec
                    .authority
                    .clone()
                    .unwrap_or_else(|| spec.cluster.clone()),
                path: spec.path.clone(),
                timeout: Duration::from_millis(spec.timeout_ms),
                max_bytes: usize::try_from(spec.max_bytes).unwrap_or(usize::MAX),
            };
            let min_refetch = Duration::from_secs(spec.unknown_kid_refetch_seconds);
            // Providers sharing a JWKS URI share one fetch (the first one's schedule).
            if let Some(f) = fetchers.iter_mut().find(|f| f.fetch.source() == &source) {
                f.providers.push(src.provider.to_owned());
                f.min_refetch = f.min_refetch.min(min_refetch);
                continue;
            }
            let schedule = RefreshSchedule {
                refresh_ms: seconds(spec.cache_duration_seconds),
                retry_ms: seconds(spec.retry_seconds),
                lease_ms: spec.timeout_ms.saturating_add(2000),
            };
            fetchers.push(Fetcher {
                fetch: SharedFetch::new(FILTER, RESOURCE, source, schedule),
                providers: vec![src.provider.to_owned()],
                min_refetch,
            });
        }
        // Forget key sets of providers that are gone or now fetch from elsewhere.
        VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            let keep = |s: &Seen| {
                fetchers
                    .iter()
                    .any(|f| f.fetch.source() == &s.source && f.providers.contains(&s.provider))
            };
            let stale: Vec<String> = vm
                .seen
                .iter()
                .filter(|s| !keep(s))
                .map(|s| s.provider.clone())
                .collect();
            for p in &stale {
                vm.keys.remove(p);
            }
            vm.seen.retain(|s| keep(s));
            vm.wanted.clear();
        });
        self.fetchers = fetchers;
        (!self.fetchers.is_empty()).then_some(TICK_LOADING)
    }

    fn on_tick(&mut self, _policy: &JwtPolicy) -> Option<Duration> {
        if self.fetchers.is_empty() {
            return None;
        }
        let wanted = VM.with(|vm| std::mem::take(&mut vm.borrow_mut().wanted));
        let now = host::now_ms();
        let mut all_loaded = true;
        for f in &mut self.fetchers {
            all_loaded &= f.load_published();
            if f.providers
                .iter()
                .any(|p| wanted.iter().any(|w| **w == **p))
            {
                f.fetch.bring_forward(now, f.min_refetch);
            }
            f.fetch.tick(now);
        }
        Some(if all_loaded {
            TICK_LOADED
        } else {
            TICK_LOADING
        })
    }

    fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let now = host::now_ms();
        for f in &mut self.fetchers {
            let validate =
                |bytes: &[u8]| JwksSet::parse(bytes).map(|_| ()).map_err(|e| e.to_string());
            if f.fetch.on_response(token, body_size, now, validate) {
                f.load_published();
                return;
            }
        }
    }

    fn header_needs(_policy: &JwtPolicy) -> HeaderNeeds {
        HeaderNeeds::default()
    }

    fn reads_all_headers(_policy: &JwtPolicy) -> bool {
        true
    }

    fn policy_state(policy: &JwtPolicy) -> RefCell<TokenCache> {
        RefCell::new(policy.new_token_cache())
    }

    fn evaluate(
        policy: &JwtPolicy,
        cache: &RefCell<TokenCache>,
        facts: &RequestFacts<'_>,
    ) -> Evaluation {
        let now = host::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut cache = cache.try_borrow_mut().ok();
        let out = VM.with(|vm| match vm.try_borrow_mut() {
            Ok(mut vm) => {
                let out = policy.decide(facts, now, &vm.keys, cache.as_deref_mut());
                for p in &out.needs_keys {
                    if !vm.wanted.contains(p) {
                        vm.wanted.push(Arc::clone(p));
                    }
                }
                out
            }
            // Not reachable (no host callback re-enters a request): decide without remote keys.
            Err(_) => policy.decide(facts, now, &NoRemoteKeys, cache.as_deref_mut()),
        });
        // The log's client (denials only): the policy's client_address settings decide, as in
        // the IP filter. When they cannot (a malformed x-forwarded-for), the decision stands,
        // the client is left empty and the detail says why, with the peer.
        let (client, detail) = match (&out.decision.verdict, out.client) {
            (Verdict::Deny(_), Some(Ok(ip))) => (Some(ip), String::new()),
            (Verdict::Deny(_), Some(Err(e))) => {
                let peer = facts
                    .peer_address()
                    .and_then(parse_address)
                    .map(|ip| format!("; peer={ip}"))
                    .unwrap_or_default();
                (None, format!("client_address={}{peer}", e.as_str()))
            }
            _ => (None, String::new()),
        };
        Evaluation {
            decision: out.decision,
            client,
            detail,
            remove_headers: out.remove_headers,
            set_headers: out.set_headers,
            response_headers: out.response_headers,
        }
    }
}

export_filter!(Jwt);
