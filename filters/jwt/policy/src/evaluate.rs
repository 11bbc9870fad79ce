//! Evaluating a rule's requirement for one request: each provider's token found, verified and
//! checked at most once ([`Request`]), `requires_any` / `requires_all` / `allow_missing`
//! combined, the most telling failure kept ([`Failure`]), the rule's scopes and claims checked.

use std::sync::Arc;

use gatewarden_policy::document::FailureMode;
use gatewarden_policy::facts::RequestFacts;
use smallvec::{smallvec, SmallVec};

use super::cache::{CacheKey, TokenCache, VerifiedToken};
use super::claims;
use super::compile::{ClaimCondition, JwtAction, Requirement};
use super::extract::{Extracted, Locations};
use super::jose;
use super::keys::KeyLookup;
use super::policy::JwtPolicy;
use super::reason::JwtReason;

/// A provider's result for one request.
#[derive(Debug, Clone)]
pub(crate) enum ProviderState<'a> {
    Missing,
    Failed(Failure),
    /// The remote key set is not loaded.
    Unavailable,
    Verified {
        token: Arc<VerifiedToken>,
        text: &'a str,
        locations: Locations,
    },
}

/// The indices of the providers whose tokens verified (rarely more than one), inline.
pub(crate) type Verified = SmallVec<[usize; 2]>;

/// Each provider's state, by index (`None`: not looked at yet), inline for two providers.
pub(crate) type States<'a> = SmallVec<[Option<ProviderState<'a>>; 2]>;

pub(crate) enum Eval {
    /// Passed, with the indices of the providers whose tokens verified.
    Pass(Verified),
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
pub(crate) struct Failure {
    pub(crate) reason: JwtReason,
    claimed: bool,
}

impl Failure {
    const MISSING: Failure = Failure::unclaimed(JwtReason::Missing);

    const fn unclaimed(reason: JwtReason) -> Self {
        Self { reason, claimed: false }
    }

    const fn claimed(reason: JwtReason) -> Self {
        Self { reason, claimed: true }
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

pub(crate) struct Request<'p, 'a, 'c> {
    pub(crate) policy: &'p JwtPolicy,
    pub(crate) facts: &'p RequestFacts<'a>,
    pub(crate) now: i64,
    pub(crate) keys: &'p dyn KeyLookup,
    pub(crate) cache: Option<&'c mut TokenCache>,
    pub(crate) states: States<'a>,
    pub(crate) needs_keys: Vec<Arc<str>>,
    /// A key set was unavailable and `failure_mode: allow` let the request pass without it.
    pub(crate) degraded: bool,
}

impl<'a> Request<'_, 'a, '_> {
    pub(crate) fn eval(&mut self, r: &Requirement) -> Eval {
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
                    let alone = if allow_failed { Requirement::AllowMissingOrFailed } else { Requirement::AllowMissing };
                    return self.eval(&alone);
                }
                let best = best.unwrap_or(Failure::MISSING);
                if allow_failed || (allow_missing && best == Failure::MISSING) {
                    Eval::Pass(Verified::new())
                } else {
                    Eval::Fail(best)
                }
            }
            Requirement::All(items) => {
                // Every part is evaluated, so the most telling failure is reported (a token
                // that failed rather than another provider's token that is absent).
                let mut verified = Verified::new();
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
                let mut verified = Verified::new();
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
                    _ => Eval::Pass(Verified::new()),
                }
            }
        }
    }

    fn eval_provider(&mut self, i: usize) -> Eval {
        // Checked once per request, then read where it is kept (no copy of its token locations).
        if matches!(self.states.get(i), Some(None)) {
            let s = self.check_provider(i);
            if let Some(slot) = self.states.get_mut(i) {
                *slot = Some(s);
            }
        }
        let mut degraded = false;
        let eval = match self.states.get(i) {
            Some(Some(ProviderState::Missing)) | Some(None) | None => Eval::Fail(Failure::MISSING),
            Some(Some(ProviderState::Failed(f))) => Eval::Fail(*f),
            Some(Some(ProviderState::Unavailable)) => match self.failure_mode(i) {
                FailureMode::Deny => Eval::Fail(Failure::claimed(JwtReason::JwksUnavailable)),
                FailureMode::Allow => {
                    degraded = true;
                    Eval::Pass(Verified::new())
                }
            },
            Some(Some(ProviderState::Verified { .. })) => Eval::Pass(smallvec![i]),
        };
        self.degraded |= degraded;
        eval
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
            Extracted::Multiple => return ProviderState::Failed(Failure::unclaimed(JwtReason::MultipleTokens)),
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
            if let Some(hit) = self.cache.as_deref_mut().and_then(|cache| cache.get(&key, c.token, self.now)) {
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
            let r = if single { first_failure } else { first_failure.map(|_| JwtReason::Issuer) };
            return ProviderState::Failed(Failure::unclaimed(r.unwrap_or(JwtReason::Issuer)));
        };
        let (text, locations) = (c.token, c.locations);
        let parsed = match found {
            Ok(hit) => {
                let checked = if hit.claims_hold { Ok(()) } else { p.checks.check(&hit.token.claims, self.now) };
                return match checked {
                    Ok(()) => ProviderState::Verified { token: hit.token, text, locations },
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
        let stale_at = claims::expiration(&parsed.claims).map(|exp| exp.saturating_add(p.checks.skew));
        let token = Arc::new(VerifiedToken { claims: parsed.claims });
        if let Some(c) = self.cache.as_deref_mut() {
            c.insert(key, text, Arc::clone(&token), stale_at, self.now);
        }
        ProviderState::Verified { token, text, locations }
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
    pub(crate) fn check_rule_claims(&self, action: &JwtAction, verified: &[usize]) -> Result<(), JwtReason> {
        if action.scopes.is_empty() && action.claims.is_empty() {
            return Ok(());
        }
        let Some(token) = verified.first().and_then(|i| self.verified_token(*i)) else {
            // No verified token: only a key set outage under `failure_mode: allow` skips the checks.
            return if self.degraded { Ok(()) } else { Err(JwtReason::Missing) };
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
                ClaimCondition::EqualsHeader(h) => self.facts.header(h).is_some_and(|want| claims::value_equals(value, want)),
            };
            if !ok {
                return Err(JwtReason::Claim);
            }
        }
        Ok(())
    }
}
