//! The compiled JWT policy: its document compiled, its accessors for the glue, and [`JwtPolicy::decide`] (semantics in the crate docs; evaluation in `evaluate.rs`, upstream headers in `forward.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use gatewarden_policy::client_address::ClientAddressError;
use gatewarden_policy::decision::Decision;
use gatewarden_policy::document::{FilterPolicy, Header};
use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::RequestFacts;
use gatewarden_policy::remote::RemoteSource;
use gatewarden_policy::rules::{CompiledRule, RuleSet};

use super::cache::TokenCache;
use super::compile::{
    compile_claim_requirement, compile_provider, compile_requirement, compile_scopes, validate_provider_name, ClaimCondition, JwtAction,
    Provider,
};
use super::config::JwtDocument;
use super::evaluate::{Eval, Request, States};
use super::keys::KeyLookup;
use super::reason::JwtReason;

/// What the JWT policy decided, and what the glue must do to the request and response.
///
/// Apply `remove_headers` first, then `set_headers` (which replace any existing value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOutcome {
    pub decision: Decision,
    /// The denial reason as an enum, `None` when allowed.
    pub reason: Option<JwtReason>,
    /// Request headers to set (claims, payload, a `:path` or `cookie` without the token).
    pub set_headers: Vec<(String, String)>,
    /// Request headers to remove: every header this policy may set (so a client cannot send
    /// its own `x-jwt-payload`), and the token's header unless `forward`.
    pub remove_headers: Vec<String>,
    /// Headers for the local reply when denied (`www-authenticate`).
    pub response_headers: Vec<(String, String)>,
    /// Providers whose remote key set should be (re)fetched: not loaded yet, or it lacks a
    /// token's `kid`. The glue rate-limits these fetches.
    pub needs_keys: Vec<Arc<str>>,
    /// The providers whose tokens verified (for the log), in evaluation order.
    pub verified: Vec<Arc<str>>,
    /// On a denial, the client for the decision log, found with the policy's `client_address`
    /// settings (as the IP filter finds it). Informational only: it never changes the
    /// decision, so a malformed `x-forwarded-for` cannot break authentication. `None` when allowed.
    pub client: Option<Result<IpAddr, ClientAddressError>>,
}

/// A remote key set the glue must fetch for a provider.
#[derive(Debug, Clone, Copy)]
pub struct RemoteJwksSource<'a> {
    pub provider: &'a str,
    pub spec: &'a RemoteSource,
}

/// A compiled JWT policy.
#[derive(Debug, Clone)]
pub struct JwtPolicy {
    pub(crate) header: Header,
    pub(crate) rules: RuleSet<JwtAction>,
    pub(crate) providers: Vec<Provider>,
    pub(crate) realm: String,
    pub(crate) token_cache_entries: usize,
    pub(crate) max_request_headers: usize,
    /// Every header any provider may set, lowercase, deduplicated.
    pub(crate) output_headers: Vec<String>,
}

impl FilterPolicy for JwtPolicy {
    const NAME: &'static str = "jwt";
    type Document = JwtDocument;

