//! The JWT authentication filter's policy: Envoy `jwt_authn` semantics, host-independent.
//!
//! ```ignore
//! let policy: JwtPolicy = compile(bytes)?;            // keys of local_jwks parsed here, once
//! let mut cache = policy.new_token_cache();           // one per worker
//! for src in policy.remote_jwks() { /* glue fetches src.spec, then */ keys.set(src.provider, Arc::new(JwksSet::parse(&body)?)) }
//! let out = policy.decide(&facts, now_unix_seconds, &keys, Some(&mut cache));
//! // out.decision (allow / 401 / 403 / 431), out.remove_headers then out.set_headers on the
//! // request, out.response_headers on a denial, out.needs_keys ⇒ (rate-limited) refetch.
//! ```
//!
//! Per request: the first matching rule (or `default`) decides.
//! 1. More than `max_request_headers` headers: 431 `too_many_headers`.
//! 2. A rule without `requires` needs no token. A CORS preflight (`OPTIONS` with `origin` and
//!    `access-control-request-method`) passes unless `cors_preflight_passes: false`.
//! 3. `requires` is evaluated like Envoy's `JwtRequirement`. A provider's token is looked for
//!    in all its sources (`extract.rs`); tokens of another `iss` are not its tokens; two
//!    different tokens of its issuer are `multiple_tokens`; a token longer than
//!    `max_token_bytes` is `too_large` before any decoding. The token is parsed ([`jose`]),
//!    its issuer checked, its signature verified with the provider's keys ([`jwk`]), then its
//!    claims (`claims.rs`). `requires_any` passes if one passes; `requires_all` needs all;
//!    `allow_missing` passes when no provider refuses a token of its own and a token present
//!    verifies for some provider; `allow_missing_or_failed` always passes (among the
//!    alternatives of a `requires_any`, these two qualify the listed providers, as in Envoy,
//!    instead of looking at every provider). A failed
//!    requirement reports its most telling failure, at every nesting level (`policy::Failure`):
//!    a token refused by the provider its `iss` names (`expired`, `audience`, …), else a token
//!    nobody could read (`malformed`, `too_large`, …), else `issuer`, else `missing`; the
//!    earliest among equals. So the reason, counter and status are those of the token's own
//!    provider, whatever the order of the alternatives.
//! 4. A remote key set not loaded yet: `failure_mode: deny` ⇒ 401 `jwks_unavailable`;
//!    `failure_mode: allow` ⇒ that provider's requirement passes without a token (and the
//!    rule's `scopes`/`claims`, which need one, are skipped). Either way `needs_keys` names it.
//! 5. The rule's `scopes` and `claims` are checked against the first verified token (403).
//! 6. Allowed: `claim_to_headers` and `forward_payload_header` (optionally `=`-padded) are set
//!    from verified tokens; the token is removed from everywhere it was found unless `forward`.
//!    Every header the policy can set is always removed from the request first, so a client
//!    cannot forge one.
//!
//! A denial carries the client for the decision log (`JwtOutcome::client`), resolved with the
//! policy's `client_address` settings; it never changes the decision.
//!
//! Responses: 401 with `WWW-Authenticate: Bearer realm="…"` (plus `error="invalid_token"` when a
//! token was presented and refused), 403 for audience, subject, scope (`error="insufficient_scope"`)
//! and claim failures; bodies are fixed; the reason ([`JwtReason`]) is only logged and counted.
//!
//! Choices where Envoy is silent or differs: `require_expiration` defaults to true (Envoy:
//! false); `exp` is RFC 7519-exact (refused at `now >= exp + skew`; Envoy accepts that second);
//! an `iat` in the future (beyond the skew) is refused; RSA keys must be 2048 to 4096 bits and
//! `oct` keys at least as long as the hash; a token without `kid` is tried against at most 8
//! keys of its type; `crit` headers are refused.

#![forbid(unsafe_code)]

pub mod adapter;
pub mod b64;
mod cache;
mod claims;
mod compile;
mod config;
pub mod es256;
mod evaluate;
mod extract;
mod forward;
pub mod jose;
pub mod jwk;
mod keys;
mod policy;
mod reason;

pub use cache::{TokenCache, VerifiedToken};
pub use compile::JWKS;
pub use config::{
    ClaimRequirementSpec, ClaimToHeaderSpec, HeaderSourceSpec, JwtDocument, JwtRule, ProviderAndAudiencesSpec, ProviderSpec,
    RemoteJwksSpec, RequirementSpec, SubjectPrefix, SubjectsSpec,
};
pub use forward::MAX_CLAIM_HEADER_BYTES;
pub use jose::Alg;
pub use jwk::{JwksError, JwksSet, SkippedKey};
pub use keys::{KeyLookup, NoRemoteKeys, RemoteKeys};
pub use policy::{JwtOutcome, JwtPolicy, RemoteJwksSource};
pub use reason::{JwtReason, TOO_MANY_HEADERS_BODY};
