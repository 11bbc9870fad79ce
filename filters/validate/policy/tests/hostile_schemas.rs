//! Plain-form schemas that would make validation recurse without descending into the body
//! (`crate::refs`): each refused when the policy compiles, at its field path; recursive schemas
//! that descend (a tree, a linked list, a definition reused many times) still accepted and
//! validating. Durations are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Instant;

use gatewarden_policy::{compile, ConfigError, RequestFacts, Verdict};
use gatewarden_validate_policy::{ValidatePolicy, MAX_IN_PLACE_DEPTH, MAX_IN_PLACE_REFS};
use serde_json::{json, Map, Value};

const D7: &str = "http://json-schema.org/draft-07/schema#";
const D2019: &str = "https://json-schema.org/draft/2019-09/schema";

fn policy(default: Value) -> Result<ValidatePolicy, ConfigError> {
    let doc = json!({"policy_version": "t1", "default": default});
    compile::<ValidatePolicy>(doc.to_string().as_bytes())
}

fn accepted(schema: Value) -> ValidatePolicy {
    policy(json!({"body_schema": schema.clone()})).unwrap_or_else(|e| panic!("refused: {e}\n{schema}"))
}

/// The error of a refused body schema: (path, message).
fn refused(schema: Value) -> (String, String) {
    match policy(json!({"body_schema": schema.clone()})) {
        Ok(_) => panic!("accepted: {schema}"),
        Err(e) => (e.path().to_owned(), e.message().to_owned()),
    }
}

fn allowed(p: &ValidatePolicy, body: &Value) -> bool {
    let headers = vec![(":method".to_owned(), "POST".to_owned()), (":path".to_owned(), "/x".to_owned())];
    p.check_body(&RequestFacts::new(&headers, None), body.to_string().as_bytes()).decision.verdict == Verdict::Allow
}

const CYCLE: &str = "closes a cycle of schemas applying in place of each other";

/// `$defs` `a0` … `a{n}`, each `allOf` the next, the last an integer; the root a `$ref` to `a0`:
/// `n + 1` in-place `$ref`s in a row.
fn all_of_chain(n: usize) -> Value {
    let mut defs = Map::new();
    for i in 0..n {
        defs.insert(format!("a{i}"), json!({"allOf": [{"$ref": format!("#/$defs/a{}", i + 1)}]}));
    }
    defs.insert(format!("a{n}"), json!({"type": "integer"}));
    json!({"$defs": defs, "$ref": "#/$defs/a0"})
}

#[test]
fn in_place_ref_chains_are_bounded() {
    let p = accepted(all_of_chain(MAX_IN_PLACE_REFS - 1));
    assert!(allowed(&p, &json!(1)) && !allowed(&p, &json!("1")), "the whole chain is followed");
    let (path, message) = refused(all_of_chain(MAX_IN_PLACE_REFS));
    assert_eq!(path, "default.body_schema");
    assert_eq!(
        message,
        format!("a chain of more than {MAX_IN_PLACE_REFS} in-place $refs (allOf, anyOf, oneOf, not, if/then/else or a bare $ref) starts here: not supported")
    );
    // The shape that overflowed the native stack while validating (5,000 links): refused where
    // the first over-long chain starts, in its $defs.
    let t = Instant::now();
    let (path, message) = refused(all_of_chain(5_000));
    println!("measured: 5,000-link chain refused in {:?}", t.elapsed());
    assert_eq!(path, format!("default.body_schema.$defs.a{}.allOf[0]", 5_000 - MAX_IN_PLACE_REFS - 1));
    assert!(message.contains("in-place $refs"), "{message}");
    // Bare $refs count the same.
    let mut defs = Map::new();
    for i in 0..=MAX_IN_PLACE_REFS {
        defs.insert(format!("b{i}"), json!({"$ref": format!("#/$defs/b{}", i + 1)}));
    }
    defs.insert(format!("b{}", MAX_IN_PLACE_REFS + 1), json!({"type": "integer"}));
    assert_eq!(refused(json!({"$defs": defs.clone(), "$ref": "#/$defs/b1"})).0, "default.body_schema");
    assert!(policy(json!({"body_schema": {"$defs": defs, "$ref": "#/$defs/b2"}})).is_ok());
}

