//! The compiled IP/geo policy and its decision (semantics in the module docs of [`super`]).

use std::net::IpAddr;

use gatewarden_policy::cidr::CidrTable;
use gatewarden_policy::client_address::ClientAddressError;
use gatewarden_policy::decision::{Decision, Denial, FORBIDDEN_BODY};
use gatewarden_policy::document::{FailureMode, FilterPolicy, Header};
use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::{HeaderNeeds, RequestFacts};
use gatewarden_policy::remote::{RemoteSource, ResourceKind};
use gatewarden_policy::rules::RuleSet;

use super::config::{IpGeoDocument, IpGeoRule, UnknownCountry};
use super::geo_db::{CountryCode, GeoDb};

/// Why the IP/geo filter denied a request. Each is a counter `gatewarden_ip_geo_denied_<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpGeoReason {
    ClientAddressInvalid,
    IpDenied,
    IpNotAllowed,
    CountryDenied,
    CountryNotAllowed,
    CountryUnknown,
    GeoUnavailable,
}

impl IpGeoReason {
    pub const ALL: [IpGeoReason; 7] = [
        Self::ClientAddressInvalid,
        Self::IpDenied,
        Self::IpNotAllowed,
        Self::CountryDenied,
        Self::CountryNotAllowed,
        Self::CountryUnknown,
        Self::GeoUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientAddressInvalid => "client_address_invalid",
            Self::IpDenied => "ip_denied",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::CountryDenied => "country_denied",
            Self::CountryNotAllowed => "country_not_allowed",
            Self::CountryUnknown => "country_unknown",
            Self::GeoUnavailable => "geo_unavailable",
        }
    }

    /// Every IP/geo denial is a 403 with the same fixed body.
    pub const fn denial(self) -> Denial {
        Denial { status: 403, body: FORBIDDEN_BODY, reason: self.as_str() }
    }
}

#[derive(Debug, Clone)]
struct IpGeoAction {
    allow: CidrTable,
    deny: CidrTable,
    allow_countries: CountrySet,
    deny_countries: CountrySet,
    unknown_country: Option<UnknownCountry>,
}

impl IpGeoAction {
    fn uses_countries(&self) -> bool {
        !self.allow_countries.is_empty() || !self.deny_countries.is_empty()
    }
}

/// What the IP/geo policy decided, and about whom (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpGeoOutcome {
    pub decision: Decision,
    pub client: Option<IpAddr>,
    pub country: Option<CountryCode>,
}

/// A compiled IP/geo policy.
#[derive(Debug, Clone)]
pub struct IpGeoPolicy {
    header: Header,
    rules: RuleSet<IpGeoAction>,
    geo_database: Option<RemoteSource>,
}

/// The country database as a remote resource: refreshed daily, up to 1 GiB (64 MiB by default).
pub const GEO_DB: ResourceKind = ResourceKind {
    name: "geo_db",
    label: "geo database",
    default_refresh_seconds: 86_400,
    default_timeout_ms: 10_000,
    default_max_bytes: 64 << 20,
    max_max_bytes: 1 << 30,
    early_refetch: false,
};

impl FilterPolicy for IpGeoPolicy {
    const NAME: &'static str = "ip_geo";
    type Document = IpGeoDocument;

    fn compile(doc: IpGeoDocument) -> Result<Self, ConfigError> {
        let header = Header::compile(&doc, Self::NAME)?;
        let geo_database = match &doc.geo_database {
            Some(spec) => Some(RemoteSource::compile(spec, &FieldPath::root().field("geo_database"), &GEO_DB)?),
            None => None,
        };
        let rules = RuleSet::compile(&doc.rules, &doc.default, |rule, path| {
            let action = compile_action(rule, path)?;
            if action.uses_countries() && geo_database.is_none() {
                let field = if rule.allow_countries.is_empty() { "deny_countries" } else { "allow_countries" };
                return Err(path.field(field).error("country rules need a geo_database to be configured"));
            }
            Ok(action)
        })?;
        Ok(Self { header, rules, geo_database })
    }

    fn header(&self) -> &Header {
        &self.header
    }

    fn check_candidate(&self, candidate: &Self) -> Result<(), ConfigError> {
        match &candidate.geo_database {
            Some(src) if Some(src) != self.geo_database.as_ref() => Err(FieldPath::root().field("geo_database").error(format!(
                "a candidate must use the active policy's geo_database (cluster {}, path {}): the database is fetched for the active policy; change the source in a policy without rollout",
                quote(&src.upstream),
                quote(&src.path)
            ))),
            _ => Ok(()),
        }
    }
}

impl IpGeoPolicy {
    /// The request headers `decide` reads.
    pub fn header_needs(&self) -> HeaderNeeds {
        let mut needs = HeaderNeeds::default();
        self.rules.add_needs(&mut needs);
        self.header.client_address.add_needs(&mut needs);
        needs
    }

