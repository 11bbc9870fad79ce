//! The compiled JWT policy and its decision (semantics in the module docs of [`super`]).

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use gatewarden_policy::client_address::ClientAddressError;
use gatewarden_policy::decision::Decision;
use gatewarden_policy::document::{FailureMode, FilterPolicy, Header};
use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::RequestFacts;
use gatewarden_policy::remote::RemoteSource;
use gatewarden_policy::rules::{CompiledRule, RuleSet};

use super::b64;
use super::cache::{CacheKey, TokenCache, VerifiedToken};
use super::claims;
use super::compile::{
    compile_claim_requirement, compile_provider, compile_requirement, compile_scopes,
    validate_provider_name, ClaimCondition, JwtAction, Provider, Requirement,
};
use super::config::JwtDocument;
use super::extract::{cookies_without, path_without_params, Extracted, Location};
use super::jose;
use super::keys::KeyLookup;
use super::reason::JwtReason;

/// Longest header value we set from a claim; longer values are not forwarded.
pub const MAX_CLAIM_HEADER_BYTES: usize = 8192;

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
    header: Header,
    rules: RuleSet<JwtAction>,
    providers: Vec<Provider>,
    realm: String,
    token_cache_entries: usize,
    max_request_headers: usize,
    /// Every header any provider may set, lowercase, deduplicated.
    output_headers: Vec<String>,
}

impl FilterPolicy for JwtPolicy {
    const NAME: &'static str = "jwt";
    type Document = JwtDocument;

