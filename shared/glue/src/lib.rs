//! The thin Proxy-Wasm host adapter every Gatewarden filter uses: host calls with every status
//! handled ([`host`]), a panic hook that logs, counters, the decision log line, background
//! fetches shared by all workers, and the generic root/request contexts ([`runtime`]).
//!
//! A filter crate is a few lines: an [`runtime::Enforcer`] and `export_filter!(MyEnforcer);`.
//! A filter that waits for the body or a service before it decides sets `Enforcer::WAITS`,
//! returns [`pipeline::Step`]s (plain Rust types) and is exported with
//! `export_filter!(MyEnforcer, waits)`; [`waiting`] does the Proxy-Wasm side.
//! There is no proxy-wasm SDK dependency: [`abi`] exports only the callbacks we use.

pub mod abi;
/// The decision log line is plain Rust in the policy core (both hosts write the same line).
pub use gatewarden_policy::decision_log;
pub mod fasthash;
pub mod host;
pub mod metrics;
pub mod panic_hook;
/// The pipeline's plain types live in the policy core (the native Envoy module drives the same steps).
pub use gatewarden_policy::pipeline;
pub mod remote;
pub mod rollout;
pub mod runtime;
pub mod waiting;

pub use pipeline::{CallFailure, Callout, GrpcCallout, HostCaps, HttpCallout, Pending, Resumed, Step};
pub use runtime::{Enforcer, Outcome, Root};