/// Every cycle of schemas applying in place of each other is refused at the `$ref` closing it.
#[test]
fn in_place_cycles_are_refused_at_the_ref_closing_them() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"$ref": "#"}), "default.body_schema.$ref"),
        (json!({"allOf": [{"$ref": "#"}]}), "default.body_schema.allOf[0].$ref"),
        (json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), "default.body_schema.$defs.a.$ref"),
        (
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
            "default.body_schema.$defs.b.$ref",
        ),
        (json!({"type": "object", "anyOf": [{"type": "string"}, {"$ref": "#"}]}), "default.body_schema.anyOf[1].$ref"),
        (json!({"oneOf": [{"minimum": 1, "allOf": [{"$ref": "#"}]}]}), "default.body_schema.oneOf[0].allOf[0].$ref"),
        (json!({"not": {"not": {"$ref": "#"}}}), "default.body_schema.not.not.$ref"),
        (json!({"if": {"$ref": "#"}}), "default.body_schema.if.$ref"),
        (json!({"if": {"type": "object"}, "then": {"$ref": "#"}}), "default.body_schema.then.$ref"),
        (
            json!({"if": {"type": "object"}, "else": {"$ref": "#/$defs/e"}, "$defs": {"e": {"$ref": "#"}}}),
            "default.body_schema.$defs.e.$ref",
        ),
        (json!({"dependentSchemas": {"a": {"$ref": "#"}}}), "default.body_schema.dependentSchemas.a.$ref"),
        (json!({"$schema": D7, "dependencies": {"a": ["b"], "c": {"$ref": "#"}}}), "default.body_schema.dependencies.c.$ref"),
        // A cycle that starts below the root (reached through properties).
        (
            json!({"properties": {"p": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}}),
            "default.body_schema.$defs.b.anyOf[0].$ref",
        ),
        // The target is inside another schema, not a whole definition.
        (
            json!({"$defs": {"a": {"properties": {"x": {"allOf": [{"$ref": "#/$defs/b"}]}}}, "b": {"$ref": "#/$defs/a/properties/x"}}, "$ref": "#/$defs/b"}),
            "default.body_schema.$defs.a.properties.x.allOf[0].$ref",
        ),
        // Percent-encoded and escaped pointers resolve like the validator resolves them.
        (
            json!({"$defs": {"a b/c": {"allOf": [{"$ref": "#/$defs/a%20b~1c"}]}}, "$ref": "#/$defs/a%20b~1c"}),
            "default.body_schema.$defs.a b/c.allOf[0].$ref",
        ),
    ];
    for (schema, path) in cases {
        let (at, message) = refused(schema.clone());
        assert_eq!(at, path, "{schema}");
        assert!(message.starts_with(CYCLE), "{schema}: {message}");
    }
}

