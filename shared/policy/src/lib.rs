//! Host-independent Gatewarden policy code.
//!
//! A policy is a value built once from its JSON configuration ([`compile`]) and then asked, for
//! each request, to decide from plain facts ([`RequestFacts`]). Nothing in this crate talks to a
//! proxy: it does not depend on `proxy-wasm`, so no host call can sneak in, and every rule is
//! unit-tested natively. The filters (`filters/<name>`) and the `gatewarden` CLI link the same
//! code, so the CLI validates exactly what the filter will accept.
//!
//! ```text
//! bytes ─ compile::<IpGeoPolicy>() ─▶ Arc<IpGeoPolicy> ─ decide(&facts, geo) ─▶ Decision
//! ```

#![cfg_attr(test, allow(clippy::type_complexity))]

pub mod approvals;
pub mod cidr;
pub mod client_address;
pub mod decision;
pub mod document;
pub mod error;
pub mod facts;
pub mod json_path;
pub mod matcher;
pub mod remote;
pub mod rollout;
pub mod rules;
pub mod schema;

pub use decision::{Decision, Denial, Verdict};
pub use document::{compile, compile_set, FailureMode, FilterPolicy, Header, Mode, PolicyDocument};
pub use error::ConfigError;
pub use facts::RequestFacts;
