//! The thin Proxy-Wasm host adapter every Gatewarden filter uses: host calls with every status
//! handled ([`host`]), a panic hook that logs, counters, the decision log line, background
//! fetches shared by all workers, and the generic root/request contexts ([`runtime`]).
//!
//! A filter crate is a few lines: an [`runtime::Enforcer`] and `export_filter!(MyEnforcer);`.
//! There is no proxy-wasm SDK dependency: [`abi`] exports only the callbacks we use.

pub mod abi;
pub mod decision_log;
pub mod fasthash;
pub mod host;
pub mod metrics;
pub mod panic_hook;
pub mod rollout;
pub mod runtime;
pub mod shared_fetch;

pub use runtime::{Enforcer, Evaluation, Root};
