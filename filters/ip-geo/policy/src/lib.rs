//! The IP and geo filter's policy: allow / deny by client network and by country.
//!
//! Per rule (and the default), in this order:
//! 1. The client address is resolved (see [`gatewarden_policy::client_address`]); if it cannot be,
//!    the request is denied (`client_address_invalid`).
//! 2. `deny` networks: a listed client is denied (`ip_denied`). Deny always wins over allow.
//! 3. Countries, only when the rule names any: the country comes from the geo database. No
//!    database loaded (or a read error) is a dependency failure: `failure_mode: deny` denies
//!    (`geo_unavailable`); `failure_mode: allow` skips the country checks of that request.
//!    A listed country in `deny_countries` is denied (`country_denied`). An address the database
//!    does not know has no country; `unknown_country` says what that means: `deny` denies it
//!    (`country_unknown`, even if the address is in `allow`), `allow` lets it pass the country
//!    checks as if its country were allowed; absent (the default), it matches no country list,
//!    so it is allowed unless an allow list applies (then `country_unknown`).
//! 4. Allow lists: if `allow` or `allow_countries` is non-empty, the client must be in `allow`
//!    **or** its country in `allow_countries`; otherwise it is denied (`ip_not_allowed` when only
//!    networks are listed, `country_not_allowed` otherwise).
//! 5. Otherwise the request is allowed.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::type_complexity))]

pub mod adapter;
mod config;
mod geo_db;
mod policy;

pub use config::{GeoDatabaseSource, IpGeoDocument, IpGeoRule, UnknownCountry};
pub use geo_db::{CountryCode, GeoDb, GeoDbError};
pub use policy::{IpGeoOutcome, IpGeoPolicy, IpGeoReason, GEO_DB};