    fn compile(doc: JwtDocument) -> Result<Self, ConfigError> {
        let header = Header::compile(&doc, Self::NAME)?;
        let root = FieldPath::root();
        if doc.realm.is_empty()
            || doc.realm.len() > 128
            || doc.realm.bytes().any(|b| b == b'"' || b == b'\\' || !(b == b' ' || b.is_ascii_graphic()))
        {
            return Err(root
                .field("realm")
                .error(format!("invalid realm {}: 1 to 128 printable ASCII characters without quotes or backslashes", quote(&doc.realm))));
        }
        if doc.token_cache_entries > 1_000_000 {
            return Err(root.field("token_cache_entries").error(format!("{} is more than the maximum 1000000", doc.token_cache_entries)));
        }
        if !(1..=10_000).contains(&doc.max_request_headers) {
            return Err(root.field("max_request_headers").error(format!("{} is outside 1..=10000", doc.max_request_headers)));
        }
        if doc.providers.is_empty() {
            return Err(root.field("providers").error("at least one provider is required"));
        }
        let mut providers = Vec::with_capacity(doc.providers.len());
        for (name, spec) in &doc.providers {
            let path = root.field("providers").field(name);
            validate_provider_name(name, &path)?;
            providers.push(compile_provider(name, spec, &path)?);
        }
        let mut output_headers: Vec<String> = Vec::new();
        for p in &providers {
            for h in p.payload_header.iter().chain(p.claim_headers.iter().map(|(_, h)| h)) {
                if !output_headers.contains(h) {
                    output_headers.push(h.clone());
                }
            }
        }
        // A header both read as a token source and written from a token would let the
        // upstream see a client's value as verified, or strip what we set.
        let is_source = |h: &str| providers.iter().any(|q| q.sources.headers.iter().any(|(s, _)| s == h));
        for p in &providers {
            let path = root.field("providers").field(&p.name);
            let outputs =
                p.payload_header.iter().map(|h| (path.field("forward_payload_header"), h)).chain(
                    p.claim_headers.iter().enumerate().map(|(i, (_, h))| (path.field("claim_to_headers").index(i).field("header"), h)),
                );
            for (field, h) in outputs {
                if is_source(h) {
                    return Err(field.error(format!("header {} is also where a token is read from", quote(h))));
                }
            }
        }
        let mut copies: Vec<(usize, Vec<String>)> = Vec::new();
        let rules = RuleSet::compile(&doc.rules, &doc.default, |rule, path| {
            let requires =
                rule.requires.as_ref().map(|r| compile_requirement(r, &providers, &mut copies, &path.field("requires"), 0)).transpose()?;
            let scopes = compile_scopes(&rule.scopes, &path.field("scopes"))?;
            let claims = rule
                .claims
                .iter()
                .enumerate()
                .map(|(i, c)| compile_claim_requirement(c, &path.field("claims").index(i)))
                .collect::<Result<Vec<_>, _>>()?;
            if requires.is_none() && (!scopes.is_empty() || !claims.is_empty()) {
                let field = if scopes.is_empty() { "claims" } else { "scopes" };
                return Err(path.field(field).error("scopes and claims need a token: add \"requires\""));
            }
            Ok(JwtAction { requires, scopes, claims, cors_preflight_passes: rule.cors_preflight_passes })
        })?;
        // `provider_and_audiences`: copies of providers with other audiences, after the listed
        // ones (the indices compile_requirement gave them).
        for (base, audiences) in copies {
            if let Some(p) = providers.get(base) {
                let mut copy = p.clone();
                copy.checks.audiences = audiences;
                copy.copy_of = Some(base);
                providers.push(copy);
            }
        }
        Ok(Self {
            header,
            rules,
            providers,
            realm: doc.realm,
            token_cache_entries: doc.token_cache_entries,
            max_request_headers: doc.max_request_headers,
            output_headers,
        })
    }

    fn header(&self) -> &Header {
        &self.header
    }

    fn check_candidate(&self, candidate: &Self) -> Result<(), ConfigError> {
        // Remote key sets are fetched for the active policy's providers, by provider name.
        for src in candidate.remote_jwks() {
            let served = self.remote_jwks().any(|a| a.provider == src.provider && a.spec == src.spec);
            if !served {
                return Err(FieldPath::root().field("providers").field(src.provider).field("remote_jwks").error(format!(
                    "a candidate's remote_jwks must be the active policy's for provider {}: key sets are fetched for the active policy; change them in a policy without rollout",
                    quote(src.provider)
                )));
            }
        }
        Ok(())
    }
}

impl JwtPolicy {
    /// The `realm` of `WWW-Authenticate`.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A token cache of the configured size, for one worker.
    pub fn new_token_cache(&self) -> TokenCache {
        TokenCache::new(self.token_cache_entries)
    }

