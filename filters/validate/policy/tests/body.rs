//! The validation policy natively: per-draft keyword tables, `format`, every configuration
//! error path, each denial, and hostile bodies (no panic; durations printed, never asserted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::measured;
use gatewarden_policy::{compile, ConfigError, RequestFacts, Verdict};
use gatewarden_validate_policy::{ValidateOutcome, ValidatePolicy, ValidateReason, INVALID_JSON_BODY};
use serde_json::{json, Value};

const D4: &str = "http://json-schema.org/draft-04/schema#";
const D6: &str = "http://json-schema.org/draft-06/schema#";
const D7: &str = "http://json-schema.org/draft-07/schema#";
const D2019: &str = "https://json-schema.org/draft/2019-09/schema";
const D2020: &str = "https://json-schema.org/draft/2020-12/schema";

fn policy(default: Value) -> Result<ValidatePolicy, ConfigError> {
    let doc = json!({"policy_version": "t1", "default": default});
    compile::<ValidatePolicy>(doc.to_string().as_bytes())
}

fn schema_policy(schema: Value) -> ValidatePolicy {
    policy(json!({"body_schema": schema})).unwrap()
}

fn check(p: &ValidatePolicy, body: &[u8]) -> ValidateOutcome {
    let headers = vec![(":method".to_owned(), "POST".to_owned()), (":path".to_owned(), "/orders".to_owned())];
    p.check_body(&RequestFacts::new(&headers, None), body)
}

fn with_draft(draft: Option<&str>, mut schema: Value) -> Value {
    if let (Some(d), Some(obj)) = (draft, schema.as_object_mut()) {
        obj.insert("$schema".into(), json!(d));
    }
    schema
}

fn allowed(p: &ValidatePolicy, body: &Value) -> bool {
    check(p, body.to_string().as_bytes()).decision.verdict == Verdict::Allow
}

/// Each row: a draft (`None`: no `$schema`, i.e. 2020-12), a schema, an instance, whether that
/// draft accepts it. The rows pair a keyword a draft enforces with a draft that does not know it.
#[test]
fn keywords_per_draft() {
    let rows: Vec<(Option<&str>, Value, Value, bool)> = vec![
        // Common keywords, every draft.
        (Some(D4), json!({"type": "object", "required": ["a"]}), json!({}), false),
        (Some(D4), json!({"properties": {"a": {"enum": [1, 2]}}}), json!({"a": 3}), false),
        (Some(D4), json!({"items": {"type": "string"}, "maxItems": 2}), json!(["a", "b"]), true),
        (Some(D4), json!({"pattern": "^[a-z]+$"}), json!("abc1"), false),
        (Some(D4), json!({"definitions": {"p": {"minimum": 1}}, "properties": {"a": {"$ref": "#/definitions/p"}}}), json!({"a": 0}), false),
        // exclusiveMinimum: a boolean beside minimum in draft 4, a number from draft 6 on.
        (Some(D4), json!({"minimum": 5, "exclusiveMinimum": true}), json!(5), false),
        (Some(D4), json!({"minimum": 5, "exclusiveMinimum": false}), json!(5), true),
        (Some(D6), json!({"exclusiveMinimum": 5}), json!(5), false),
        (Some(D6), json!({"exclusiveMinimum": 5}), json!(5.5), true),
        // const, contains, propertyNames: draft 6 on; draft 4 ignores them.
        (Some(D6), json!({"const": 1}), json!(2), false),
        (Some(D4), json!({"const": 1}), json!(2), true),
        (Some(D6), json!({"contains": {"type": "integer"}}), json!(["a"]), false),
        (Some(D4), json!({"contains": {"type": "integer"}}), json!(["a"]), true),
        (Some(D6), json!({"propertyNames": {"maxLength": 3}}), json!({"long": 1}), false),
        // if/then/else: draft 7 on; draft 6 ignores them.
        (Some(D7), json!({"if": {"type": "integer"}, "then": {"minimum": 10}, "else": {"type": "string"}}), json!(3), false),
        (Some(D7), json!({"if": {"type": "integer"}, "then": {"minimum": 10}, "else": {"type": "string"}}), json!(true), false),
        (Some(D7), json!({"if": {"type": "integer"}, "then": {"minimum": 10}, "else": {"type": "string"}}), json!(12), true),
        (Some(D6), json!({"if": {"type": "integer"}, "then": {"minimum": 10}}), json!(3), true),
        // dependentRequired, unevaluatedProperties, $defs: 2019-09 on; draft 7 has `dependencies`.
        (Some(D2019), json!({"dependentRequired": {"a": ["b"]}}), json!({"a": 1}), false),
        (Some(D7), json!({"dependentRequired": {"a": ["b"]}}), json!({"a": 1}), true),
        (Some(D7), json!({"dependencies": {"a": ["b"]}}), json!({"a": 1}), false),
        (Some(D2019), json!({"properties": {"a": true}, "unevaluatedProperties": false}), json!({"a": 1, "b": 2}), false),
        (Some(D7), json!({"properties": {"a": true}, "unevaluatedProperties": false}), json!({"a": 1, "b": 2}), true),
        (Some(D2019), json!({"$defs": {"p": {"minimum": 1}}, "properties": {"a": {"$ref": "#/$defs/p"}}}), json!({"a": 0}), false),
        // Tuples: `items` as an array up to 2019-09, `prefixItems` in 2020-12.
        (Some(D2019), json!({"items": [{"type": "string"}], "additionalItems": false}), json!(["a", 1]), false),
        (Some(D2019), json!({"prefixItems": [{"type": "string"}]}), json!([1]), true),
        (Some(D2020), json!({"prefixItems": [{"type": "string"}], "items": false}), json!(["a", 1]), false),
        (Some(D2020), json!({"prefixItems": [{"type": "string"}], "items": false}), json!(["a"]), true),
        // No $schema: 2020-12.
        (None, json!({"prefixItems": [{"type": "string"}]}), json!([1]), false),
        (None, json!({"dependentRequired": {"a": ["b"]}}), json!({"a": 1, "b": 2}), true),
        // Decimal multipleOf, the money case (exact, not f64 division): 19.99 is a multiple of 0.01.
        (None, json!({"multipleOf": 0.01}), json!(19.99), true),
        (None, json!({"multipleOf": 0.01}), json!(1.005), false),
    ];
    for (i, (draft, schema, instance, expected)) in rows.into_iter().enumerate() {
        let p = schema_policy(with_draft(draft, schema.clone()));
        assert_eq!(allowed(&p, &instance), expected, "row {i}: {draft:?} {schema} on {instance}");
    }
}