    /// Where the geo database comes from, if any rule needs one.
    pub fn geo_database(&self) -> Option<&RemoteSource> {
        self.geo_database.as_ref()
    }

    /// Decides for one request. `geo` is the loaded database, `None` while none is available.
    pub fn decide(&self, facts: &RequestFacts<'_>, geo: Option<&GeoDb>) -> IpGeoOutcome {
        let rule = self.rules.select(facts);
        let deny =
            |reason: IpGeoReason, client, country| IpGeoOutcome { decision: Decision::deny(&rule.name, reason.denial()), client, country };
        let client = match self.header.client_address.resolve(facts) {
            Ok(ip) => ip,
            Err(ClientAddressError::NoPeer | ClientAddressError::MalformedForwardedFor) => {
                return deny(IpGeoReason::ClientAddressInvalid, None, None)
            }
        };
        let a = &rule.action;
        if a.deny.contains(client) {
            return deny(IpGeoReason::IpDenied, Some(client), None);
        }

        let mut country = None;
        // Whether the country check passed by `unknown_country: allow` or was skipped because
        // the database is unavailable under `failure_mode: allow`.
        let mut country_waived = false;
        let mut country_unknown = false;
        if a.uses_countries() {
            match geo.map(|db| db.country(client)) {
                Some(Ok(Some(cc))) => {
                    country = Some(cc);
                    if a.deny_countries.contains(cc) {
                        return deny(IpGeoReason::CountryDenied, Some(client), country);
                    }
                }
                Some(Ok(None)) => match a.unknown_country {
                    Some(UnknownCountry::Deny) => return deny(IpGeoReason::CountryUnknown, Some(client), None),
                    Some(UnknownCountry::Allow) => country_waived = true,
                    None => country_unknown = true,
                },
                None | Some(Err(_)) => {
                    let mode = self.geo_database.as_ref().map_or(self.header.failure_mode, |s| s.failure_mode_or(self.header.failure_mode));
                    if mode == FailureMode::Deny {
                        return deny(IpGeoReason::GeoUnavailable, Some(client), None);
                    }
                    country_waived = true;
                }
            }
        }

        if !a.allow.is_empty() || !a.allow_countries.is_empty() {
            let by_ip = a.allow.contains(client);
            let by_country = !a.allow_countries.is_empty() && (country_waived || country.is_some_and(|cc| a.allow_countries.contains(cc)));
            if !(by_ip || by_country) {
                let reason = if a.allow_countries.is_empty() {
                    IpGeoReason::IpNotAllowed
                } else if country_unknown {
                    IpGeoReason::CountryUnknown
                } else {
                    IpGeoReason::CountryNotAllowed
                };
                return deny(reason, Some(client), country);
            }
        }
        IpGeoOutcome { decision: Decision::allow(&rule.name), client: Some(client), country }
    }
}

fn compile_action(rule: &IpGeoRule, path: &FieldPath) -> Result<IpGeoAction, ConfigError> {
    let allow_countries = compile_countries(&rule.allow_countries, &path.field("allow_countries"))?;
    Ok(IpGeoAction {
        allow: CidrTable::compile(&rule.allow, &path.field("allow"))?,
        deny: CidrTable::compile(&rule.deny, &path.field("deny"))?,
        allow_countries,
        deny_countries: compile_countries(&rule.deny_countries, &path.field("deny_countries"))?,
        unknown_country: rule.unknown_country,
    })
}

/// A set of country codes: one bit per pair of letters (26 × 26), so membership is one bit
/// test and compiling needs no sort.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CountrySet {
    bits: [u64; 11],
    len: usize,
}

impl CountrySet {
    /// The bit of a code (`CountryCode` holds two uppercase ASCII letters).
    fn slot(cc: CountryCode) -> Option<(usize, u64)> {
        let [a, b] = cc.bytes();
        let i = usize::from(a.checked_sub(b'A')?) * 26 + usize::from(b.checked_sub(b'A')?);
        (i < 26 * 26).then(|| (i / 64, 1u64 << (i % 64)))
    }

    fn insert(&mut self, cc: CountryCode) {
        if let Some((word, bit)) = Self::slot(cc) {
            if let Some(w) = self.bits.get_mut(word) {
                if *w & bit == 0 {
                    *w |= bit;
                    self.len += 1;
                }
            }
        }
    }

    fn contains(&self, cc: CountryCode) -> bool {
        Self::slot(cc).is_some_and(|(word, bit)| self.bits.get(word).is_some_and(|w| w & bit != 0))
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn compile_countries(codes: &[String], path: &FieldPath) -> Result<CountrySet, ConfigError> {
    let mut out = CountrySet::default();
    for (i, code) in codes.iter().enumerate() {
        let cc = CountryCode::parse(code)
            .ok_or_else(|| path.index(i).error(format!("invalid ISO 3166-1 alpha-2 country code {}", quote(code))))?;
        out.insert(cc);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
