//! The `rollout` field as written: a candidate document and how clients are assigned to it
//! (compiled by [`super::rollout`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `rollout` field of a policy document: a candidate of the same filter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutDoc<D> {
    /// A whole second policy document of the same filter (without `rollout` and `signatures`).
    pub candidate: Box<D>,
    /// Canary: the share of clients (0 to 100, decimals allowed, resolution 0.01) whose requests
    /// the candidate decides. Required unless `shadow` is true; must be absent when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// What identifies a client for the assignment: `client_address` (default, as the active
    /// policy's `client_address` resolves it) or `{"header": "x-user-id"}`.
    #[serde(default)]
    pub hash_on: HashOn,
    /// Shadow: the active policy decides every request; the candidate is evaluated on all
    /// traffic and only counted and logged where it disagrees.
    #[serde(default)]
    pub shadow: bool,
}

/// What identifies a client for the canary assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// The client address as the active policy's `client_address` resolves it.
    #[default]
    ClientAddress,
    /// The first value of this request header (e.g. `x-user-id`).
    Header(String),
}
