//! Files a policy file names, inlined by the CLI before the filter sees the policy.
//!
//! A validation policy usually enforces an OpenAPI document its API's owners keep in its own
//! file. The policy file names it, relative to the policy file:
//!
//! ```yaml
//! filter: validate
//! rules:
//!   - match: { path_prefix: /api }
//!     openapi: { document_file: api/openapi.yaml }   # YAML or JSON (`.json`)
//!   - match: { path_prefix: /hooks }
//!     body_schema_file: schemas/hook.json             # a JSON Schema, YAML or JSON
//! ```
//!
//! Every command that reads a policy (validate, test, eval, render, apply, diff, sign, verify)
//! replaces `openapi.document_file` with `openapi.document` and `body_schema_file` with
//! `body_schema`, holding the file's content as JSON, in `rules[i]`, `default` and the same places
//! of `rollout.candidate`. What the filter receives, what `apply` records in the history and what
//! a signature covers is that inlined document: a changed OpenAPI file is a changed policy.
//! The filter itself never reads files (it has none) and refuses both fields as unknown.

use std::path::Path;

use gatewarden_policy::error::{quote, FieldPath};
use serde_json::{Map, Value};

use crate::policy_file::{Filter, LoadError};

/// The field naming an OpenAPI document's file, inside `openapi`.
pub const DOCUMENT_FILE: &str = "document_file";
/// The field naming a body schema's file, in a rule.
pub const BODY_SCHEMA_FILE: &str = "body_schema_file";

/// Inlines the files `doc` names (see the module docs); `base` is the policy file's directory.
pub fn inline_files(doc: &mut Value, base: &Path) -> Result<(), LoadError> {
    let root = FieldPath::root();
    inline_in_policy(doc, base, &root)?;
    if let Some(candidate) = doc.get_mut("rollout").and_then(|r| r.get_mut("candidate")) {
        inline_in_policy(candidate, base, &root.field("rollout").field("candidate"))?;
    }
    Ok(())
}

fn inline_in_policy(doc: &mut Value, base: &Path, path: &FieldPath) -> Result<(), LoadError> {
    if let Some(rules) = doc.get_mut("rules").and_then(Value::as_array_mut) {
        for (i, rule) in rules.iter_mut().enumerate() {
            inline_in_rule(rule, base, &path.field("rules").index(i))?;
        }
    }
    if let Some(default) = doc.get_mut("default") {
        inline_in_rule(default, base, &path.field("default"))?;
    }
    Ok(())
}

fn inline_in_rule(rule: &mut Value, base: &Path, path: &FieldPath) -> Result<(), LoadError> {
    let Some(rule) = rule.as_object_mut() else { return Ok(()) };
    move_file_into(rule, BODY_SCHEMA_FILE, "body_schema", base, path)?;
    if let Some(openapi) = rule.get_mut("openapi").and_then(Value::as_object_mut) {
        move_file_into(openapi, DOCUMENT_FILE, "document", base, &path.field("openapi"))?;
    }
    Ok(())
}

/// Replaces `obj[file_field]` (a path) by `obj[into]` (the file's content as JSON).
fn move_file_into(obj: &mut Map<String, Value>, file_field: &str, into: &str, base: &Path, path: &FieldPath) -> Result<(), LoadError> {
    let Some(named) = obj.remove(file_field) else { return Ok(()) };
    let at = path.field(file_field);
    if obj.contains_key(into) {
        return Err(LoadError::Config(path.error(format!("give {into} or {file_field}, not both"))));
    }
    let Some(name) = named.as_str().filter(|n| !n.is_empty()) else {
        return Err(LoadError::Config(at.error(format!("expected a file path relative to the policy file, got {named}"))));
    };
    obj.insert(into.to_owned(), read_document(name, base, &at)?);
    Ok(())
}

/// Reads `name` (relative to `base`; an absolute path stays as it is) as JSON (`.json`) or
/// YAML (anything else).
fn read_document(name: &str, base: &Path, at: &FieldPath) -> Result<Value, LoadError> {
    let file = base.join(name);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| LoadError::Io(format!("{}: cannot read {} ({}): {e}", at.as_str(), quote(name), file.display())))?;
    let value: Result<Value, String> = if name.ends_with(".json") {
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        serde_norway::from_str(&text).map_err(|e| format!("not valid YAML: {e}"))
    };
    let value = value.map_err(|e| LoadError::Config(at.error(format!("{}: {e}", quote(name)))))?;
    if !value.is_object() {
        return Err(LoadError::Config(at.error(format!("{}: expected a mapping (an object), got {}", quote(name), kind(&value)))));
    }
    Ok(value)
}