    /// Provider names, in the order of the document (sorted).
    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().filter(|p| p.copy_of.is_none()).map(|p| &*p.name)
    }

    /// Builds what the providers' inline key sets compute at first use (ES256 tables), so the
    /// first requests do not pay for it. See [`JwksSet::prepare`].
    pub fn prepare_local_keys(&self) {
        for set in self.providers.iter().filter(|p| p.copy_of.is_none()).filter_map(|p| p.local.as_ref()) {
            set.prepare();
        }
    }

    /// The remote key sets the glue must fetch, one per provider with `remote_jwks`.
    pub fn remote_jwks(&self) -> impl Iterator<Item = RemoteJwksSource<'_>> {
        self.providers
            .iter()
            .filter(|p| p.copy_of.is_none())
            .filter_map(|p| p.remote.as_ref().map(|spec| RemoteJwksSource { provider: &p.name, spec }))
    }

    /// The request headers [`Self::decide`] reads, for a host that reads them one by one (the
    /// native module; it passes the request's header count too, for `max_request_headers`):
    /// the rules' match conditions, every provider's token headers, `:path` (query parameters,
    /// forwarding without them), cookies, the CORS preflight's, claims compared with a header,
    /// the client address settings' (a denial's log line). Not `x-request-id`: a host reads it
    /// for a log line only.
    pub fn header_needs(&self) -> gatewarden_policy::facts::HeaderNeeds {
        let mut needs = gatewarden_policy::facts::HeaderNeeds::default();
        self.rules.add_needs(&mut needs);
        for name in [":path", ":method", "origin", "access-control-request-method"] {
            needs.add(name);
        }
        for p in &self.providers {
            for (name, _) in &p.sources.headers {
                needs.add(name);
            }
            if !p.sources.cookies.is_empty() {
                needs.add("cookie");
            }
        }
        for rule in self.rules.iter() {
            for (_, condition) in &rule.action.claims {
                if let ClaimCondition::EqualsHeader(h) = condition {
                    needs.add(h);
                }
            }
        }
        self.header.client_address.add_needs(&mut needs);
        needs
    }

    /// Every request header this policy may set from a token (always removed from requests).
    pub fn output_headers(&self) -> &[String] {
        &self.output_headers
    }

    /// Decides for one request at `now` (Unix seconds). `keys` holds the loaded remote key
    /// sets; `cache`, if given, remembers verified tokens across requests of one worker.
    pub fn decide(&self, facts: &RequestFacts<'_>, now: u64, keys: &dyn KeyLookup, cache: Option<&mut TokenCache>) -> JwtOutcome {
        let rule = self.rules.select(facts);
        let mut out = JwtOutcome {
            decision: Decision::allow(&rule.name),
            reason: None,
            set_headers: Vec::new(),
            remove_headers: self.output_headers.clone(),
            response_headers: Vec::new(),
            needs_keys: Vec::new(),
            verified: Vec::new(),
            client: None,
        };
        if facts.header_count() > self.max_request_headers {
            self.deny(&mut out, rule, JwtReason::TooManyHeaders, facts);
            return out;
        }
        let action = &rule.action;
        let Some(requires) = &action.requires else {
            return out;
        };
        if action.cors_preflight_passes && is_cors_preflight(facts) {
            return out;
        }
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            c.sync_generation(keys.generation());
        }
        let mut req = Request {
            policy: self,
            facts,
            now: i64::try_from(now).unwrap_or(i64::MAX),
            keys,
            cache,
            states: States::from_elem(None, self.providers.len()),
            needs_keys: Vec::new(),
            degraded: false,
        };
        let result = req.eval(requires);
        let verdict = match result {
            Eval::Fail(failure) => Err(failure.reason),
            Eval::Pass(verified) => req.check_rule_claims(action, &verified).map(|()| verified),
        };
        match verdict {
            Err(reason) => self.deny(&mut out, rule, reason, facts),
            Ok(verified) => req.forward(&verified, &mut out),
        }
        out.needs_keys = req.needs_keys;
        out
    }

    fn deny(&self, out: &mut JwtOutcome, rule: &CompiledRule<JwtAction>, reason: JwtReason, facts: &RequestFacts<'_>) {
        out.decision = Decision::deny(&rule.name, reason.denial());
        out.reason = Some(reason);
        out.client = Some(self.header.client_address.resolve(facts));
        out.set_headers.clear();
        if let Some(v) = reason.www_authenticate(&self.realm) {
            out.response_headers.push(("www-authenticate".to_owned(), v));
        }
    }
}

fn is_cors_preflight(facts: &RequestFacts<'_>) -> bool {
    facts.method() == "OPTIONS" && facts.header("origin").is_some() && facts.header("access-control-request-method").is_some()
}
