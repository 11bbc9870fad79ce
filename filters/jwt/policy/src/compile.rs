//! Compiling the JWT document: cross-field checks with exact messages, keys parsed once.

use std::sync::Arc;

use serde_json::Value;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::remote::{RemoteSource, ResourceKind};

use super::claims::{ClaimChecks, Subjects};
use super::config::{ClaimRequirementSpec, ProviderSpec, RequirementSpec, SubjectsSpec};
use super::extract::Sources;
use super::jwk::JwksSet;

/// A remote JWKS as a remote resource: refreshed every 10 minutes, at most 256 KiB by default
/// (16 MiB at most), fetched early (rate-limited) when a token names a `kid` the set lacks.
pub const JWKS: ResourceKind = ResourceKind {
    name: "jwks",
    label: "JWKS",
    default_refresh_seconds: 600,
    default_timeout_ms: 5_000,
    default_max_bytes: 256 << 10,
    max_max_bytes: 16 << 20,
    early_refetch: true,
};

/// Deepest nesting of `requires_any` / `requires_all`.
pub(crate) const MAX_REQUIREMENT_DEPTH: usize = 8;

#[derive(Debug, Clone)]
pub(crate) struct Provider {
    pub name: Arc<str>,
    pub checks: ClaimChecks,
    pub sources: Sources,
    pub local: Option<JwksSet>,
    pub remote: Option<RemoteSource>,
    pub forward: bool,
    pub payload_header: Option<String>,
    /// `pad_forward_payload_header`: add base64 `=` padding to the forwarded payload.
    pub pad_payload: bool,
    /// (claim path, lowercase header name)
    pub claim_headers: Vec<(String, String)>,
    pub max_token_bytes: usize,
    /// For a `provider_and_audiences` requirement: the index of the provider this one copies,
    /// with other audiences. Such a copy shares the provider's name and key set, and is not
    /// listed, fetched for, or counted among "any provider" (`allow_missing`).
    pub copy_of: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) enum Requirement {
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    AllowMissing,
    AllowMissingOrFailed,
}

#[derive(Debug, Clone)]
pub(crate) enum ClaimCondition {
    Equals(String),
    In(Vec<String>),
    /// Lowercase header name.
    EqualsHeader(String),
}

#[derive(Debug, Clone)]
pub(crate) struct JwtAction {
    pub requires: Option<Requirement>,
    pub scopes: Vec<String>,
    pub claims: Vec<(String, ClaimCondition)>,
    pub cors_preflight_passes: bool,
}

/// A header name we may read or write: an RFC 9110 token, not a pseudo-header. Lowercased.
pub(crate) fn header_name(name: &str, path: &FieldPath) -> Result<String, ConfigError> {
    let ok = !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(path.error(format!("invalid header name {}", quote(name))))
    }
}

/// Headers a token may not set (every output header is also removed from every request):
/// message framing, routing and proxy control, and Gatewarden's own decision headers.
const RESERVED_OUTPUT_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-for",
];
const RESERVED_OUTPUT_PREFIXES: [&str; 2] = ["x-envoy-", "x-gatewarden-"];

/// A header the policy writes from a token: a valid name that is not reserved. Lowercased.
fn output_header_name(name: &str, path: &FieldPath) -> Result<String, ConfigError> {
    let name = header_name(name, path)?;
    if RESERVED_OUTPUT_HEADERS.contains(&name.as_str()) || RESERVED_OUTPUT_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(path.error(format!(
            "header {} is reserved: framing, routing and proxy headers (host, content-length, \
             transfer-encoding, connection, keep-alive, proxy-connection, te, trailer, upgrade, \
             x-forwarded-for, x-envoy-*) and Gatewarden's own (x-gatewarden-*) cannot be set \
             from a token",
            quote(&name)
        )));
    }
    Ok(name)
}

pub(crate) fn validate_provider_name(name: &str, path: &FieldPath) -> Result<(), ConfigError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(path.error(format!("invalid provider name {}: use 1 to 64 characters from A-Z a-z 0-9 - _ .", quote(name))))
    }
}

fn claim_path(claim: &str, path: &FieldPath) -> Result<String, ConfigError> {
    if claim.is_empty() || claim.len() > 256 || claim.split('.').any(str::is_empty) {
        return Err(path.error(format!("invalid claim path {}: use names separated by \".\"", quote(claim))));
    }
    Ok(claim.to_owned())
}

