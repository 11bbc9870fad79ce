//! JWT authentication, natively: the verified-token cache per worker (the runtime's per-worker
//! policy state). A policy with a remote JWKS is refused: the native module does not fetch
//! remote resources yet.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_glue::pipeline::HostCaps;
use gatewarden_glue::{Enforcer, Outcome};
use gatewarden_jwt_policy::{JwtPolicy, JwtReason, NoRemoteKeys, TokenCache};
use gatewarden_policy::cidr::parse_address;
use gatewarden_policy::facts::HeaderNeeds;
use gatewarden_policy::{RequestFacts, Verdict};

pub struct Jwt;

impl Enforcer for Jwt {
    type Policy = JwtPolicy;
    type PolicyState = RefCell<TokenCache>;

    fn reasons() -> Vec<&'static str> {
        JwtReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn new(_root_context_id: u32) -> Self {
        Self
    }

    fn on_policy(&mut self, _policy: &JwtPolicy) -> Option<Duration> {
        None
    }

    fn check_host(policy: &JwtPolicy, host: &HostCaps) -> Result<(), String> {
        match policy.remote_jwks().next() {
            Some(src) => {
                Err(format!("providers.{}.remote_jwks: a remote JWKS is not available in the {} module yet", src.provider, host.name))
            }
            None => Ok(()),
        }
    }

    fn header_needs(_policy: &JwtPolicy) -> HeaderNeeds {
        HeaderNeeds::default()
    }

    fn reads_all_headers(_policy: &JwtPolicy) -> bool {
        true
    }

    fn policy_state(policy: &JwtPolicy) -> RefCell<TokenCache> {
        policy.prepare_local_keys();
        RefCell::new(policy.new_token_cache())
    }

    fn decide(policy: &JwtPolicy, cache: &RefCell<TokenCache>, facts: &RequestFacts<'_>) -> Outcome {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut cache = cache.try_borrow_mut().ok();
        let out = policy.decide(facts, now, &NoRemoteKeys, cache.as_deref_mut());
        let (client, detail) = match (&out.decision.verdict, out.client) {
            (Verdict::Deny(_), Some(Ok(ip))) => (Some(ip), String::new()),
            (Verdict::Deny(_), Some(Err(e))) => {
                let peer = facts.peer_address().and_then(parse_address).map(|ip| format!("; peer={ip}")).unwrap_or_default();
                (None, format!("client_address={}{peer}", e.as_str()))
            }
            _ => (None, String::new()),
        };
        let mut outcome = Outcome::new(out.decision, client, detail);
        outcome.remove_headers = out.remove_headers;
        outcome.set_headers = out.set_headers;
        outcome.response_headers = out.response_headers;
        outcome
    }
}