    fn compile(doc: JwtDocument) -> Result<Self, ConfigError> {
        let header = Header::compile(&doc, Self::NAME)?;
        let root = FieldPath::root();
        if doc.realm.is_empty()
            || doc.realm.len() > 128
            || doc
                .realm
                .bytes()
                .any(|b| b == b'"' || b == b'\\' || !(b == b' ' || b.is_ascii_graphic()))
        {
            return Err(root.field("realm").error(format!("invalid realm {}: 1 to 128 printable ASCII characters without quotes or backslashes", quote(&doc.realm))));
        }
        if doc.token_cache_entries > 1_000_000 {
            return Err(root.field("token_cache_entries").error(format!(
                "{} is more than the maximum 1000000",
                doc.token_cache_entries
            )));
        }
        if !(1..=10_000).contains(&doc.max_request_headers) {
            return Err(root
                .field("max_request_headers")
                .error(format!("{} is outside 1..=10000", doc.max_request_headers)));
        }
        if doc.providers.is_empty() {
            return Err(root
                .field("providers")
                .error("at least one provider is required"));
        }
        let mut providers = Vec::with_capacity(doc.providers.len());
        for (name, spec) in &doc.providers {
            let path = root.field("providers").field(name);
            validate_provider_name(name, &path)?;
            providers.push(compile_provider(name, spec, &path)?);
        }
        let mut output_headers: Vec<String> = Vec::new();
        for p in &providers {
            for h in p
                .payload_header
                .iter()
                .chain(p.claim_headers.iter().map(|(_, h)| h))
            {
                if !output_headers.contains(h) {
                    output_headers.push(h.clone());
                }
            }
        }
        // A header both read as a token source and written from a token would let the
        // upstream see a client's value as verified, or strip what we set.
        let is_source = |h: &str| {
            providers
                .iter()
                .any(|q| q.sources.headers.iter().any(|(s, _)| s == h))
        };
        for p in &providers {
            let path = root.field("providers").field(&p.name);
            let outputs = p
                .payload_header
                .iter()
                .map(|h| (path.field("forward_payload_header"), h))
                .chain(p.claim_headers.iter().enumerate().map(|(i, (_, h))| {
                    (path.field("claim_to_headers").index(i).field("header"), h)
                }));
            for (field, h) in outputs {
                if is_source(h) {
                    return Err(field.error(format!(
                        "header {} is also where a token is read from",
                        quote(h)
                    )));
                }
            }
        }
        let mut copies: Vec<(usize, Vec<String>)> = Vec::new();
        let rules = RuleSet::compile(&doc.rules, &doc.default, |rule, path| {
            let requires = rule
                .requires
                .as_ref()
                .map(|r| compile_requirement(r, &providers, &mut copies, &path.field("requires"), 0))
                .transpose()?;
            let scopes = compile_scopes(&rule.scopes, &path.field("scopes"))?;
            let claims = rule
                .claims
                .iter()
                .enumerate()
                .map(|(i, c)| compile_claim_requirement(c, &path.field("claims").index(i)))
                .collect::<Result<Vec<_>, _>>()?;
            if requires.is_none() && (!scopes.is_empty() || !claims.is_empty()) {
                let field = if scopes.is_empty() {
                    "claims"
                } else {
                    "scopes"
                };
                return Err(path
                    .field(field)
                    .error("scopes and claims need a token: add \"requires\""));
            }
            Ok(JwtAction {
                requires,
                scopes,
                claims,
                cors_preflight_passes: rule.cors_preflight_passes,
            })
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

/// A provider's result for one request.
#[derive(Debug, Clone)]
enum ProviderState<'a> {
    Missing,
    Failed(Failure),
    /// The remote key set is not loaded.
    Unavailable,
    Verified {
        token: Arc<VerifiedToken>,
        text: &'a str,
        locations: Vec<Location>,
    },
}

enum Eval {
    /// Passed, with the indices of the providers whose tokens verified.
    Pass(Vec<usize>),
    Fail(Failure),
}

/// Why a requirement failed, and whether the provider that refused claimed the token.
///
/// Which reason a failed `requires_any`, `requires_all` or `allow_missing` reports (its log
/// line, counter and so its public response): the most telling failure of its parts, the
/// earliest one among equals. From most to least telling:
/// 1. `claimed`: a provider refused a token it took as its own (its `iss` is the provider's
///    issuer): `expired`, `bad_signature`, `audience`, `jwks_unavailable`, … — the reason of
///    the provider the token names;
/// 2. a token that no provider could read (`malformed`, `too_large`, `multiple_tokens`, a
///    non-string `iss`);
/// 3. `issuer`: a token was sent, but it is not this provider's;
/// 4. `missing`: no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    reason: JwtReason,
    claimed: bool,
}

impl Failure {
    const MISSING: Failure = Failure::unclaimed(JwtReason::Missing);

    const fn unclaimed(reason: JwtReason) -> Self {
        Self {
            reason,
            claimed: false,
        }
    }

    const fn claimed(reason: JwtReason) -> Self {
        Self {
            reason,
            claimed: true,
        }
    }

    fn rank(self) -> u8 {
        match (self.claimed, self.reason) {
            (true, _) => 3,
            (false, JwtReason::Missing) => 0,
            (false, JwtReason::Issuer) => 1,
            (false, _) => 2,
        }
    }

    /// Keeps the more telling of `best` and `next` (the earlier on a tie).
    fn keep(best: &mut Option<Failure>, next: Failure) {
        if best.is_none_or(|b| next.rank() > b.rank()) {
            *best = Some(next);
        }
    }
}

struct Request<'p, 'a, 'c> {
    policy: &'p JwtPolicy,
    facts: &'p RequestFacts<'a>,
    now: i64,
    keys: &'p dyn KeyLookup,
    cache: Option<&'c mut TokenCache>,
    states: Vec<Option<ProviderState<'a>>>,
    needs_keys: Vec<Arc<str>>,
    /// A key set was unavailable and `failure_mode: allow` let the request pass without it.
    degraded: bool,
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
        self.providers.iter().filter(|p| p.copy_of.is_none()).filter_map(|p| {
            p.remote.as_ref().map(|spec| RemoteJwksSource {
                provider: &p.name,
                spec,
            })
        })
    }

    /// Every request header this policy may set from a token (always removed from requests).
    pub fn output_headers(&self) -> &[String] {
        &self.output_headers
    }