pub(crate) fn compile_provider(name: &str, spec: &ProviderSpec, path: &FieldPath) -> Result<Provider, ConfigError> {
    if spec.issuer.is_empty() {
        return Err(path.field("issuer").error("empty issuer"));
    }
    for (i, a) in spec.audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(path.field("audiences").index(i).error("empty audience"));
        }
    }
    let subjects = match &spec.subjects {
        None => None,
        Some(SubjectsSpec::List(list)) => {
            if list.is_empty() {
                return Err(path.field("subjects").error("empty subject list: omit \"subjects\" to allow any"));
            }
            Some(Subjects::List(list.clone()))
        }
        Some(SubjectsSpec::Prefix(p)) => {
            if p.prefix.is_empty() {
                return Err(path.field("subjects").field("prefix").error("empty prefix: omit \"subjects\" to allow any"));
            }
            Some(Subjects::Prefix(p.prefix.clone()))
        }
    };
    let local = match (&spec.local_jwks, &spec.remote_jwks) {
        (Some(_), Some(_)) | (None, None) => return Err(path.error("give exactly one of local_jwks, remote_jwks")),
        (Some(v), None) => Some(compile_local_jwks(v, &path.field("local_jwks"))?),
        (None, Some(_)) => None,
    };
    let remote = match &spec.remote_jwks {
        Some(r) => Some(RemoteSource::compile(r, &path.field("remote_jwks"), &JWKS)?),
        None => None,
    };

    let mut headers = Vec::with_capacity(spec.from_headers.len());
    for (i, h) in spec.from_headers.iter().enumerate() {
        let hp = path.field("from_headers").index(i);
        let name = header_name(&h.name, &hp.field("name"))?;
        if h.value_prefix.as_deref() == Some("") {
            return Err(hp.field("value_prefix").error("empty prefix: omit \"value_prefix\" to take the whole value"));
        }
        headers.push((name, h.value_prefix.clone()));
    }
    for (i, p) in spec.from_params.iter().enumerate() {
        if p.is_empty() || p.bytes().any(|b| b"&=#?% ".contains(&b) || b.is_ascii_control()) {
            return Err(path.field("from_params").index(i).error(format!("invalid query parameter name {}", quote(p))));
        }
    }
    for (i, c) in spec.from_cookies.iter().enumerate() {
        if c.is_empty() || c.bytes().any(|b| b"=;, \"".contains(&b) || !b.is_ascii_graphic()) {
            return Err(path.field("from_cookies").index(i).error(format!("invalid cookie name {}", quote(c))));
        }
    }
    if headers.is_empty() && spec.from_params.is_empty() && spec.from_cookies.is_empty() {
        headers.push(("authorization".to_owned(), Some("Bearer ".to_owned())));
    }

    let payload_header =
        spec.forward_payload_header.as_deref().map(|h| output_header_name(h, &path.field("forward_payload_header"))).transpose()?;
    if spec.pad_forward_payload_header && payload_header.is_none() {
        return Err(path.field("pad_forward_payload_header").error("true needs forward_payload_header"));
    }
    let mut claim_headers = Vec::with_capacity(spec.claim_to_headers.len());
    for (i, c) in spec.claim_to_headers.iter().enumerate() {
        let cp = path.field("claim_to_headers").index(i);
        claim_headers.push((claim_path(&c.claim, &cp.field("claim"))?, output_header_name(&c.header, &cp.field("header"))?));
    }
    if spec.clock_skew_seconds > 86_400 {
        return Err(path.field("clock_skew_seconds").error(format!("{} is more than the maximum 86400", spec.clock_skew_seconds)));
    }
    if spec.max_lifetime_seconds == Some(0) {
        return Err(path.field("max_lifetime_seconds").error("0 is less than the minimum 1"));
    }
    if !(16..=65_536).contains(&spec.max_token_bytes) {
        return Err(path.field("max_token_bytes").error(format!("{} is outside 16..=65536", spec.max_token_bytes)));
    }
    Ok(Provider {
        name: Arc::from(name),
        checks: ClaimChecks {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            subjects,
            skew: i64::try_from(spec.clock_skew_seconds).unwrap_or(86_400),
            require_expiration: spec.require_expiration,
            max_lifetime: spec.max_lifetime_seconds.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        },
        sources: Sources { headers, params: spec.from_params.clone(), cookies: spec.from_cookies.clone() },
        local,
        remote,
        forward: spec.forward,
        payload_header,
        pad_payload: spec.pad_forward_payload_header,
        claim_headers,
        max_token_bytes: spec.max_token_bytes,
        copy_of: None,
    })
}

