//! One compiled JSON Schema (the `jsonschema` crate; docs/design/validator-choice.md says why)
//! and its errors, bounded for a problem body.

use std::fmt;

use jsonschema::{Draft, PatternOptions, Validator};
use serde_json::Value;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

/// `pattern` and `patternProperties` run on the `regex` crate: linear time in the string, no
/// backtracking. Look-around and back-references (ECMA-262 features a backtracking engine needs)
/// are a configuration error: with `fancy-regex` and a backtrack limit of 10,000, 1,000 strings
/// that each reach the limit (37 KB of body) took seconds to validate (validator-choice.md).
/// The compiled size of one `pattern` (bytes of the `regex` crate's program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest instance pointer and message in an error, in characters: both may carry client input
/// (property names, values), so only an excerpt is echoed.
pub const MAX_EXCERPT_CHARS: usize = 120;

/// The drafts a schema may name in `$schema`.
const DRAFTS: [(&str, Draft); 5] = [
    ("https://json-schema.org/draft/2020-12/schema", Draft::Draft202012),
    ("https://json-schema.org/draft/2019-09/schema", Draft::Draft201909),
    ("http://json-schema.org/draft-07/schema", Draft::Draft7),
    ("http://json-schema.org/draft-06/schema", Draft::Draft6),
    ("http://json-schema.org/draft-04/schema", Draft::Draft4),
];

/// The draft named by a `$schema` value: the meta-schema URIs of the five drafts, with or
/// without the empty fragment `#`, `http` or `https`.
pub fn draft_of(uri: &str) -> Option<Draft> {
    let uri = uri.strip_suffix('#').unwrap_or(uri);
    let rest = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://"))?;
    DRAFTS.iter().find(|(known, _)| known.split_once("://").is_some_and(|(_, k)| k == rest)).map(|(_, d)| *d)
}

/// A draft's name as users write it.
pub fn draft_name(d: Draft) -> &'static str {
    match d {
        Draft::Draft4 => "draft-04",
        Draft::Draft6 => "draft-06",
        Draft::Draft7 => "draft-07",
        Draft::Draft201909 => "2019-09",
        _ => "2020-12",
    }
}

/// A compiled body schema.
pub struct BodySchema {
    validator: Validator,
    draft: Draft,
}

impl fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySchema").field("draft", &draft_name(self.draft)).finish_non_exhaustive()
    }
}

/// One validation error as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// JSON pointer of the failing value in the body (`""` is the whole body); cut to
    /// [`MAX_EXCERPT_CHARS`].
    pub instance: String,
    /// JSON pointer of the failing keyword in the schema (`/properties/items/minItems`),
    /// after `$ref`s are followed.
    pub schema: String,
    /// The keyword (`type`, `required`, `pattern`, …).
    pub keyword: String,
    /// What is wrong, with instance values masked; cut to [`MAX_EXCERPT_CHARS`].
    pub message: String,
}

impl BodySchema {
    /// Compiles `schema` (found at `path` in the policy document). A schema that does not
    /// compile is an error at the path of the offending part inside the schema. `$ref`s must be
    /// JSON pointers into the schema (`#`, `#/$defs/…`); `$dynamicRef`, `$recursiveRef` and a
    /// nested `$id` are refused, and so are in-place cycles and chains over the bounds of
    /// [`crate::refs`] ([`crate::MAX_IN_PLACE_REFS`] `$ref`s, [`crate::MAX_IN_PLACE_DEPTH`] steps).
    pub fn compile(schema: &Value, format_assertions: bool, path: &FieldPath) -> Result<Self, ConfigError> {
        let draft = match schema.get("$schema") {
            None => Draft::Draft202012,
            Some(Value::String(uri)) => draft_of(uri).ok_or_else(|| {
                path.field("$schema").error(format!(
                    "unknown $schema {}: use the meta-schema URI of 2020-12, 2019-09, draft-07, draft-06 or draft-04",
                    quote(uri)
                ))
            })?,
            Some(other) => return Err(path.field("$schema").error(format!("$schema must be a string, got {}", quote(&other.to_string())))),
        };
        // Before the validator sees it: a cycle or an over-long chain of in-place `$ref`s would
        // recurse while validating without descending into the body (crate::refs).
        crate::refs::check_in_place(schema, &[Vec::new()], &crate::refs::Resolve::Plain, path)?;
        let patterns = PatternOptions::regex().size_limit(REGEX_SIZE_LIMIT);
        let validator = jsonschema::options()
            .with_draft(draft)
            .should_validate_formats(format_assertions)
            .should_ignore_unknown_formats(!format_assertions)
            .with_pattern_options(patterns)
            .build(schema)
            .map_err(|e| {
                // Meta-schema errors point into the schema (their instance is the schema); other
                // errors (a bad regex, an unresolvable $ref) name their keyword in the schema path.
                // An unresolvable `$ref` has neither: it is found by the reference the message names.
                let message = e.to_string();
                let pointer = match (e.instance_path().as_str(), e.schema_path().as_str()) {
                    ("", "") => ref_named_in(schema, &message, String::new()).unwrap_or_default(),
                    ("", at) | (at, _) => at.to_owned(),
                };
                let at = pointer_path(path, schema, &pointer);
                at.error(format!("the {} schema does not compile: {}", draft_name(draft), excerpt(&message, 200)))
            })?;
        Ok(Self { validator, draft })
    }

