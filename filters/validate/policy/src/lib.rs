//! The request-validation filter's policy (issue 14): JSON Schema request bodies.
//!
//! Per request:
//! 1. The rule is selected (the shared rule list; `default` when none matches). A rule without
//!    `body_schema` lets the request through and its body is never read ([`ValidatePolicy::needs_body`]).
//! 2. The whole body is parsed as JSON (`invalid_json`, 400, when it is not; `serde_json` refuses
//!    nesting deeper than 128 and numbers beyond f64).
//! 3. The body is checked against the rule's schema, compiled once with the policy
//!    ([`schema::BodySchema`]: drafts 2020-12, 2019-09, 7, 6 and 4 by `$schema`, `format` asserted
//!    unless `format_assertions: false`). A violation is `schema_violation`, 400, with an RFC 9457
//!    problem body listing at most `max_errors` errors (instance pointer, schema location,
//!    keyword, a masked message), or no list with `verbose: false`.
//!
//! The validator is the `jsonschema` crate; docs/design/validator-choice.md has the measurements
//! that chose it over `boon`.

#![forbid(unsafe_code)]

pub mod adapter;
mod config;
pub mod media;
pub mod openapi;
pub mod params;
mod plain;
mod policy;
mod refs;
pub mod schema;

pub use config::{ValidateDocument, ValidateRule};
pub use params::{ParamInput, ParamSet, PathTemplate};
pub use policy::{
    parameter_problem_body, problem_body, BodyInput, BodyPlan, Start, ValidateOutcome, ValidatePolicy, ValidateReason,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ERRORS, INVALID_JSON_BODY, MAX_MAX_BODY_BYTES, MAX_MAX_ERRORS, PROBLEM_JSON, SCHEMA_VIOLATION_BODY,
};
pub use refs::{MAX_IN_PLACE_DEPTH, MAX_IN_PLACE_REFS};
pub use schema::{BodyError, BodySchema};