    /// Decides for one request at `now` (Unix seconds). `keys` holds the loaded remote key
    /// sets; `cache`, if given, remembers verified tokens across requests of one worker.
    pub fn decide(
        &self,
        facts: &RequestFacts<'_>,
        now: u64,
        keys: &dyn KeyLookup,
        cache: Option<&mut TokenCache>,
    ) -> JwtOutcome {
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
        if facts.headers.len() > self.max_request_headers {
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
            states: vec![None; self.providers.len()],
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

    fn deny(
        &self,
        out: &mut JwtOutcome,
        rule: &CompiledRule<JwtAction>,
        reason: JwtReason,
        facts: &RequestFacts<'_>,
    ) {
        out.decision = Decision::deny(&rule.name, reason.denial());
        out.reason = Some(reason);
        out.client = Some(self.header.client_address.resolve(facts));
        out.set_headers.clear();
        if let Some(v) = reason.www_authenticate(&self.realm) {
            out.response_headers
                .push(("www-authenticate".to_owned(), v));
        }
    }
}

fn is_cors_preflight(facts: &RequestFacts<'_>) -> bool {
    facts.method() == "OPTIONS"
        && facts.header("origin").is_some()
        && facts.header("access-control-request-method").is_some()
}

impl<'a> Request<'_, 'a, '_> {
    fn eval(&mut self, r: &Requirement) -> Eval {
        match r {
            Requirement::Provider(i) => self.eval_provider(*i),
            Requirement::Any(items) => {
                // As in Envoy, `allow_missing` and `allow_missing_or_failed` among alternatives
                // qualify the listed providers (their outcome), rather than accept any
                // provider's token; alone, they stand for themselves over every provider.
                let (mut allow_missing, mut allow_failed) = (false, false);
                let mut best = None;
                let mut listed = 0usize;
                for item in items {
                    match item {
                        Requirement::AllowMissing => allow_missing = true,
                        Requirement::AllowMissingOrFailed => allow_failed = true,
                        _ => {
                            listed += 1;
                            match self.eval(item) {
                                Eval::Pass(v) => return Eval::Pass(v),
                                Eval::Fail(f) => Failure::keep(&mut best, f),
                            }
                        }
                    }
                }
                if listed == 0 {
                    let alone = if allow_failed {
                        Requirement::AllowMissingOrFailed
                    } else {
                        Requirement::AllowMissing
                    };
                    return self.eval(&alone);
                }
                let best = best.unwrap_or(Failure::MISSING);
                if allow_failed || (allow_missing && best == Failure::MISSING) {
                    Eval::Pass(Vec::new())
                } else {
                    Eval::Fail(best)
                }
            }
            Requirement::All(items) => {
                // Every part is evaluated, so the most telling failure is reported (a token
                // that failed rather than another provider's token that is absent).
                let mut verified = Vec::new();
                let mut best = None;
                for item in items {
                    match self.eval(item) {
                        Eval::Pass(v) => {
                            for i in v {
                                if !verified.contains(&i) {
                                    verified.push(i);
                                }
                            }
                        }
                        Eval::Fail(f) => Failure::keep(&mut best, f),
                    }
                }
                match best {
                    Some(f) => Eval::Fail(f),
                    None => Eval::Pass(verified),
                }
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                let mut verified = Vec::new();
                let mut best = None;
                // Every listed provider (not the audience copies of `provider_and_audiences`).
                let listed = self.policy.providers.iter().take_while(|p| p.copy_of.is_none()).count();
                for i in 0..listed {
                    match self.eval_provider(i) {
                        Eval::Pass(v) => verified.extend(v),
                        Eval::Fail(f) => Failure::keep(&mut best, f),
                    }
                }
                if matches!(r, Requirement::AllowMissingOrFailed) {
                    return Eval::Pass(verified);
                }
                match best {
                    // A token its provider refused fails the request, even beside a valid
                    // token of another provider (as in Envoy: every token present must verify).
                    Some(f) if f.claimed => Eval::Fail(f),
                    // What one provider cannot read or does not own, another may have verified.
                    _ if !verified.is_empty() => Eval::Pass(verified),
                    // A token that no provider verified: refused (`issuer` if nobody owns it).
                    Some(f) if f != Failure::MISSING => Eval::Fail(f),
                    _ => Eval::Pass(Vec::new()),
                }
            }
        }
    }

    fn eval_provider(&mut self, i: usize) -> Eval {
        let state = match self.states.get(i) {
            Some(Some(s)) => s.clone(),
            Some(None) => {
                let s = self.check_provider(i);
                if let Some(slot) = self.states.get_mut(i) {
                    *slot = Some(s.clone());
                }
                s
            }
            None => return Eval::Fail(Failure::MISSING),
        };
        match state {
            ProviderState::Missing => Eval::Fail(Failure::MISSING),
            ProviderState::Failed(f) => Eval::Fail(f),
            ProviderState::Unavailable => match self.failure_mode(i) {
                FailureMode::Deny => Eval::Fail(Failure::claimed(JwtReason::JwksUnavailable)),
                FailureMode::Allow => {
                    self.degraded = true;
                    Eval::Pass(Vec::new())
                }
            },
            ProviderState::Verified { .. } => Eval::Pass(vec![i]),
        }
    }

    /// What a request gets while provider `i`'s key set is unavailable: its remote source's
    /// `failure_mode`, else the policy's.
    fn failure_mode(&self, i: usize) -> FailureMode {
        let policy = self.policy.header.failure_mode;
        self.policy.providers.get(i).and_then(|p| p.remote.as_ref()).map_or(policy, |r| r.failure_mode_or(policy))
    }

    fn check_provider(&mut self, i: usize) -> ProviderState<'a> {
        let Some(p) = self.policy.providers.get(i) else {
            return ProviderState::Missing;
        };
        let candidates = match p.sources.extract(self.facts) {
            Extracted::None => return ProviderState::Missing,
            Extracted::Multiple => {
                return ProviderState::Failed(Failure::unclaimed(JwtReason::MultipleTokens))
            }
            Extracted::Some(c) => c,
        };
        // Bound the work before decoding anything.
        if candidates.iter().any(|c| c.token.len() > p.max_token_bytes) {
            return ProviderState::Failed(Failure::unclaimed(JwtReason::TooLarge));
        }
        let single = candidates.len() == 1;
        let mut chosen = None;
        let mut first_failure = None;
        for c in candidates {
            let key = CacheKey::new(i, c.token);
            if let Some(hit) = self
                .cache
                .as_deref_mut()
                .and_then(|cache| cache.get(&key, c.token, self.now))
            {
                if chosen.is_some() {
                    return ProviderState::Failed(Failure::claimed(JwtReason::MultipleTokens));
                }
                chosen = Some((c, key, Ok(hit)));
                continue;
            }
            let parsed = match jose::parse(c.token) {
                Ok(t) => t,
                Err(r) => {
                    first_failure.get_or_insert(r);
                    continue;
                }
            };
            // The issuer first (as Envoy does): a token of another issuer is not ours to verify.
            match claims::issuer(&parsed.claims) {
                Ok(Some(iss)) if iss == p.checks.issuer => {}
                Ok(_) => {
                    first_failure.get_or_insert(JwtReason::Issuer);
                    continue;
                }
                Err(r) => {
                    first_failure.get_or_insert(r);
                    continue;
                }
            }
            if chosen.is_some() {
                return ProviderState::Failed(Failure::claimed(JwtReason::MultipleTokens));
            }
            chosen = Some((c, key, Err(parsed)));
        }
        let Some((c, key, found)) = chosen else {
            // A single token keeps its own failure; among several, none was this provider's.
            let r = if single {
                first_failure
            } else {
                first_failure.map(|_| JwtReason::Issuer)
            };
            return ProviderState::Failed(Failure::unclaimed(r.unwrap_or(JwtReason::Issuer)));
        };
        let (text, locations) = (c.token, c.locations);
        let parsed = match found {
            Ok(hit) => {
                let checked = if hit.claims_hold { Ok(()) } else { p.checks.check(&hit.token.claims, self.now) };
                return match checked {
                    Ok(()) => ProviderState::Verified {
                        token: hit.token,
                        text,
                        locations,
                    },
                    Err(r) => ProviderState::Failed(Failure::claimed(r)),
                };
            }
            Err(parsed) => parsed,
        };
        let set = match &p.local {
            Some(set) => set,
            None => match self.keys.remote_jwks(&p.name) {
                Some(set) => set,
                None => {
                    self.need_keys(&p.name);
                    return ProviderState::Unavailable;
                }
            },
        };
        if let Err(r) = set.verify(&parsed) {
            if r == JwtReason::UnknownKid && p.remote.is_some() {
                self.need_keys(&p.name);
            }
            return ProviderState::Failed(Failure::claimed(r));
        }
        if let Err(r) = p.checks.check(&parsed.claims, self.now) {
            return ProviderState::Failed(Failure::claimed(r));
        }
        let stale_at =
            claims::expiration(&parsed.claims).map(|exp| exp.saturating_add(p.checks.skew));
        let token = Arc::new(VerifiedToken {
            claims: parsed.claims,
        });
        if let Some(c) = self.cache.as_deref_mut() {
            c.insert(key, text, Arc::clone(&token), stale_at, self.now);
        }
        ProviderState::Verified {
            token,
            text,
            locations,
        }
    }

    fn need_keys(&mut self, name: &Arc<str>) {
        if !self.needs_keys.contains(name) {
            self.needs_keys.push(Arc::clone(name));
        }
    }

    fn verified_token(&self, i: usize) -> Option<&Arc<VerifiedToken>> {
        match self.states.get(i) {
            Some(Some(ProviderState::Verified { token, .. })) => Some(token),
            _ => None,
        }
    }

    /// The rule's `scopes` and `claims`, checked against the first verified token.
    fn check_rule_claims(&self, action: &JwtAction, verified: &[usize]) -> Result<(), JwtReason> {
        if action.scopes.is_empty() && action.claims.is_empty() {
            return Ok(());
        }
        let Some(token) = verified.first().and_then(|i| self.verified_token(*i)) else {
            // No verified token: only a key set outage under `failure_mode: allow` skips the checks.
            return if self.degraded {
                Ok(())
            } else {
                Err(JwtReason::Missing)
            };
        };
        if !claims::has_scopes(&token.claims, &action.scopes) {
            return Err(JwtReason::Scope);
        }
        for (name, cond) in &action.claims {
            let Some(value) = claims::lookup(&token.claims, name) else {
                return Err(JwtReason::Claim);
            };
            let ok = match cond {
                ClaimCondition::Equals(want) => claims::value_equals(value, want),
                ClaimCondition::In(list) => list.iter().any(|w| claims::value_equals(value, w)),
                ClaimCondition::EqualsHeader(h) => self
                    .facts
                    .header(h)
                    .is_some_and(|want| claims::value_equals(value, want)),
            };
            if !ok {
                return Err(JwtReason::Claim);
            }
        }
        Ok(())
    }

    /// Headers for the upstream: claims, payload, and the token removed unless forwarded.
    fn forward(&self, verified: &[usize], out: &mut JwtOutcome) {
        let mut strip_params: Vec<String> = Vec::new();
        let mut strip_cookies: Vec<String> = Vec::new();
        for &i in verified {
            let (
                Some(p),
                Some(Some(ProviderState::Verified {
                    token,
                    text,
                    locations,
                })),
            ) = (self.policy.providers.get(i), self.states.get(i))
            else {
                continue;
            };
            if !out.verified.contains(&p.name) {
                out.verified.push(Arc::clone(&p.name));
            }
            if let Some(h) = &p.payload_header {
                let payload = text.split('.').nth(1).unwrap_or("");
                let mut value = payload.to_owned();
                if p.pad_payload {
                    // base64url with `=` padding to a multiple of 4 (Envoy's
                    // pad_forward_payload_header); the token's own segment has none.
                    value.extend(std::iter::repeat_n('=', (4 - payload.len() % 4) % 4));
                }
                set_header(out, h, value);
            }
            for (claim, header) in &p.claim_headers {
                if let Some(v) = claims::lookup(&token.claims, claim).and_then(claim_header_value) {
                    set_header(out, header, v);
                }
            }
            if p.forward {
                continue;
            }
            for loc in locations {
                match loc {
                    Location::Header(h) => {
                        if !out.remove_headers.contains(h) {
                            out.remove_headers.push(h.clone());
                        }
                    }
                    Location::Param(n) => strip_params.push(n.clone()),
                    Location::Cookie(n) => strip_cookies.push(n.clone()),
                }
            }
        }
        if !strip_params.is_empty() {
            let path = path_without_params(self.facts.header(":path").unwrap_or(""), &strip_params);
            set_header(out, ":path", path);
        }
        if !strip_cookies.is_empty() {
            // Every `cookie` header goes, then the rest comes back as one: replacing a header
            // does not remove its other values on every host, and the token may be in any.
            if !out.remove_headers.iter().any(|h| h == "cookie") {
                out.remove_headers.push("cookie".to_owned());
            }
            if let Some(c) = cookies_without(self.facts, &strip_cookies) {
                set_header(out, "cookie", c);
            }
        }
    }
}

fn set_header(out: &mut JwtOutcome, name: &str, value: String) {
    match out.set_headers.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => out.set_headers.push((name.to_owned(), value)),
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON text, objects
/// and arrays as base64url of their JSON; `None` for null, control characters (a header
/// injection) or a value longer than [`MAX_CLAIM_HEADER_BYTES`].
fn claim_header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(_) | Value::Object(_) => b64::encode(v.to_string().as_bytes()),
    };
    let clean = !s.chars().any(|c| c.is_control());
    (clean && s.len() <= MAX_CLAIM_HEADER_BYTES).then_some(s)
}