    /// A schema compiled elsewhere: an OpenAPI document's, against its registered document
    /// (`crate::openapi`).
    pub(crate) fn from_validator(validator: Validator, draft: Draft) -> Self {
        Self { validator, draft }
    }

    /// The draft the schema was compiled as.
    pub fn draft(&self) -> Draft {
        self.draft
    }

    /// Whether `body` satisfies the schema (the fast path: no error is built).
    pub fn is_valid(&self, body: &Value) -> bool {
        self.validator.is_valid(body)
    }

    /// At most `max` errors of `body` (none when it is valid).
    pub fn errors(&self, body: &Value, max: usize) -> Vec<BodyError> {
        self.validator
            .iter_errors(body)
            .take(max)
            .map(|e| BodyError {
                instance: excerpt(e.instance_path().as_str(), MAX_EXCERPT_CHARS),
                schema: e.schema_path().as_str().to_owned(),
                keyword: e.kind().keyword().to_owned(),
                message: excerpt(&e.masked().to_string(), MAX_EXCERPT_CHARS),
            })
            .collect()
    }
}

/// The field path of the JSON pointer `pointer` inside `schema` found at `base`:
/// `rules[0].body_schema` + `/properties/tags/items/0` ⇒ `rules[0].body_schema.properties.tags.items[0]`
/// (an array element is an index, anything else a field).
fn pointer_path(base: &FieldPath, schema: &Value, pointer: &str) -> FieldPath {
    let mut path = base.clone();
    let mut node = Some(schema);
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match (node, token.parse::<usize>()) {
            (Some(Value::Array(items)), Ok(i)) => {
                path = path.index(i);
                node = items.get(i);
            }
            (n, _) => {
                path = path.field(&token);
                node = n.and_then(|v| v.get(&token));
            }
        }
    }
    path
}

/// The JSON pointer of the first `$ref` in `schema` whose value `message` quotes.
fn ref_named_in(schema: &Value, message: &str, at: String) -> Option<String> {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let fragment = r.trim_start_matches('#');
                if !fragment.is_empty() && (message.contains(r.as_str()) || message.contains(&format!("'{fragment}'"))) {
                    return Some(format!("{at}/$ref"));
                }
            }
            map.iter().find_map(|(k, v)| ref_named_in(v, message, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"))))
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| ref_named_in(v, message, format!("{at}/{i}"))),
        _ => None,
    }
}

/// `s` cut to `max` characters, with `…` when cut.
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", s.get(..at).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_paths_use_indexes_for_arrays_only() {
        let s = json!({"properties": {"0": {"allOf": [{}, {"type": 5}]}}});
        let p = pointer_path(&FieldPath::root().field("default").field("body_schema"), &s, "/properties/0/allOf/1/type");
        assert_eq!(p.as_str(), "default.body_schema.properties.0.allOf[1].type");
    }

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("héllo", 2), "hé…");
        assert_eq!(excerpt("héllo", 5), "héllo");
    }

    #[test]
    fn drafts_by_uri() {
        assert_eq!(draft_of("http://json-schema.org/draft-04/schema#"), Some(Draft::Draft4));
        assert_eq!(draft_of("https://json-schema.org/draft-07/schema"), Some(Draft::Draft7));
        assert_eq!(draft_of("https://json-schema.org/draft/2020-12/schema"), Some(Draft::Draft202012));
        assert_eq!(draft_of("https://json-schema.org/draft/2019-09/schema#"), Some(Draft::Draft201909));
        assert_eq!(draft_of("https://example.com/my-meta"), None);
    }
}