/// What cannot be bounded before validation is refused at its keyword, the value quoted.
#[test]
fn references_that_cannot_be_resolved_in_advance_are_refused() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"$dynamicAnchor": "m", "allOf": [{"$dynamicRef": "#m"}]}), "default.body_schema.allOf[0].$dynamicRef", "\"#m\""),
        (
            json!({"$schema": D2019, "$recursiveAnchor": true, "properties": {"a": {"$recursiveRef": "#"}}}),
            "default.body_schema.properties.a.$recursiveRef",
            "\"#\"",
        ),
        (
            json!({"$defs": {"a": {"$anchor": "x", "type": "integer"}}, "$ref": "#x"}),
            "default.body_schema.$ref",
            "anchors are not supported",
        ),
        (
            json!({"$id": "https://example.com/s", "$defs": {"a": {"type": "integer"}}, "$ref": "https://example.com/s#/$defs/a"}),
            "default.body_schema.$ref",
            "only references inside the schema",
        ),
        (
            json!({"$defs": {"a": {"$id": "https://example.com/a", "type": "integer"}}, "$ref": "#/$defs/a"}),
            "default.body_schema.$defs.a.$id",
            "\"https://example.com/a\"",
        ),
        (
            json!({"$schema": D7, "definitions": {"a": {"$id": "#x"}}, "properties": {"p": {"$ref": "#/definitions/a"}}}),
            "default.body_schema.definitions.a.$id",
            "\"#x\"",
        ),
        (json!({"$ref": "#/$defs/missing"}), "default.body_schema.$ref", "missing"),
        (json!({"$ref": "https://json-schema.org/draft/2020-12/schema"}), "default.body_schema.$ref", "only references inside the schema"),
    ];
    for (schema, path, quoted) in cases {
        let (at, message) = refused(schema.clone());
        assert_eq!(at, path, "{schema}: {message}");
        assert!(message.contains(quoted), "{schema}: {message}");
    }
    // A root $id is fine: #/… references still name places in this schema.
    let p = accepted(json!({"$id": "https://example.com/s", "$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/a"}));
    assert!(allowed(&p, &json!(1)) && !allowed(&p, &json!("1")));
    // `$ref` inside data (const, enum, default, examples) and under an unknown keyword is no reference.
    let p = accepted(json!({"const": {"$ref": "#"}, "default": {"allOf": [{"$ref": "#"}]}, "x-note": {"$ref": "#"}}));
    assert!(allowed(&p, &json!({"$ref": "#"})) && !allowed(&p, &json!({})));
}

/// Inline nesting counts: `not`, `allOf`, … each apply one more schema to the same value.
#[test]
fn deep_inline_nesting_in_place_is_bounded() {
    let nots = |n: usize| (0..n).fold(json!({"type": "integer"}), |s, _| json!({"not": s}));
    let p = accepted(nots(MAX_IN_PLACE_DEPTH));
    let odd = MAX_IN_PLACE_DEPTH % 2 == 1;
    assert_eq!((allowed(&p, &json!(1)), allowed(&p, &json!("1"))), (!odd, odd));
    let (path, message) = refused(nots(MAX_IN_PLACE_DEPTH + 1));
    assert_eq!(path, "default.body_schema");
    assert_eq!(
        message,
        format!("more than {MAX_IN_PLACE_DEPTH} schemas nested in place of each other (allOf, anyOf, oneOf, not, if/then/else, dependentSchemas, $ref) start here: not supported")
    );
}

/// Parameter schemas of the plain form are checked the same way.
#[test]
fn parameter_schemas_are_bounded_too() {
    let e =
        policy(json!({"parameters": [{"name": "q", "in": "query", "schema": {"type": "string", "allOf": [{"$ref": "#"}]}}]})).unwrap_err();
    assert_eq!(e.path(), "default.parameters[0].schema.allOf[0].$ref");
    assert!(e.message().starts_with(CYCLE), "{e}");
}

