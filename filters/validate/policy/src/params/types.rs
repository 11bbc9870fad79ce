//! The JSON types a parameter's schema names, found through `$ref`, `allOf`, `anyOf`, `oneOf`,
//! `enum` and `const`, and the coercion of a string to them (see the module docs of `params`).

use serde_json::{Number, Value};

use super::{ResolveRef, Style};

/// How deep `$ref`, `allOf`, `anyOf` and `oneOf` are followed to find a parameter's types.
const MAX_TYPE_DEPTH: usize = 16;

/// The JSON types a schema names (bit set); empty: unknown, values stay strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Types(pub(super) u8);

impl Types {
    const STRING: u8 = 1;
    const INTEGER: u8 = 2;
    const NUMBER: u8 = 4;
    const BOOLEAN: u8 = 8;
    const NULL: u8 = 16;
    const ARRAY: u8 = 32;
    const OBJECT: u8 = 64;

    fn named(name: &str) -> u8 {
        match name {
            "string" => Self::STRING,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            "boolean" => Self::BOOLEAN,
            "null" => Self::NULL,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            _ => 0,
        }
    }

    fn of_value(v: &Value) -> u8 {
        match v {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Number(n) if n.is_f64() => Self::NUMBER,
            Value::Number(_) => Self::INTEGER | Self::NUMBER,
            Value::String(_) => Self::STRING,
            Value::Array(_) => Self::ARRAY,
            Value::Object(_) => Self::OBJECT,
        }
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// The shape a value is parsed into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shape {
    Primitive(Types),
    Array(Types),
    /// Named members with their types; `additional`: the types of other members, `None` when the
    /// schema names no `additionalProperties` (an exploded `form` object then takes only the
    /// named members from the query).
    Object {
        properties: Vec<(String, Types)>,
        additional: Option<Types>,
    },
}

/// The shape and coercion types of a parameter with `schema` (see the module docs).
pub(super) fn shape_of(schema: &Value, style: Style, resolve: ResolveRef<'_>) -> Shape {
    let find = TypeFinder { root: schema, resolve };
    let types = find.types(schema, 0);
    let object = style == Style::DeepObject || (types.has(Types::OBJECT) && !types.has(Types::ARRAY));
    let parts = find.conjuncts(schema, 0);
    if object {
        let mut properties: Vec<(String, Types)> = Vec::new();
        let mut additional: Option<Types> = None;
        let mut closed = false;
        for part in &parts {
            if let Some(Value::Object(props)) = part.get("properties") {
                for (k, v) in props {
                    if !properties.iter().any(|(n, _)| n == k) {
                        properties.push((k.clone(), find.types(v, 1)));
                    }
                }
            }
            match part.get("additionalProperties") {
                Some(Value::Bool(false)) => closed = true,
                Some(Value::Bool(true)) => additional = additional.or(Some(Types::default())),
                Some(v @ Value::Object(_)) => additional = Some(find.types(v, 1)),
                _ => {}
            }
        }
        if style == Style::DeepObject && additional.is_none() && !closed {
            additional = Some(Types::default());
        }
        return Shape::Object { properties, additional: if closed { None } else { additional } };
    }
    if types.has(Types::ARRAY) {
        let items = parts.iter().find_map(|p| p.get("items").filter(|i| i.is_object())).map(|i| find.types(i, 1)).unwrap_or_default();
        return Shape::Array(items);
    }
    Shape::Primitive(types)
}

struct TypeFinder<'a> {
    root: &'a Value,
    resolve: ResolveRef<'a>,
}

