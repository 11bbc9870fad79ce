//! A policy file as text and as a document, edited in place: `sign` adds signatures, `promote`
//! and `abort` end a rollout. The file keeps its format (YAML or JSON) and, for YAML, its comments
//! and layout where the edit allows; it is written atomically.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::atomic::write_atomic;
use crate::error::CliError;

/// Whether a policy file is YAML or JSON (by extension, as `policy_file::load` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// A policy file as text and as a parsed document.
pub struct PolicyText {
    pub path: String,
    pub text: String,
    pub format: Format,
    pub value: Value,
}

impl PolicyText {
    pub fn read(path: &str) -> Result<Self, CliError> {
        let text = fs::read_to_string(path).map_err(|e| CliError::could_not_run(format!("{path}: cannot read: {e}")))?;
        let format = if path.ends_with(".json") { Format::Json } else { Format::Yaml };
        let value = parse(&text, format).map_err(|e| CliError::failed(format!("{path}: {e}")))?;
        if !value.is_object() {
            return Err(CliError::failed(format!("{path}: a policy document is a mapping of fields")));
        }
        Ok(Self { path: path.to_owned(), text, format, value })
    }

    /// Writes `new` in the file's format, atomically (temp file + rename). YAML: when the only
    /// change is removing top-level keys (`remove`) and appending a block (`append`), the text is
    /// edited so comments and layout stay; otherwise the document is written anew.
    pub fn write(&self, new: &Value, remove: &[&str], append: Option<&str>) -> Result<(), CliError> {
        let err = |e: String| CliError::could_not_run(format!("{}: cannot write: {e}", self.path));
        let out = match self.format {
            Format::Json => serde_json::to_string_pretty(new).map_err(|e| err(e.to_string()))? + "\n",
            Format::Yaml => {
                let mut text = self.text.clone();
                for key in remove {
                    text = remove_top_level_yaml(&text, key);
                }
                if let Some(block) = append {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(block);
                }
                if parse(&text, Format::Yaml).ok().as_ref() == Some(new) {
                    text
                } else {
                    serde_norway::to_string(new).map_err(|e| err(e.to_string()))?
                }
            }
        };
        write_atomic(Path::new(&self.path), out.as_bytes()).map_err(|e| err(e.to_string()))
    }
}

fn parse(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}")),
        Format::Yaml => serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}")),
    }
}

/// Removes the block of top-level key `key` (its line and the indented or `- ` lines after it).
pub fn remove_top_level_yaml(text: &str, key: &str) -> String {
    let head = format!("{key}:");
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with(&head) {
            skipping = true;
            continue;
        }
        if skipping {
            let continues = line.trim().is_empty() || line.starts_with(' ') || line.starts_with('\t') || line.starts_with('-');
            if continues {
                continue;
            }
            skipping = false;
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_block_removal_keeps_other_lines_and_comments() {
        let text = "# policy\npolicy_version: v1\nrollout:\n  percent: 5\n  candidate:\n    policy_version: v2\n\n# after\nsignatures:\n- key_id: a\n  sig: x\ndefault: {}\n";
        let out = remove_top_level_yaml(&remove_top_level_yaml(text, "rollout"), "signatures");
        assert_eq!(out, "# policy\npolicy_version: v1\n# after\ndefault: {}\n");
    }
}
