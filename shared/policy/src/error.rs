//! Configuration errors: every error names the field path and quotes the bad value.
//!
//! `rules[2].match.path_regex: invalid regex "(": unclosed group`

use std::fmt;

/// A policy document was refused. `path` is the JSON path of the offending field (empty for
/// the document as a whole); the message quotes the bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// An error at `path` (e.g. `rules[2].match.path_regex`).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }

    /// The JSON path of the offending field, empty for the whole document.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, quoting the bad value.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Builds field paths while compiling: `Path::root().field("rules").index(2).field("match")`.
#[derive(Debug, Clone, Default)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> Self {
        Self(String::new())
    }

    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{}", self.0, name))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{}]", self.0, i))
    }

    /// An error at this path.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.0.clone(), message)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Quotes a user-supplied value for an error message, escaped and cut to a readable length.
pub fn quote(value: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::with_capacity(value.len().min(MAX) + 2);
    out.push('"');
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_joins_path_and_message() {
        let e = FieldPath::root().field("rules").index(2).field("match").field("path_regex").error("invalid regex \"(\"");
        assert_eq!(e.to_string(), "rules[2].match.path_regex: invalid regex \"(\"");
    }

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        let long = "x".repeat(200);
        assert_eq!(quote(&long).chars().count(), 80 + 3);
    }
}