impl TypeFinder<'_> {
    /// `node` and what it must also satisfy: its `$ref` target and `allOf` members, recursively.
    fn conjuncts(&self, node: &Value, depth: usize) -> Vec<Value> {
        let mut out = Vec::new();
        self.collect(node, depth, &mut out);
        out
    }

    fn collect(&self, node: &Value, depth: usize, out: &mut Vec<Value>) {
        if depth > MAX_TYPE_DEPTH || out.len() > 64 {
            return;
        }
        out.push(node.clone());
        if let Some(target) = node.get("$ref").and_then(Value::as_str).and_then(|r| (self.resolve)(self.root, r)) {
            self.collect(&target, depth + 1, out);
        }
        if let Some(Value::Array(all)) = node.get("allOf") {
            for member in all {
                self.collect(member, depth + 1, out);
            }
        }
    }

    fn types(&self, node: &Value, depth: usize) -> Types {
        let parts = self.conjuncts(node, depth);
        let mut bits = 0u8;
        for part in &parts {
            match part.get("type") {
                Some(Value::String(t)) => bits |= Types::named(t),
                Some(Value::Array(ts)) => bits |= ts.iter().filter_map(Value::as_str).fold(0, |b, t| b | Types::named(t)),
                _ => {}
            }
            // OpenAPI 3.0's `nullable: true` (the openapi part translates it; seen here too).
            if part.get("nullable") == Some(&Value::Bool(true)) {
                bits |= Types::NULL;
            }
        }
        if bits & !Types::NULL != 0 || depth > MAX_TYPE_DEPTH {
            return Types(bits);
        }
        for part in &parts {
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(members)) = part.get(key) {
                    for m in members {
                        let t = self.types(m, depth + 1);
                        if t == Types::default() {
                            return Types::default();
                        }
                        bits |= t.0;
                    }
                }
            }
        }
        if bits & !Types::NULL != 0 {
            return Types(bits);
        }
        for part in &parts {
            if let Some(Value::Array(values)) = part.get("enum") {
                bits |= values.iter().fold(0, |b, v| b | Types::of_value(v));
            }
            if let Some(v) = part.get("const") {
                bits |= Types::of_value(v);
            }
        }
        Types(bits)
    }
}

/// `s` as the first of `types` it parses as (integer or number, boolean, null), else a string.
pub(super) fn coerce(s: &str, types: Types) -> Value {
    let numeric = types.has(Types::INTEGER) || types.has(Types::NUMBER);
    if numeric && s.trim() == s && !s.is_empty() {
        // JSON's number grammar (no `+`, no leading zeros, no hex); beyond f64 stays a string.
        if let Ok(n) = serde_json::from_str::<Number>(s) {
            return Value::Number(n);
        }
    }
    if types.has(Types::BOOLEAN) {
        match s {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    if types.has(Types::NULL) && (s == "null" || (s.is_empty() && !types.has(Types::STRING))) {
        return Value::Null;
    }
    Value::String(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::local_ref;
    use serde_json::json;

    fn shape(schema: Value, style: Style) -> Shape {
        shape_of(&schema, style, &local_ref)
    }

    #[test]
    fn types_are_found_through_refs_all_of_any_of_and_enums() {
        let int = Shape::Primitive(Types(Types::INTEGER));
        assert_eq!(shape(json!({"type": "integer"}), Style::Form), int);
        assert_eq!(shape(json!({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}), Style::Form), int);
        assert_eq!(shape(json!({"allOf": [{"type": "integer"}, {"minimum": 1}]}), Style::Form), int);
        assert_eq!(
            shape(json!({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}), Style::Form),
            Shape::Primitive(Types(Types::INTEGER | Types::BOOLEAN))
        );
        assert_eq!(shape(json!({"anyOf": [{"type": "integer"}, {}]}), Style::Form), Shape::Primitive(Types::default()));
        assert_eq!(shape(json!({"enum": [1, 2]}), Style::Form), Shape::Primitive(Types(Types::INTEGER | Types::NUMBER)));
        assert_eq!(shape(json!({"type": "array", "items": {"type": "number"}}), Style::Form), Shape::Array(Types(Types::NUMBER)));
        let looped = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
        assert_eq!(shape(looped, Style::Form), Shape::Primitive(Types::default()), "a $ref loop ends");
    }

    #[test]
    fn coercion_keeps_what_does_not_parse() {
        let t = |bits| Types(bits);
        assert_eq!(coerce("12", t(Types::INTEGER)), json!(12));
        assert_eq!(coerce("1.5", t(Types::NUMBER)), json!(1.5));
        assert_eq!(coerce("+1", t(Types::INTEGER)), json!("+1"));
        assert_eq!(coerce(" 1", t(Types::INTEGER)), json!(" 1"));
        assert_eq!(coerce("1e999", t(Types::NUMBER)), json!("1e999"));
        assert_eq!(coerce("true", t(Types::BOOLEAN)), json!(true));
        assert_eq!(coerce("True", t(Types::BOOLEAN)), json!("True"));
        assert_eq!(coerce("null", t(Types::NULL | Types::INTEGER)), Value::Null);
        assert_eq!(coerce("12", t(Types::STRING)), json!("12"));
        assert_eq!(coerce("12", Types::default()), json!("12"));
    }
}
