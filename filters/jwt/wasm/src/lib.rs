//! Gatewarden JWT authentication as a Proxy-Wasm module: glue only. The policy lives in
//! `gatewarden_jwt_policy`; the host adapter in `gatewarden_glue`.
//!
//! - Every request header is read in one crossing: the policy counts them, finds tokens in
//!   headers, cookies and the query, and strips the headers it sets (a client cannot forge
//!   `x-jwt-payload` or a claim header).
//! - Remote JWKS: one [`RemoteResource`] per distinct origin (resource `jwks`, the one
//!   remote-source type), started after the policy is accepted, refreshed every
//!   `refresh_seconds`, retried after `retry_seconds`. One worker fetches, every worker loads the
//!   published set on its next tick and installs it for its providers in a per-VM [`RemoteKeys`]
//!   (a thread_local: it survives policy updates whose origin is unchanged). A set that does
//!   not parse is refused and the previous one kept; keys skipped inside a set are logged.
//! - A request whose token names a `kid` the loaded set lacks (or that finds no set loaded)
//!   reports `needs_keys`; the next tick brings that provider's fetch forward, at most once per
//!   `early_refetch_seconds` across all workers ([`RemoteResource::bring_forward`]).
//! - The verified-token cache is the policy state of the glue ([`Enforcer::PolicyState`]): one
//!   per VM and compiled policy, bounded by `token_cache_entries`, cleared when the key sets'
//!   generation changes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use gatewarden_glue::host::{self, Level};
use gatewarden_glue::remote::{self, RemoteResource, TICK_LOADED, TICK_LOADING};
use gatewarden_glue::{export_filter, Enforcer, Outcome};
use gatewarden_jwt_policy::{JwksSet, JwtPolicy, JwtReason, NoRemoteKeys, RemoteKeys, TokenCache, JWKS};
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts};

const FILTER: &str = JwtPolicy::NAME;

/// Per-VM state: survives policy updates (which create a new root context in the same VM).
#[derive(Default)]
struct VmKeys {
    /// The key set of each provider with `remote_jwks`, as loaded in this VM.
    keys: RemoteKeys,
    /// Providers whose requests needed keys since the last tick (at most one entry each).
    wanted: Vec<Arc<str>>,
}

thread_local! {
    static VM: RefCell<VmKeys> = RefCell::new(VmKeys::default());
}

/// One remote JWKS origin and the providers that use it.
struct Fetcher {
    jwks: RemoteResource,
    providers: Vec<String>,
}

/// Parses a published JWKS of providers `names`: the prepared set, and the log line's
/// description. Keys skipped inside a set are logged with their reason.
fn parse_jwks(names: String) -> impl FnOnce(&[u8]) -> Result<(Arc<JwksSet>, String), String> {
    move |bytes| {
        let set = JwksSet::parse(bytes).map_err(|e| e.to_string())?;
        for s in set.skipped() {
            host::log(
                Level::Warn,
                format_args!(
                    "gatewarden {FILTER}: JWKS of {names}: keys[{}] (kid {:?}) skipped: {}",
                    s.index,
                    s.kid.as_deref().unwrap_or(""),
                    s.reason
                ),
            );
        }
        set.prepare();
        let about = format!("for {names} ({} keys)", set.len());
        Ok((Arc::new(set), about))
    }
}

impl Fetcher {
    fn names(&self) -> String {
        self.providers.join(",")
    }

    /// Installs this origin's current set for its providers (a no-op when already installed:
    /// the token cache is cleared only when a set really changes). Returns whether one is loaded.
    fn install(&self) -> bool {
        let Some(set) = self.jwks.current::<Arc<JwksSet>>() else { return false };
        VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            for p in &self.providers {
                if !vm.keys.get(p).is_some_and(|have| Arc::ptr_eq(have, &set)) {
                    vm.keys.set(p, Arc::clone(&set));
                }
            }
        });
        true
    }
}

struct Jwt {
    fetchers: Vec<Fetcher>,
}

impl Enforcer for Jwt {
    type Policy = JwtPolicy;
    type PolicyState = RefCell<TokenCache>;

    fn reasons() -> Vec<&'static str> {
        JwtReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        remote::counter_names(JWKS.name)
    }

    fn new(_root_context_id: u32) -> Self {
        Self { fetchers: Vec::new() }
    }

    fn on_policy(&mut self, policy: &JwtPolicy) -> Option<Duration> {
        policy.prepare_local_keys();
        let mut fetchers: Vec<Fetcher> = Vec::new();
        for src in policy.remote_jwks() {
            // Providers sharing a JWKS origin share one fetch (the first one's schedule).
            if let Some(f) = fetchers.iter_mut().find(|f| f.jwks.source().same_origin(src.spec)) {
                f.providers.push(src.provider.to_owned());
                continue;
            }
            fetchers.push(Fetcher { jwks: RemoteResource::new(FILTER, src.spec.clone()), providers: vec![src.provider.to_owned()] });
        }
        for f in &mut fetchers {
            let subject = format!(" of {}", f.names());
            f.jwks.set_subject(subject);
        }
        // Forget the key sets of providers that are gone or now fetch from an origin not loaded
        // in this VM yet; install the loaded ones.
        VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            let loaded: Vec<(String, bool)> = fetchers
                .iter()
                .flat_map(|f| {
                    let has = f.jwks.current::<Arc<JwksSet>>().is_some();
                    f.providers.iter().map(move |p| (p.clone(), has))
                })
                .collect();
            let stale: Vec<String> =
                vm.keys.providers().filter(|p| !loaded.iter().any(|(q, has)| q == p && *has)).map(str::to_owned).collect();
            for p in stale {
                vm.keys.remove(&p);
            }
            vm.wanted.clear();
        });
        for f in &fetchers {
            f.install();
        }
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
            let _: Option<Rc<Arc<JwksSet>>> = f.jwks.load_published(parse_jwks(f.names()));
            all_loaded &= f.install();
            if f.providers.iter().any(|p| wanted.iter().any(|w| **w == **p)) {
                f.jwks.bring_forward(now);
            }
            f.jwks.tick(now);
        }
        Some(if all_loaded { TICK_LOADED } else { TICK_LOADING })
    }

    fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let now = host::now_ms();
        for f in &mut self.fetchers {
            let parse = parse_jwks(f.names());
            if f.jwks.on_response(token, body_size, now, parse).is_some() {
                f.install();
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

    fn decide(policy: &JwtPolicy, cache: &RefCell<TokenCache>, facts: &RequestFacts<'_>) -> Outcome {
        let now = host::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
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
        gatewarden_jwt_policy::adapter::to_outcome(out, facts)
    }
}

export_filter!(Jwt);
