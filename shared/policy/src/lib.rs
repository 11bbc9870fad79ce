//! The Gatewarden policy core: what every filter's policy uses, host-independent.
//!
//! A policy is a value built once from its JSON configuration ([`compile`]) and then asked, for
//! each request, to decide from plain facts ([`RequestFacts`]). Nothing in this crate talks to a
//! proxy: it does not depend on `proxy-wasm`, so no host call can sneak in, and every rule is
//! unit-tested natively. Each filter's own policy lives beside its glue
//! (`filters/<name>/policy`); the filters and the `gatewarden` CLI link the same code, so the
//! CLI validates exactly what the filter will accept.
//!
//! The rooms: [`document`] (the envelope: header, rules, rollout, approvals), [`request`]
//! (facts, client address, matchers, CIDRs), [`decision`] (a request's verdict and the rule that
//! gave it), [`remote`] (the one remote-source type), [`codec`] (JSON with field paths),
//! [`error`] (config errors that name the field and quote the value), [`schema`].
//!
//! ```text
//! bytes ─ compile::<IpGeoPolicy>() ─▶ IpGeoPolicy ─ decide(&facts, geo) ─▶ Decision
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::type_complexity))]

pub mod codec;
pub mod decision;
pub mod decision_log;
pub mod document;
pub mod error;
pub mod outcome;
pub mod pipeline;
pub mod remote;
pub mod request;
pub mod schema;

// The rooms' modules by their short names, as every filter uses them.
pub use codec::json_path;
pub use document::{approvals, rollout, rules};
pub use request::{cidr, client_address, facts, matcher};

pub use decision::{Decision, Denial, Verdict};
pub use document::{compile, compile_set, FailureMode, FilterPolicy, Header, Mode, PolicyDocument};
pub use error::ConfigError;
pub use facts::RequestFacts;
