//! JSON Schema of a filter's policy document, generated from the Rust types (schemars) so it never
//! drifts. Shipped as Kong's `<filter>.meta.json`, used by the CLI, editors and the generated
//! policy reference in `docs/reference/`.

use schemars::JsonSchema;

/// The JSON Schema of policy document type `D` (e.g. a filter's `…Document`).
pub fn of<D: JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(D)).unwrap_or(serde_json::Value::Null)
}

/// Kong's `<filter>.meta.json`: `{ "config_schema": <JSON Schema> }`.
pub fn kong_meta(schema: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "config_schema": schema })
}