#[test]
fn format_is_asserted_unless_switched_off() {
    let schema = json!({"properties": {"email": {"format": "email"}, "at": {"format": "date-time"}, "id": {"format": "uuid"}}});
    let on = schema_policy(schema.clone());
    let off = policy(json!({"body_schema": schema, "format_assertions": false})).unwrap();
    for bad in [json!({"email": "nope"}), json!({"at": "2026-13-03"}), json!({"id": "x"})] {
        assert!(!allowed(&on, &bad), "{bad}");
        assert!(allowed(&off, &bad), "{bad}");
    }
    assert!(allowed(&on, &json!({"email": "ann@example.com", "at": "2026-12-03T15:00:00Z", "id": "0b6c1a7e-3f1d-4c55-9a53-2f0f5c8e9d10"})));
}

/// Every configuration error names the path inside the policy document, down into the schema.
#[test]
fn config_errors_name_the_path_inside_the_schema() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"body_schema": {"$schema": "https://example.com/meta"}}), "default.body_schema.$schema", "https://example.com/meta"),
        (json!({"body_schema": {"$schema": 7}}), "default.body_schema.$schema", "7"),
        (json!({"body_schema": {"properties": {"age": {"type": "integr"}}}}), "default.body_schema.properties.age.type", "integr"),
        (
            json!({"body_schema": {"properties": {"tags": {"items": {"minLength": -1}}}}}),
            "default.body_schema.properties.tags.items.minLength",
            "-1",
        ),
        (json!({"body_schema": {"allOf": [{}, {"pattern": "("}]}}), "default.body_schema.allOf[1].pattern", "("),
        (
            json!({"body_schema": {"properties": {"a": {"$ref": "https://example.com/a.json"}}}}),
            "default.body_schema.properties.a.$ref",
            "example.com",
        ),
        (json!({"body_schema": {"$ref": "#/$defs/missing"}}), "default.body_schema.$ref", "missing"),
        (json!({"body_schema": {"format": "emial"}}), "default.body_schema.format", "emial"),
        (json!({"body_schema": {}, "max_errors": 0}), "default.max_errors", "0"),
        (json!({"body_schema": {}, "max_errors": 101}), "default.max_errors", "101"),
    ];
    for (rule, path, quoted) in cases {
        let e = policy(rule.clone()).err().unwrap_or_else(|| panic!("{rule} compiled"));
        assert_eq!(e.path(), path, "{rule}: {e}");
        assert!(e.message().contains(quoted), "{rule}: {e}");
    }
    // A format the validator does not know is fine when formats are not asserted.
    assert!(policy(json!({"body_schema": {"format": "emial"}, "format_assertions": false})).is_ok());
    // A rule's path is its index.
    let doc = json!({"policy_version": "t1", "rules": [{"name": "a", "body_schema": {}}, {"body_schema": {"type": 5}}]});
    let e = compile::<ValidatePolicy>(doc.to_string().as_bytes()).err().unwrap();
    assert_eq!(e.path(), "rules[1].body_schema.type");
}