/// `schema` (a filter's policy JSON Schema) with the fields a policy *file* may also have: the
/// files this module inlines. For editors and the generated reference; Kong's meta.json (what
/// the filter takes) is made from the schema without them.
pub fn with_file_fields(filter: Filter, mut schema: Value) -> Value {
    if filter != Filter::Validate {
        return schema;
    }
    let mut defs = schema.get_mut("$defs");
    let mut add = |def: &str, field: &str, description: &str| {
        let props = defs.as_deref_mut().and_then(|d| d.get_mut(def)).and_then(|d| d.get_mut("properties")).and_then(Value::as_object_mut);
        if let Some(props) = props {
            props.insert(field.to_owned(), serde_json::json!({"type": "string", "description": description}));
        }
    };
    add(
        "OpenApiSpec",
        DOCUMENT_FILE,
        "The document's file (YAML, or JSON when it ends in `.json`), relative to the policy file. Read by the \
         `gatewarden` command, which puts the document in `document` before the filter sees the policy (validate, \
         test, render, apply, sign); the filter itself takes `document` or `source`.",
    );
    add(
        "ValidateRule",
        BODY_SCHEMA_FILE,
        "The body schema's file (YAML, or JSON when it ends in `.json`), relative to the policy file: the \
         `gatewarden` command puts it in `body_schema` before the filter sees the policy.",
    );
    schema
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gatewarden-include-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::create_dir_all(d.join("api"));
        d
    }

    fn err(r: Result<(), LoadError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_else(|| "(no error)".into())
    }

    #[test]
    fn files_are_inlined_in_rules_default_and_the_candidate() {
        let d = scratch("ok");
        std::fs::write(d.join("api/openapi.yaml"), "openapi: 3.1.0\n# a comment\npaths: {}\n").unwrap_or_default();
        std::fs::write(d.join("hook.json"), r#"{"type":"object"}"#).unwrap_or_default();
        let mut doc = json!({
            "rules": [{"openapi": {"document_file": "api/openapi.yaml", "unknown_path": "pass"}}, {"body_schema_file": "hook.json"}],
            "default": {"body_schema_file": "hook.json"},
            "rollout": {"percent": 5, "candidate": {"default": {"openapi": {"document_file": "api/openapi.yaml"}}}},
        });
        assert_eq!(err(inline_files(&mut doc, &d)), "(no error)");
        let openapi = json!({"openapi": "3.1.0", "paths": {}});
        assert_eq!(doc["rules"][0]["openapi"], json!({"document": openapi, "unknown_path": "pass"}));
        assert_eq!(doc["rules"][1], json!({"body_schema": {"type": "object"}}));
        assert_eq!(doc["default"], json!({"body_schema": {"type": "object"}}));
        assert_eq!(doc["rollout"]["candidate"]["default"]["openapi"], json!({"document": openapi}));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn errors_name_the_field_and_quote_the_file() {
        let d = scratch("bad");
        std::fs::write(d.join("list.yaml"), "- a\n- b\n").unwrap_or_default();
        std::fs::write(d.join("broken.json"), "{\"openapi\": ").unwrap_or_default();
        let mut both = json!({"rules": [{"body_schema": {}, "body_schema_file": "x.json"}]});
        assert_eq!(err(inline_files(&mut both, &d)), "rules[0]: give body_schema or body_schema_file, not both");
        let mut number = json!({"default": {"openapi": {"document_file": 5}}});
        assert_eq!(
            err(inline_files(&mut number, &d)),
            "default.openapi.document_file: expected a file path relative to the policy file, got 5"
        );
        let mut missing = json!({"default": {"openapi": {"document_file": "nope.yaml"}}});
        let e = inline_files(&mut missing, &d).err();
        assert!(matches!(&e, Some(LoadError::Io(_))), "an unreadable file is could-not-run: {e:?}");
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("default.openapi.document_file: cannot read \"nope.yaml\" ("), "{e}");
        let mut list = json!({"rules": [{}, {"openapi": {"document_file": "list.yaml"}}]});
        assert_eq!(
            err(inline_files(&mut list, &d)),
            "rules[1].openapi.document_file: \"list.yaml\": expected a mapping (an object), got a list"
        );
        let mut broken = json!({"rollout": {"candidate": {"rules": [{"openapi": {"document_file": "broken.json"}}]}}});
        let e = err(inline_files(&mut broken, &d));
        assert!(e.starts_with("rollout.candidate.rules[0].openapi.document_file: \"broken.json\": not valid JSON: "), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_file_fields_are_in_the_policy_file_schema_only_for_validate() {
        let schema = with_file_fields(Filter::Validate, Filter::Validate.schema());
        assert_eq!(schema["$defs"]["OpenApiSpec"]["properties"][DOCUMENT_FILE]["type"], "string");
        assert_eq!(schema["$defs"]["ValidateRule"]["properties"][BODY_SCHEMA_FILE]["type"], "string");
        assert!(Filter::Validate.schema()["$defs"]["OpenApiSpec"]["properties"].get(DOCUMENT_FILE).is_none());
        assert_eq!(with_file_fields(Filter::Jwt, Filter::Jwt.schema()), Filter::Jwt.schema());
    }

    #[test]
    fn a_document_without_file_fields_is_unchanged() {
        let doc = json!({"rules": [{"openapi": {"document": {"openapi": "3.0.3"}}}], "default": {"body_schema": {"type": "object"}}});
        let mut same = doc.clone();
        assert_eq!(err(inline_files(&mut same, Path::new("/nonexistent"))), "(no error)");
        assert_eq!(same, doc);
    }
}
