//! The configuration each host takes for a filter, rendered from one policy (`gatewarden
//! render`). Envoy's ECDS resource is in `crate::ecds::resource` (`apply` writes it too); the
//! native module's (`envoy_native`) has the same shape.

pub mod body;
pub mod compose;
pub mod envoy_native;
pub mod istio;
pub mod kong;
pub mod nginx;

use serde::Serialize;

use crate::error::CliError;

fn to_yaml<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_norway::to_string(value).map_err(|e| CliError::could_not_run(e.to_string()))
}
