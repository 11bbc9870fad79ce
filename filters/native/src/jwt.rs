//! JWT authentication, natively: the verified-token cache per worker (the runtime's per-worker
//! policy state); remote JWKS one copy per process per origin, fetched on the main thread
//! ([`gatewarden_native::remote`]), each worker installing a new set in its own key view when the
//! set's generation moves (which also clears its token cache, as in the Wasm module). A token
//! whose `kid` the loaded set lacks asks for an early refetch, rate-limited per origin.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_glue::remote::counter_names;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_jwt_policy::{JwksSet, JwtPolicy, JwtReason, RemoteKeys, TokenCache, JWKS};
use gatewarden_native::envoy::{self, Level};
use gatewarden_native::remote::{self, Local, Parsed, Source};
use gatewarden_native::NativeFilter;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{FilterPolicy, RequestFacts};

const FILTER: &str = JwtPolicy::NAME;

pub struct Jwt;

/// One worker's JWT state under one policy.
pub struct WorkerKeys {
    cache: TokenCache,
    /// Each remote provider's view of its origin's set.
    providers: Vec<(String, Local<JwksSet>)>,
    keys: RemoteKeys,
}

impl NativeFilter for Jwt {
    const BORROWS_HEADERS: bool = true;

    fn sources(policy: &JwtPolicy) -> Vec<Source> {
        let mut sources: Vec<(gatewarden_policy::remote::RemoteSource, Vec<String>)> = Vec::new();
        for src in policy.remote_jwks() {
            match sources.iter_mut().find(|(s, _)| s.same_origin(src.spec)) {
                Some((_, names)) => names.push(src.provider.to_owned()),
                None => sources.push((src.spec.clone(), vec![src.provider.to_owned()])),
            }
        }
        sources
            .into_iter()
            .map(|(source, providers)| {
                let logged = providers.join(",");
                let parse = Arc::new(move |bytes: &[u8]| {
                    let set = JwksSet::parse(bytes).map_err(|e| e.to_string())?;
                    for s in set.skipped() {
                        envoy::log(
                            Level::Warn,
                            format_args!(
                                "gatewarden {FILTER}: JWKS of {logged}: keys[{}] (kid {:?}) skipped: {}",
                                s.index,
                                s.kid.as_deref().unwrap_or(""),
                                s.reason
                            ),
                        );
                    }
                    set.prepare();
                    let about = format!("for {logged} ({} keys)", set.len());
                    Ok((Arc::new(set) as Parsed, about))
                });
                Source { source, parse }
            })
            .collect()
    }
}

impl Enforcer for Jwt {
    type Policy = JwtPolicy;
    type PolicyState = RefCell<WorkerKeys>;

    fn reasons() -> Vec<&'static str> {
        JwtReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn extra_counters() -> Vec<String> {
        counter_names(JWKS.name)
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &JwtPolicy) -> Option<Duration> {
        None
    }

    /// Natively the request's headers are read in one crossing whatever their number, and only
    /// the named ones copied (with the header count, for `max_request_headers`); the `.wasm`
    /// reads them all (its host has no count without the whole map).
    fn header_needs(policy: &JwtPolicy) -> HeaderNeeds {
        policy.header_needs()
    }

    fn policy_state(policy: &JwtPolicy) -> RefCell<WorkerKeys> {
        policy.prepare_local_keys();
        let providers = policy.remote_jwks().map(|src| (src.provider.to_owned(), Local::new(remote::resource(src.spec)))).collect();
        RefCell::new(WorkerKeys { cache: policy.new_token_cache(), providers, keys: RemoteKeys::new() })
    }

    fn decide(policy: &JwtPolicy, state: &RefCell<WorkerKeys>, facts: &RequestFacts<'_>) -> Outcome {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let Ok(mut state) = state.try_borrow_mut() else {
            // Not reachable (a worker decides one request at a time): decide without cache or keys.
            return gatewarden_jwt_policy::adapter::to_outcome(policy.decide(facts, now, &RemoteKeys::new(), None), facts);
        };
        let WorkerKeys { cache, providers, keys } = &mut *state;
        for (provider, local) in providers.iter_mut() {
            let (set, changed) = local.current();
            if changed {
                match set {
                    Some(set) => keys.set(provider, Arc::clone(set)),
                    None => keys.remove(provider),
                }
            }
        }
        let out = policy.decide(facts, now, keys, Some(cache));
        for wanted in &out.needs_keys {
            if let Some((_, local)) = providers.iter().find(|(p, _)| **p == **wanted) {
                local.resource().want();
            }
        }
        gatewarden_jwt_policy::adapter::to_outcome(out, facts)
    }
}