fn compile_local_jwks(v: &Value, path: &FieldPath) -> Result<JwksSet, ConfigError> {
    let set = match v {
        Value::Object(_) => JwksSet::from_value(v),
        Value::String(s) => JwksSet::parse(s.as_bytes()),
        _ => return Err(path.error("a JWKS object or a string holding one is required")),
    };
    set.map_err(|e| path.error(format!("invalid JWKS: {e}")))
}

/// Compiles a requirement against the document's `providers`. A `provider_and_audiences`
/// becomes a copy of the provider with those audiences, added to `copies` (base index,
/// audiences) and referred to by index `providers.len() + k`; equal copies are shared.
pub(crate) fn compile_requirement(
    spec: &RequirementSpec,
    providers: &[Provider],
    copies: &mut Vec<(usize, Vec<String>)>,
    path: &FieldPath,
    depth: usize,
) -> Result<Requirement, ConfigError> {
    if depth > MAX_REQUIREMENT_DEPTH {
        return Err(path.error(format!("requirements nested deeper than {MAX_REQUIREMENT_DEPTH}")));
    }
    fn list(
        items: &[RequirementSpec],
        providers: &[Provider],
        copies: &mut Vec<(usize, Vec<String>)>,
        path: &FieldPath,
        depth: usize,
    ) -> Result<Vec<Requirement>, ConfigError> {
        if items.is_empty() {
            return Err(path.error("empty list"));
        }
        items.iter().enumerate().map(|(i, r)| compile_requirement(r, providers, copies, &path.index(i), depth + 1)).collect()
    }
    let provider_index = |name: &str, path: &FieldPath| -> Result<usize, ConfigError> {
        providers.iter().position(|p| &*p.name == name).ok_or_else(|| path.error(format!("unknown provider {}", quote(name))))
    };
    Ok(match spec {
        RequirementSpec::Provider(name) => Requirement::Provider(provider_index(name, &path.field("provider"))?),
        RequirementSpec::ProviderAndAudiences(pa) => {
            let path = path.field("provider_and_audiences");
            let base = provider_index(&pa.provider, &path.field("provider"))?;
            if pa.audiences.is_empty() {
                return Err(path.field("audiences").error("empty list: use {\"provider\": ...} for the provider's own audiences"));
            }
            if let Some(i) = pa.audiences.iter().position(String::is_empty) {
                return Err(path.field("audiences").index(i).error("empty audience"));
            }
            let copy = (base, pa.audiences.clone());
            let k = match copies.iter().position(|c| *c == copy) {
                Some(k) => k,
                None => {
                    copies.push(copy);
                    copies.len() - 1
                }
            };
            Requirement::Provider(providers.len() + k)
        }
        RequirementSpec::RequiresAny(items) => Requirement::Any(list(items, providers, copies, &path.field("requires_any"), depth)?),
        RequirementSpec::RequiresAll(items) => Requirement::All(list(items, providers, copies, &path.field("requires_all"), depth)?),
        RequirementSpec::AllowMissing => Requirement::AllowMissing,
        RequirementSpec::AllowMissingOrFailed => Requirement::AllowMissingOrFailed,
    })
}

pub(crate) fn compile_scopes(scopes: &[String], path: &FieldPath) -> Result<Vec<String>, ConfigError> {
    for (i, s) in scopes.iter().enumerate() {
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(path.index(i).error(format!("invalid scope {}: one scope without spaces", quote(s))));
        }
    }
    Ok(scopes.to_vec())
}

pub(crate) fn compile_claim_requirement(c: &ClaimRequirementSpec, path: &FieldPath) -> Result<(String, ClaimCondition), ConfigError> {
    let name = claim_path(&c.name, &path.field("name"))?;
    let cond = match (&c.equals, &c.one_of, &c.equals_header) {
        (Some(v), None, None) => ClaimCondition::Equals(v.clone()),
        (None, Some(list), None) => {
            if list.is_empty() {
                return Err(path.field("in").error("empty list"));
            }
            ClaimCondition::In(list.clone())
        }
        (None, None, Some(h)) => ClaimCondition::EqualsHeader(header_name(h, &path.field("equals_header"))?),
        _ => return Err(path.error("give exactly one of equals, in, equals_header")),
    };
    Ok((name, cond))
}
