//! Schema Objects of an OpenAPI document made ready for a 2020-12 validator, in place.
//!
//! Both versions: every `$ref` inside a schema must be a JSON pointer into the document (`#/…`)
//! that resolves; it is rewritten to the absolute [`DOC_URI`](super::pointer::DOC_URI) form. A
//! reference out of the document (`other.yaml#/X`, `https://…`), or to an anchor (`#name`), is a
//! configuration error at its path.
//!
//! OpenAPI 3.0's dialect (an "extended subset" of JSON Schema draft-05, 3.0.3 wording) becomes 2020-12:
//! | 3.0 | 2020-12 |
//! |---|---|
//! | `type: T, nullable: true` | `type: [T, "null"]` (without `type`, `nullable` changes nothing; an `enum` without `null` still refuses `null`: the 3.0.3 clarification) |
//! | `minimum: m, exclusiveMinimum: true` | `exclusiveMinimum: m` (`false`: dropped; same for the maximum) |
//! | `$ref` with sibling keywords | the `$ref` alone (3.0: siblings "SHALL be ignored") |
//! | `readOnly: true` property listed in `required` | not required (3.0: "the required will take effect on the response only") |
//! | `example`, `x-…`, `discriminator`, `xml`, `externalDocs` | left in place: a 2020-12 validator ignores unknown keywords |
//!
//! 3.1 schemas are 2020-12 already (or the draft `jsonSchemaDialect` names); `nullable` there is
//! an unknown keyword and changes nothing, a boolean `exclusiveMinimum` is a schema error.

use std::collections::HashSet;

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

use super::pointer::{self, Loc, Tok};

/// Which dialect the document's schemas are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAPI 3.0.x: translated.
    Oas30,
    /// OpenAPI 3.1.x: as written.
    Oas31,
}

/// Deepest schema nesting walked (a document parsed from text nests at most 128 levels anyway).
const MAX_SCHEMA_DEPTH: usize = 256;

/// Keywords whose value is one schema.
const ONE: [&str; 12] = [
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
    "items",
];
/// Keywords whose value is a list of schemas.
const LIST: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value maps names to schemas.
const MAP: [&str; 6] = ["properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"];

/// A `$ref` met in a schema: its target and where it was written.
#[derive(Debug)]
pub(crate) struct FoundRef {
    pub(crate) target: Vec<String>,
    pub(crate) at: Loc,
    pub(crate) raw: String,
}

/// One pass over schemas of a document.
pub(crate) struct SchemaPass<'a> {
    pub(crate) dialect: Dialect,
    pub(crate) base: &'a FieldPath,
    /// 3.0: absolute references of component schemas that are `readOnly: true`.
    pub(crate) read_only: &'a HashSet<String>,
    pub(crate) refs: Vec<FoundRef>,
}

impl SchemaPass<'_> {
    /// Prepares the schema `node` found at `loc`.
    pub(crate) fn schema(&mut self, node: &mut Value, loc: &mut Loc, depth: usize) -> Result<(), ConfigError> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(pointer::field_path(self.base, loc).error(format!("schemas nest deeper than {MAX_SCHEMA_DEPTH} levels")));
        }
        let Value::Object(map) = node else {
            // Booleans are schemas in 3.1; anything else is left to the meta-schema check.
            return Ok(());
        };
        if let Some(r) = map.get("$ref") {
            let Value::String(r) = r else {
                loc.push(Tok::Key("$ref".into()));
                let e = pointer::field_path(self.base, loc).error(format!("$ref must be a string, got {}", quote(&r.to_string())));
                return Err(e);
            };
            let absolute = self.reference(r, loc)?;
            if self.dialect == Dialect::Oas30 {
                map.clear();
            }
            map.insert("$ref".into(), Value::String(absolute));
            if self.dialect == Dialect::Oas30 {
                return Ok(());
            }
        }
        if self.dialect == Dialect::Oas30 {
            translate_30(map);
        }
        for kw in ONE {
            if let Some(child) = map.get_mut(kw) {
                loc.push(Tok::Key(kw.into()));
                if let Value::Array(items) = child {
                    // draft-04 to 07 tuple `items`.
                    self.each(items, loc, depth)?;
                } else {
                    self.schema(child, loc, depth + 1)?;
                }
                loc.pop();
            }
        }
        for kw in LIST {
            if let Some(Value::Array(items)) = map.get_mut(kw) {
                loc.push(Tok::Key(kw.into()));
                self.each(items, loc, depth)?;
                loc.pop();
            }
        }
        for kw in MAP {
            if let Some(Value::Object(children)) = map.get_mut(kw) {
                loc.push(Tok::Key(kw.into()));
                for (name, child) in children.iter_mut() {
                    if child.is_object() || child.is_boolean() {
                        loc.push(Tok::Key(name.clone()));
                        self.schema(child, loc, depth + 1)?;
                        loc.pop();
                    }
                }
                loc.pop();
            }
        }
        if self.dialect == Dialect::Oas30 {
            drop_read_only_required(map, self.read_only);
        }
        Ok(())
    }

    fn each(&mut self, items: &mut [Value], loc: &mut Loc, depth: usize) -> Result<(), ConfigError> {
        for (i, child) in items.iter_mut().enumerate() {
            loc.push(Tok::Index(i));
            self.schema(child, loc, depth + 1)?;
            loc.pop();
        }
        Ok(())
    }

    /// Checks the reference `r` written in the schema at `loc` and returns its absolute form.
    fn reference(&mut self, r: &str, loc: &[Tok]) -> Result<String, ConfigError> {
        let at = pointer::key(loc, "$ref");
        let target = parse_local_ref(r).map_err(|why| pointer::field_path(self.base, &at).error(format!("$ref {}: {why}", quote(r))))?;
        let absolute = format!("{}#{}", pointer::DOC_URI, pointer::encode_fragment(&join(&target)));
        self.refs.push(FoundRef { target, at, raw: r.to_owned() });
        Ok(absolute)
    }
}