fn order_schema() -> Value {
    json!({
        "$defs": {"item": {"type": "object", "required": ["sku", "quantity"], "additionalProperties": false,
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "quantity": {"type": "integer", "minimum": 1}}}},
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}}, "status": {"enum": ["new", "paid"]}}
    })
}

#[test]
fn a_violation_lists_pointer_schema_location_and_keyword() {
    let p = schema_policy(order_schema());
    let out = check(&p, br#"{"items": [{"sku": "ABC-1234", "quantity": 1}, {"sku": "abc", "quantity": 0}], "status": "lost"}"#);
    assert_eq!(out.reason, Some(ValidateReason::SchemaViolation));
    let Verdict::Deny(d) = &out.decision.verdict else { panic!("allowed") };
    assert_eq!((d.status, d.reason), (400, "schema_violation"));
    let got: Vec<(&str, &str, &str)> = out.errors.iter().map(|e| (e.instance.as_str(), e.schema.as_str(), e.keyword.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("/items/1/quantity", "/$defs/item/properties/quantity/minimum", "minimum"),
            ("/items/1/sku", "/$defs/item/properties/sku/pattern", "pattern"),
            ("/status", "/properties/status/enum", "enum"),
        ]
    );
    let body: Value = serde_json::from_str(out.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["status"], 400);
    assert_eq!(body["errors"][0]["pointer"], "/items/1/quantity");
    assert_eq!(body["errors"][1]["keyword"], "pattern");
    // Messages mask the client's values.
    assert!(!out.body.as_deref().unwrap().contains("\"abc\""), "{:?}", out.body);
}

#[test]
fn max_errors_and_verbose_bound_the_answer() {
    let many: Vec<Value> = (0..50).map(|_| json!({"sku": "bad", "quantity": 0})).collect();
    let body = json!({"items": many}).to_string();
    let p = policy(json!({"body_schema": order_schema(), "max_errors": 3})).unwrap();
    let out = check(&p, body.as_bytes());
    assert_eq!(out.errors.len(), 3);
    let listed: Value = serde_json::from_str(out.body.as_deref().unwrap()).unwrap();
    assert_eq!(listed["errors"].as_array().map(Vec::len), Some(3));
    let quiet = policy(json!({"body_schema": order_schema(), "verbose": false})).unwrap();
    let out = check(&quiet, body.as_bytes());
    assert_eq!(out.reason, Some(ValidateReason::SchemaViolation));
    assert_eq!(out.body, None);
    assert_eq!(out.errors.len(), 10, "the log still gets the default 10");
}

#[test]
fn invalid_json_and_rules_without_a_schema() {
    let p = schema_policy(order_schema());
    for bad in [&b"{"[..], b"", b"{\"items\": [}", b"\xff\xfe", b"{\"a\":1} trailing"] {
        let out = check(&p, bad);
        assert_eq!(out.reason, Some(ValidateReason::InvalidJson), "{bad:?}");
        let Verdict::Deny(d) = &out.decision.verdict else { panic!("allowed") };
        assert_eq!((d.status, d.body), (400, INVALID_JSON_BODY));
    }
    let headers = vec![(":method".to_owned(), "POST".to_owned()), (":path".to_owned(), "/free".to_owned())];
    let facts = RequestFacts::new(&headers, None);
    assert!(p.needs_body(&facts));
    let doc = json!({"policy_version": "t1", "rules": [{"match": {"path_prefix": "/orders"}, "body_schema": order_schema()}]});
    let routed = compile::<ValidatePolicy>(doc.to_string().as_bytes()).unwrap();
    assert!(!routed.needs_body(&facts), "the default has no schema: the body is not read");
    assert_eq!(routed.check_body(&facts, b"not json").decision.verdict, Verdict::Allow);
}

#[test]
fn hostile_bodies_are_refused_or_bounded() {
    let p = schema_policy(
        json!({"type": ["object", "array"], "additionalProperties": {"type": "integer", "maximum": 10}, "items": {"$ref": "#"}}),
    );
    // Nesting 10,000 deep: refused by the parser, before any validation.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let out = measured("10,000-deep array", || check(&p, deep.as_bytes()));
    assert_eq!(out.reason, Some(ValidateReason::InvalidJson));
    // 127 levels parse and validate (recursive $ref).
    let ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
    assert_eq!(measured("127-deep array, recursive $ref", || check(&p, ok.as_bytes())).reason, None);
    // 100,000 keys, every one invalid: at most max_errors listed.
    let many: serde_json::Map<String, Value> = (0..100_000).map(|i| (format!("k{i}"), json!(11))).collect();
    let body = Value::Object(many).to_string();
    let out = measured("100,000 invalid keys (1.3 MB)", || check(&p, body.as_bytes()));
    assert_eq!((out.reason, out.errors.len()), (Some(ValidateReason::SchemaViolation), 10));
    // A 1 MiB property name: the pointer and message are excerpts.
    let key = "k".repeat(1 << 20);
    let body = json!({key: 11}).to_string();
    let out = measured("1 MiB property name", || check(&p, body.as_bytes()));
    let e = out.errors.first().unwrap();
    assert!(e.instance.chars().count() <= 121 && e.message.chars().count() <= 121, "{} / {}", e.instance.len(), e.message.len());
    assert!(out.body.as_deref().unwrap().len() < 2_000);
    // Numbers: beyond f64 is not JSON we accept; the largest f64 validates.
    assert_eq!(check(&p, br#"{"a": 1e400}"#).reason, Some(ValidateReason::InvalidJson));
    assert_eq!(check(&p, br#"{"a": 1e308}"#).reason, Some(ValidateReason::SchemaViolation));
    assert_eq!(check(&p, br#"{"a": -123456789012345678901234567890}"#).reason, None);
    let money = schema_policy(json!({"multipleOf": 0.01}));
    for n in ["1e308", "-1e308", "123456789012345678901234567890", "4.9e-324"] {
        let out = measured(&format!("{n} multipleOf 0.01"), || check(&money, n.as_bytes()));
        assert_ne!(out.reason, Some(ValidateReason::InvalidJson), "{n}");
    }
}

#[test]
fn pathological_patterns_are_bounded() {
    // Linear-time patterns (the regex crate) on 1 MiB.
    let big = json!("a".repeat(1 << 20)).to_string();
    for pattern in ["^(a+)+$", "^(a|a)*$", "^(a|aa)+b$", "^[a-z]{1,5}$"] {
        let p = schema_policy(json!({"pattern": pattern}));
        let out = measured(&format!("{pattern} on a 1 MiB string"), || check(&p, big.as_bytes()));
        assert!(out.reason.is_none() || out.reason == Some(ValidateReason::SchemaViolation));
    }
    // Back-references and look-around need a backtracking engine: refused at configuration.
    for pattern in ["^(a|a)*\\1$", "^(?=(a|a)*$)", "^(\\w+)\\s\\1$", "^(?=.*[A-Z]).{8,}$"] {
        let e = policy(json!({"body_schema": {"properties": {"p": {"pattern": pattern}}}})).err().unwrap();
        assert_eq!(e.path(), "default.body_schema.properties.p.pattern", "{pattern}: {e}");
    }
    // Many long strings against a pattern: linear in the body.
    let p = schema_policy(json!({"items": {"pattern": "^(a|aa)+$"}}));
    let strings: Vec<String> = (0..1000).map(|i| format!("{}{i}!", "a".repeat(1000))).collect();
    let body = json!(strings).to_string();
    let out = measured(&format!("1,000 strings of 1 KB against ^(a|aa)+$ ({} B)", body.len()), || check(&p, body.as_bytes()));
    assert_eq!((out.reason, out.errors.len()), (Some(ValidateReason::SchemaViolation), 10));
}
