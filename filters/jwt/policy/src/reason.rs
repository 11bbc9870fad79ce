//! Why a request failed JWT authentication: one fixed snake_case string per reason, logged and
//! counted (`gatewarden_jwt_denied_<reason>`), never sent to the client.

use gatewarden_policy::decision::{Denial, FORBIDDEN_BODY, UNAUTHORIZED_BODY};

/// The public body of a 431 (too many request headers).
pub const TOO_MANY_HEADERS_BODY: &str = r#"{"error":"request_header_fields_too_large","message":"too many request headers"}"#;

/// Why a token (or a request) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtReason {
    /// No token where the provider looks for one. 401 without `error=`.
    Missing,
    /// Not a compact JWS: wrong shape, bad base64url, header or payload not a JSON object,
    /// `crit` present, header fields of the wrong type.
    Malformed,
    /// Longer than the provider's `max_token_bytes`; refused before any decoding.
    TooLarge,
    /// More request headers than `max_request_headers`. 431.
    TooManyHeaders,
    /// Different tokens in several of one provider's sources (RFC 6750 §2: one method only).
    MultipleTokens,
    /// `alg` is `none`, unknown, or fits no key of the provider (type or JWK `alg`).
    AlgNotAllowed,
    /// The token's `kid` is in no loaded key set of the provider.
    UnknownKid,
    /// No candidate key verifies the signature.
    BadSignature,
    /// A registered claim has the wrong JSON type (`exp: "123"`, `aud: 5`, `iss: []` …).
    ClaimType,
    /// `exp` is past (with the clock skew).
    Expired,
    /// `nbf` or `iat` is in the future (with the clock skew).
    NotYetValid,
    /// No `exp` while the provider requires one.
    NoExpiration,
    /// `exp - iat` (or `exp - now` without `iat`) exceeds `max_lifetime_seconds`.
    LifetimeTooLong,
    /// `iss` is absent or not the provider's issuer.
    Issuer,
    /// None of the token's audiences is allowed. 403.
    Audience,
    /// `sub` is absent or not allowed. 403.
    Subject,
    /// A required scope is missing. 403 with `error="insufficient_scope"`.
    Scope,
    /// A claim requirement of the rule fails. 403.
    Claim,
    /// The provider's remote key set is not loaded (and `failure_mode` is `deny`). 401 without `error=`.
    JwksUnavailable,
}

impl JwtReason {
    pub const ALL: [JwtReason; 19] = [
        Self::Missing,
        Self::Malformed,
        Self::TooLarge,
        Self::TooManyHeaders,
        Self::MultipleTokens,
        Self::AlgNotAllowed,
        Self::UnknownKid,
        Self::BadSignature,
        Self::ClaimType,
        Self::Expired,
        Self::NotYetValid,
        Self::NoExpiration,
        Self::LifetimeTooLong,
        Self::Issuer,
        Self::Audience,
        Self::Subject,
        Self::Scope,
        Self::Claim,
        Self::JwksUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::MultipleTokens => "multiple_tokens",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::ClaimType => "claim_type",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::NoExpiration => "no_expiration",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Subject => "subject",
            Self::Scope => "scope",
            Self::Claim => "claim",
            Self::JwksUnavailable => "jwks_unavailable",
        }
    }

    /// 401, 403 or 431.
    pub const fn status(self) -> u16 {
        match self {
            Self::Audience | Self::Subject | Self::Scope | Self::Claim => 403,
            Self::TooManyHeaders => 431,
            _ => 401,
        }
    }

    /// The fixed public response of this reason.
    pub const fn denial(self) -> Denial {
        let body = match self.status() {
            403 => FORBIDDEN_BODY,
            431 => TOO_MANY_HEADERS_BODY,
            _ => UNAUTHORIZED_BODY,
        };
        Denial { status: self.status(), body, reason: self.as_str() }
    }

    /// The `error` attribute of `WWW-Authenticate` (RFC 6750 §3.1), if any.
    pub const fn bearer_error(self) -> Option<&'static str> {
        match self {
            // No token: the client did not try, so no error code (RFC 6750 §3.1).
            Self::Missing | Self::JwksUnavailable | Self::TooManyHeaders => None,
            Self::Scope => Some("insufficient_scope"),
            Self::Audience | Self::Subject | Self::Claim => None,
            _ => Some("invalid_token"),
        }
    }

    /// The `WWW-Authenticate` value for this reason, if the response carries one (every 401,
    /// and the 403 of a missing scope).
    pub fn www_authenticate(self, realm: &str) -> Option<String> {
        match (self.status(), self.bearer_error()) {
            (401, None) => Some(format!("Bearer realm=\"{realm}\"")),
            (401 | 403, Some(e)) => Some(format!("Bearer realm=\"{realm}\", error=\"{e}\"")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in JwtReason::ALL {
            assert!(r.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r:?}");
            assert!(seen.insert(r.as_str()), "duplicate {r:?}");
        }
    }

    #[test]
    fn www_authenticate_has_error_only_when_a_token_was_tried() {
        assert_eq!(JwtReason::Missing.www_authenticate("api").as_deref(), Some("Bearer realm=\"api\""));
        assert_eq!(JwtReason::Expired.www_authenticate("api").as_deref(), Some("Bearer realm=\"api\", error=\"invalid_token\""));
        assert_eq!(JwtReason::Scope.www_authenticate("api").as_deref(), Some("Bearer realm=\"api\", error=\"insufficient_scope\""));
        assert_eq!(JwtReason::Audience.www_authenticate("api"), None);
    }
}