/// The pointer tokens of a reference inside the document (`#/components/schemas/Pet`, or the
/// absolute form this pass writes); why not, otherwise.
pub(crate) fn parse_local_ref(r: &str) -> Result<Vec<String>, &'static str> {
    let fragment = match r.strip_prefix(pointer::DOC_URI) {
        Some(rest) => rest.strip_prefix('#').ok_or("only references inside the document (#/…) are supported")?,
        None => r.strip_prefix('#').ok_or("only references inside the document (#/…) are supported: it would be fetched from elsewhere")?,
    };
    let decoded = percent_decode_str(fragment).decode_utf8().map_err(|_| "the fragment is not UTF-8")?;
    if decoded.is_empty() {
        return Err("names the whole document, not a schema");
    }
    if !decoded.starts_with('/') {
        return Err("anchors are not supported: use a JSON pointer (#/components/schemas/…)");
    }
    Ok(pointer::split_pointer(&decoded))
}

/// A JSON pointer from unescaped tokens.
pub(crate) fn join(tokens: &[String]) -> String {
    let loc: Vec<Tok> = tokens.iter().map(|t| Tok::Key(t.clone())).collect();
    pointer::pointer(&loc)
}

/// 3.0 keywords in place as 2020-12 ones (see the module table).
fn translate_30(map: &mut Map<String, Value>) {
    if let Some(nullable) = map.remove("nullable") {
        if nullable == Value::Bool(true) {
            match map.get_mut("type") {
                Some(Value::String(t)) => {
                    let t = std::mem::take(t);
                    if t != "null" {
                        map.insert("type".into(), Value::Array(vec![Value::String(t), Value::String("null".into())]));
                    } else {
                        map.insert("type".into(), Value::String(t));
                    }
                }
                Some(Value::Array(types)) if !types.iter().any(|t| t == "null") => types.push(Value::String("null".into())),
                _ => {}
            }
        }
    }
    for (exclusive, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        match map.get(exclusive) {
            Some(Value::Bool(true)) => {
                map.remove(exclusive);
                if let Some(b) = map.remove(bound) {
                    map.insert(exclusive.into(), b);
                }
            }
            Some(Value::Bool(false)) => {
                map.remove(exclusive);
            }
            _ => {}
        }
    }
}

/// 3.0: a property that is `readOnly: true` (inline, or a component schema that is) is not
/// required in a request.
fn drop_read_only_required(map: &mut Map<String, Value>, read_only: &HashSet<String>) {
    let Some(Value::Object(props)) = map.get("properties") else {
        return;
    };
    let is_read_only = |name: &str| match props.get(name) {
        Some(Value::Object(p)) => {
            p.get("readOnly") == Some(&Value::Bool(true)) || p.get("$ref").and_then(Value::as_str).is_some_and(|r| read_only.contains(r))
        }
        _ => false,
    };
    let Some(Value::Array(required)) = map.get("required") else {
        return;
    };
    let kept: Vec<Value> = required.iter().filter(|n| !n.as_str().is_some_and(is_read_only)).cloned().collect();
    if kept.len() != required.len() {
        map.insert("required".into(), Value::Array(kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t30(v: Value) -> Value {
        let mut v = v;
        if let Value::Object(m) = &mut v {
            translate_30(m);
        }
        v
    }

    #[test]
    fn nullable_and_exclusive_bounds_translate() {
        assert_eq!(t30(json!({"type": "string", "nullable": true})), json!({"type": ["string", "null"]}));
        assert_eq!(t30(json!({"nullable": true})), json!({}));
        assert_eq!(t30(json!({"type": "string", "nullable": false})), json!({"type": "string"}));
        assert_eq!(t30(json!({"minimum": 1, "exclusiveMinimum": true})), json!({"exclusiveMinimum": 1}));
        assert_eq!(t30(json!({"maximum": 9, "exclusiveMaximum": false})), json!({"maximum": 9}));
    }

    #[test]
    fn local_refs_only() {
        assert_eq!(parse_local_ref("#/components/schemas/Pet").unwrap(), ["components", "schemas", "Pet"]);
        assert_eq!(parse_local_ref("#/paths/~1pets~1%7Bid%7D").unwrap(), ["paths", "/pets/{id}"]);
        assert!(parse_local_ref("other.yaml#/X").is_err());
        assert!(parse_local_ref("#anchor").is_err());
        assert!(parse_local_ref("#").is_err());
    }
}
