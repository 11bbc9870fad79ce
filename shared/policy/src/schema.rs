//! JSON Schema of each filter's policy document, generated from the Rust types so it never drifts.
//! Shipped as Kong's `<filter>.meta.json` and used by the CLI and editors.

use schemars::schema_for;

use crate::ip_geo::IpGeoDocument;
use crate::jwt::JwtDocument;

/// The JSON Schema of the IP/geo filter's policy document.
pub fn ip_geo() -> serde_json::Value {
    serde_json::to_value(schema_for!(IpGeoDocument)).unwrap_or(serde_json::Value::Null)
}

/// The JSON Schema of the JWT filter's policy document.
pub fn jwt() -> serde_json::Value {
    serde_json::to_value(schema_for!(JwtDocument)).unwrap_or(serde_json::Value::Null)
}

/// Kong's `<filter>.meta.json`: `{ "config_schema": <JSON Schema> }`.
pub fn kong_meta(schema: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "config_schema": schema })
}