#[test]
fn recursive_schemas_that_descend_are_accepted() {
    // A tree through properties/items.
    let tree = accepted(json!({
        "$defs": {"node": {"type": "object", "required": ["v"], "properties": {
            "v": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"
    }));
    assert!(allowed(&tree, &json!({"v": 1, "children": [{"v": 2, "children": [{"v": 3}]}, {"v": 4}]})));
    assert!(!allowed(&tree, &json!({"v": 1, "children": [{"v": 2, "children": [{"v": "3"}]}]})));
    // A linked list, `next` null or a node, 120 long.
    let list = accepted(json!({
        "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/node"}]}}}},
        "$ref": "#/$defs/node"
    }));
    let long = |leaf: Value| (0..60).fold(json!({"v": leaf, "next": null}), |next, i| json!({"v": i, "next": next}));
    assert!(allowed(&list, &long(json!(1))));
    assert!(!allowed(&list, &long(json!("1"))));
    // The root itself through properties and items.
    let p = accepted(json!({"type": ["object", "array", "integer"], "properties": {"a": {"$ref": "#"}}, "items": {"$ref": "#"}}));
    assert!(allowed(&p, &json!({"a": [1, {"a": 2}]})) && !allowed(&p, &json!({"a": [1, {"a": "2"}]})));
    // One definition reused from 200 properties and, in place, from a diamond as deep as the
    // bound allows (each level allOf the next twice).
    let mut props = Map::new();
    for i in 0..200 {
        props.insert(format!("p{i}"), json!({"$ref": "#/$defs/money"}));
    }
    let mut defs = Map::new();
    defs.insert(
        "money".into(),
        json!({"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer", "minimum": 0}}}),
    );
    let levels = MAX_IN_PLACE_REFS - 1;
    for i in 0..levels {
        let next = if i + 1 == levels { "#/$defs/money".to_owned() } else { format!("#/$defs/d{}", i + 1) };
        defs.insert(format!("d{i}"), json!({"allOf": [{"$ref": next}, {"$ref": next}]}));
    }
    let t = Instant::now();
    let p = accepted(json!({"$defs": defs, "properties": props, "allOf": [{"$ref": "#/$defs/d0"}, {"$ref": "#/$defs/money"}]}));
    println!("measured: 200 uses + a {levels}-level diamond compiled in {:?}", t.elapsed());
    assert!(allowed(&p, &json!({"amount": 1, "p7": {"amount": 2}})));
    assert!(!allowed(&p, &json!({"amount": 1, "p7": {"amount": -2}})));
    assert!(!allowed(&p, &json!({"p7": {"amount": 2}})));
}

/// The worst the bounds allow, every body level through [`MAX_IN_PLACE_REFS`] `$ref`s and
/// [`MAX_IN_PLACE_DEPTH`] in-place steps, a body 127 levels deep (serde_json's limit): valid and
/// invalid bodies (the error list is the deeper path) decided without exhausting the stack.
#[test]
fn worst_recursion_the_bounds_allow_validates() {
    for keyword in ["allOf", "anyOf", "oneOf"] {
        let p = accepted(worst_schema(keyword));
        let deep = |leaf: Value| (0..126).fold(json!({"v": leaf}), |c, _| json!({"c": c}));
        let t = Instant::now();
        assert!(allowed(&p, &deep(json!(1))), "{keyword}");
        assert!(!allowed(&p, &deep(json!("x"))), "{keyword}");
        println!(
            "measured: 127 levels x {MAX_IN_PLACE_REFS} $refs / {MAX_IN_PLACE_DEPTH} steps ({keyword}) validated twice in {:?}",
            t.elapsed()
        );
    }
    // One step more is refused.
    let mut s = worst_schema("allOf");
    s["$defs"]["c0"] = json!({"allOf": [s["$defs"]["c0"].clone()]});
    assert!(refused(s).1.contains("more than"));
}

/// `c0` … `c{n}` each applying the next through `keyword` (with the root's `$ref`,
/// [`MAX_IN_PLACE_REFS`] `$ref`s); the last an object whose `c` is `c0`, wrapped in `allOf`s up
/// to [`MAX_IN_PLACE_DEPTH`] steps.
fn worst_schema(keyword: &str) -> Value {
    let n = MAX_IN_PLACE_REFS - 1;
    let mut defs = Map::new();
    for i in 0..n {
        defs.insert(format!("c{i}"), json!({keyword: [{"$ref": format!("#/$defs/c{}", i + 1)}]}));
    }
    let level = json!({"type": "object", "properties": {"c": {"$ref": "#/$defs/c0"}, "v": {"type": "integer"}}});
    let spare = MAX_IN_PLACE_DEPTH - (1 + 2 * n);
    defs.insert(format!("c{n}"), (0..spare).fold(level, |s, _| json!({"allOf": [s]})));
    json!({"$defs": defs, "$ref": "#/$defs/c0"})
}
