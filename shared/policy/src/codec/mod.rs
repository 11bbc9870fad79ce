//! Codecs shared by every filter: JSON documents whose errors carry the JSON path of the bad
//! field ([`json_path`]).

pub mod json_path;

use serde::de::DeserializeOwned;

use crate::error::ConfigError;

/// Parses a document from JSON bytes. Errors carry the JSON path of the bad field, recovered from
/// the error's position in the text (see [`json_path`]).
pub fn parse_json<D: DeserializeOwned>(bytes: &[u8]) -> Result<D, ConfigError> {
    serde_json::from_slice(bytes).map_err(|e| ConfigError::new(json_path::path_of_error(bytes, &e), e.to_string()))
}
