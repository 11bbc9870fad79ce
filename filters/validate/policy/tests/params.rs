//! Parameters natively: the OpenAPI style table (every style × explode × primitive, array,
//! object from the specification's `color` examples), coercion, required and missing values,
//! header case, cookies, percent-encoding, `content`, `$ref` types, and hostile input (no panic,
//! bounded; durations printed, never asserted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
use common::measured;
use std::sync::Arc;

use gatewarden_policy::error::FieldPath;
use gatewarden_validate_policy::params::{ParamInput, ParamSet, MAX_ITEMS, MAX_QUERY_PAIRS};
use gatewarden_validate_policy::schema::MAX_EXCERPT_CHARS;
use gatewarden_validate_policy::{BodyError, BodySchema};
use serde_json::{json, Value};

fn compile(params: Value, names: &[&str]) -> ParamSet {
    let schemas = |s: &Value, p: &FieldPath| BodySchema::compile(s, true, p).map(Arc::new);
    ParamSet::compile(params.as_array().unwrap(), names, &schemas, &FieldPath::root().field("parameters")).unwrap()
}

/// A request: path parameters, raw query, headers.
struct Req<'a> {
    path: Vec<(String, String)>,
    query: Option<&'a str>,
    headers: Vec<(String, String)>,
}

fn req<'a>(path: &[(&str, &str)], query: Option<&'a str>, headers: &[(&str, &str)]) -> Req<'a> {
    let own = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Req { path: own(path), query, headers: own(headers) }
}

fn check(set: &ParamSet, r: &Req<'_>) -> Vec<BodyError> {
    set.check(&ParamInput { path_params: &r.path, raw_query: r.query, headers: &r.headers }, 10)
}

fn brief(errors: &[BodyError]) -> Vec<(String, String)> {
    errors.iter().map(|e| (e.instance.clone(), e.keyword.clone())).collect()
}

/// The specification's three `color` values, each as a schema that accepts exactly that value
/// (typed, so the strings are coerced, and `const`, so nothing else passes).
fn color(shape: &str) -> Value {
    match shape {
        "primitive" => json!({"type": "string", "const": "blue"}),
        "array" => json!({"type": "array", "items": {"type": "string"}, "const": ["blue", "black", "brown"]}),
        "object" => json!({
            "type": "object",
            "properties": {"R": {"type": "integer"}, "G": {"type": "integer"}, "B": {"type": "integer"}},
            "const": {"R": 100, "G": 200, "B": 150}
        }),
        other => panic!("no shape {other}"),
    }
}

/// Where a serialised value goes in a request.
fn place(location: &str, serialised: &'static str) -> Req<'static> {
    match location {
        "path" => req(&[("color", serialised)], None, &[]),
        "query" => req(&[], Some(serialised), &[]),
        "header" => req(&[], None, &[("color", serialised)]),
        "cookie" => req(&[], None, &[("cookie", serialised)]),
        other => panic!("no location {other}"),
    }
}

/// The style table of OpenAPI 3.1.1 §4.8.12.4 (with RFC 6570's commas for `label` without
/// `explode`, as 3.1.1 corrected the 3.1.0 table), one row per cell.
#[test]
fn style_table_from_the_specification() {
    let rows: Vec<(&str, &str, bool, &str, &'static str)> = vec![
        ("path", "matrix", false, "primitive", ";color=blue"),
        ("path", "matrix", false, "array", ";color=blue,black,brown"),
        ("path", "matrix", false, "object", ";color=R,100,G,200,B,150"),
        ("path", "matrix", true, "primitive", ";color=blue"),
        ("path", "matrix", true, "array", ";color=blue;color=black;color=brown"),
        ("path", "matrix", true, "object", ";R=100;G=200;B=150"),
        ("path", "label", false, "primitive", ".blue"),
        ("path", "label", false, "array", ".blue,black,brown"),
        ("path", "label", false, "object", ".R,100,G,200,B,150"),
        ("path", "label", true, "primitive", ".blue"),
        ("path", "label", true, "array", ".blue.black.brown"),
        ("path", "label", true, "object", ".R=100.G=200.B=150"),
        ("path", "simple", false, "primitive", "blue"),
        ("path", "simple", false, "array", "blue,black,brown"),
        ("path", "simple", false, "object", "R,100,G,200,B,150"),
        ("path", "simple", true, "primitive", "blue"),
        ("path", "simple", true, "array", "blue,black,brown"),
        ("path", "simple", true, "object", "R=100,G=200,B=150"),
        ("header", "simple", false, "primitive", "blue"),
        ("header", "simple", false, "array", "blue,black,brown"),
        ("header", "simple", false, "object", "R,100,G,200,B,150"),
        ("header", "simple", true, "primitive", "blue"),
        ("header", "simple", true, "array", "blue,black,brown"),
        ("header", "simple", true, "object", "R=100,G=200,B=150"),
        ("query", "form", false, "primitive", "color=blue"),
        ("query", "form", false, "array", "color=blue,black,brown"),
        ("query", "form", false, "object", "color=R,100,G,200,B,150"),
        ("query", "form", true, "primitive", "color=blue"),
        ("query", "form", true, "array", "color=blue&color=black&color=brown"),
        ("query", "form", true, "object", "R=100&G=200&B=150"),
        ("query", "spaceDelimited", false, "array", "color=blue%20black%20brown"),
        ("query", "spaceDelimited", false, "object", "color=R%20100%20G%20200%20B%20150"),
        ("query", "pipeDelimited", false, "array", "color=blue|black|brown"),
        ("query", "pipeDelimited", false, "object", "color=R|100|G|200|B|150"),
        ("query", "deepObject", true, "object", "color[R]=100&color[G]=200&color[B]=150"),
        ("cookie", "form", false, "primitive", "color=blue"),
        ("cookie", "form", false, "array", "color=blue,black,brown"),
        ("cookie", "form", false, "object", "color=R,100,G,200,B,150"),
        ("cookie", "form", true, "primitive", "color=blue"),
        ("cookie", "form", true, "array", "color=blue; color=black; color=brown"),
        ("cookie", "form", true, "object", "R=100; G=200; B=150"),
        // Variants a client may send: encoded delimiters and brackets, `+` for a space.
        ("query", "spaceDelimited", false, "array", "color=blue+black+brown"),
        ("query", "pipeDelimited", false, "array", "color=blue%7Cblack%7Cbrown"),
        ("query", "deepObject", true, "object", "color%5BR%5D=100&color%5BG%5D=200&color%5BB%5D=150"),
    ];
    let mut failures = Vec::new();
    for (location, style, explode, shape, serialised) in &rows {
        let set = compile(
            json!([{"name": "color", "in": location, "required": true, "style": style, "explode": explode, "schema": color(shape)}]),
            &["color"],
        );
        let errors = check(&set, &place(location, serialised));
        if !errors.is_empty() {
            failures.push(format!("{location} {style} explode={explode} {shape} {serialised:?}: {:?}", brief(&errors)));
        }
    }
    assert!(failures.is_empty(), "rows refused:\n{}", failures.join("\n"));
}

/// The same values serialised with the other `explode` (or another style) are not read as
/// the value: the table above cannot pass by accepting anything.
#[test]
fn a_value_in_another_serialisation_is_not_the_value() {
    let rows: Vec<(&str, &str, bool, &str, &'static str)> = vec![
        ("path", "matrix", false, "array", ";color=blue;color=black;color=brown"),
        ("path", "matrix", true, "object", ";color=R,100,G,200,B,150"),
        ("path", "label", false, "array", ".blue.black.brown"),
        ("path", "label", false, "object", ".R.100.G.200.B.150"),
        ("path", "label", true, "object", ".R,100,G,200,B,150"),
        ("path", "label", false, "primitive", "blue"),
        ("path", "matrix", false, "primitive", ";colour=blue"),
        ("path", "simple", false, "object", "R=100,G=200,B=150"),
        ("query", "form", false, "array", "color=blue&color=black&color=brown"),
        ("query", "form", true, "array", "color=blue,black,brown"),
        ("query", "form", true, "object", "color=R,100,G,200,B,150"),
        ("query", "pipeDelimited", false, "array", "color=blue,black,brown"),
        ("query", "deepObject", true, "object", "R=100&G=200&B=150"),
        ("cookie", "form", true, "array", "color=blue,black,brown"),
    ];
    for (location, style, explode, shape, serialised) in &rows {
        let set = compile(
            json!([{"name": "color", "in": location, "required": true, "style": style, "explode": explode, "schema": color(shape)}]),
            &["color"],
        );
        let errors = check(&set, &place(location, serialised));
        assert!(!errors.is_empty(), "{location} {style} explode={explode} {shape} {serialised:?} was read as the value");
        assert!(errors.iter().all(|e| e.instance.starts_with(&format!("/{location}/color"))), "{:?}", brief(&errors));
    }
}

#[test]
fn empty_values_per_style() {
    // The "empty" column: `;color`, `.`, `color=` are the empty string; an array is empty.
    for (location, style, serialised) in [("path", "matrix", ";color"), ("path", "label", "."), ("query", "form", "color=")] {
        let set =
            compile(json!([{"name": "color", "in": location, "style": style, "schema": {"type": "string", "maxLength": 0}}]), &["color"]);
        assert_eq!(check(&set, &place(location, serialised)), vec![], "{style} {serialised}");
    }
    let set = compile(json!([{"name": "color", "in": "query", "explode": false, "schema": {"type": "array", "minItems": 1}}]), &[]);
    assert_eq!(brief(&check(&set, &req(&[], Some("color="), &[]))), vec![("/query/color".to_owned(), "minItems".to_owned())]);
}

#[test]
fn values_are_coerced_to_the_schema_types() {
    let set = compile(
        json!([
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
            {"name": "ratio", "in": "query", "schema": {"type": "number"}},
            {"name": "flag", "in": "query", "schema": {"type": "boolean"}},
            {"name": "maybe", "in": "query", "schema": {"type": ["integer", "null"]}},
            {"name": "ids", "in": "query", "explode": false, "schema": {"type": "array", "items": {"type": "integer"}}},
            {"name": "f", "in": "query", "style": "deepObject", "schema": {"type": "object", "properties": {"min": {"type": "integer"}}, "additionalProperties": {"type": "boolean"}}},
            {"name": "name", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            {"name": "sort", "in": "query", "schema": {"enum": [1, 2]}},
        ]),
        &[],
    );
    let ok = "limit=10&ratio=0.5&flag=true&maybe=null&ids=1,2,3&f[min]=3&f[x]=false&name=123&sort=2";
    assert_eq!(check(&set, &req(&[], Some(ok), &[])), vec![]);
    let cases = [
        ("limit=abc", "/query/limit", "type"),
        ("limit=1.5", "/query/limit", "type"),
        ("limit=+5", "/query/limit", "type"),
        ("limit=0", "/query/limit", "minimum"),
        ("limit=1e2", "/query/limit", ""),
        ("ratio=x", "/query/ratio", "type"),
        ("flag=yes", "/query/flag", "type"),
        ("maybe=nil", "/query/maybe", "type"),
        ("ids=1,two,3", "/query/ids/1", "type"),
        ("f[min]=low", "/query/f/min", "type"),
        ("f[other]=1", "/query/f/other", "type"),
        ("sort=3", "/query/sort", "enum"),
    ];
    for (query, pointer, keyword) in cases {
        let got = brief(&check(&set, &req(&[], Some(query), &[])));
        if keyword.is_empty() {
            // 1e2 is the number 100.0: an integer to JSON Schema, so valid.
            assert_eq!(got, vec![], "{query}");
        } else {
            assert_eq!(got, vec![(pointer.to_owned(), keyword.to_owned())], "{query}");
        }
    }
    // A string-typed value is never coerced: "123" stays a string and passes the pattern.
    assert_eq!(check(&set, &req(&[], Some("name=123"), &[])), vec![]);
}

#[test]
fn missing_values_and_required() {
    let set = compile(
        json!([
            {"name": "id", "in": "path", "schema": {"type": "integer"}},
            {"name": "limit", "in": "query", "required": true, "schema": {"type": "integer"}},
            {"name": "page", "in": "query", "schema": {"type": "integer"}},
            {"name": "X-Trace", "in": "header", "required": true, "schema": {"type": "string"}},
            {"name": "session", "in": "cookie", "required": true, "schema": {"type": "string"}},
        ]),
        &["id"],
    );
    let errors = check(&set, &req(&[], None, &[]));
    assert_eq!(
        brief(&errors),
        [("/path/id", "required"), ("/query/limit", "required"), ("/header/x-trace", "required"), ("/cookie/session", "required")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(errors[1].message, r#"the query parameter "limit" is required"#);
    let full = req(&[("id", "7")], Some("limit=5"), &[("x-trace", "abc"), ("cookie", "a=1; session=s1")]);
    assert_eq!(check(&set, &full), vec![]);
    // A query parameter given as a bare name has the empty value: present, and not an integer.
    assert_eq!(
        brief(&check(&set, &req(&[("id", "7")], Some("limit"), &[("x-trace", "t"), ("cookie", "session=s")]))),
        vec![("/query/limit".to_owned(), "type".to_owned())]
    );
}

#[test]
fn header_names_are_case_insensitive_and_three_are_ignored() {
    let set = compile(
        json!([
            {"name": "X-Rate", "in": "header", "schema": {"type": "integer"}},
            {"name": "Content-Type", "in": "header", "required": true, "schema": {"const": "never"}},
            {"name": "accept", "in": "header", "required": true, "schema": {"const": "never"}},
            {"name": "Authorization", "in": "header", "required": true, "schema": {"const": "never"}},
        ]),
        &[],
    );
    assert_eq!(check(&set, &req(&[], None, &[("X-RATE", "5"), ("content-type", "text/plain")])), vec![]);
    assert_eq!(brief(&check(&set, &req(&[], None, &[("x-rate", "five")]))), vec![("/header/x-rate".to_owned(), "type".to_owned())]);
    // Two lines of one header are one list: `5,6` is not an integer.
    assert_eq!(brief(&check(&set, &req(&[], None, &[("x-rate", "5"), ("x-rate", "6")]))).len(), 1);
    let mut needs = Default::default();
    set.add_needs(&mut needs);
    assert_eq!(needs.names(), ["x-rate"]);
}

#[test]
fn cookies_come_from_every_cookie_header() {
    let set = compile(
        json!([
            {"name": "session", "in": "cookie", "required": true, "schema": {"type": "string", "minLength": 3}},
            {"name": "n", "in": "cookie", "schema": {"type": "integer"}},
        ]),
        &[],
    );
    assert_eq!(check(&set, &req(&[], None, &[("cookie", "a=1"), ("cookie", " session=abc ;n=4")])), vec![]);
    assert_eq!(
        brief(&check(&set, &req(&[], None, &[("cookie", "session=ab; n=x")]))),
        [("/cookie/session", "minLength"), ("/cookie/n", "type")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // Cookie values are not percent-decoded (RFC 6265: opaque).
    let set = compile(json!([{"name": "c", "in": "cookie", "schema": {"const": "a%20b"}}]), &[]);
    assert_eq!(check(&set, &req(&[], None, &[("cookie", "c=a%20b")])), vec![]);
}

#[test]
fn query_names_and_values_are_percent_decoded() {
    let set = compile(
        json!([
            {"name": "q", "in": "query", "schema": {"const": "hello world!"}},
            {"name": "tags", "in": "query", "explode": false, "schema": {"type": "array", "const": ["a,b", "c"]}},
            {"name": "a b", "in": "query", "schema": {"const": "é"}},
        ]),
        &[],
    );
    assert_eq!(check(&set, &req(&[], Some("q=hello+world%21&tags=a%2Cb,c&a%20b=%C3%A9"), &[])), vec![]);
    assert_eq!(check(&set, &req(&[], Some("q=hello%20world%21"), &[])), vec![]);
    // Invalid UTF-8 becomes U+FFFD, then fails the schema (never a panic).
    assert_eq!(brief(&check(&set, &req(&[], Some("q=%FF"), &[]))), vec![("/query/q".to_owned(), "const".to_owned())]);
}

#[test]
fn a_repeated_primitive_has_every_occurrence_checked() {
    let set = compile(json!([{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100}}]), &[]);
    assert_eq!(check(&set, &req(&[], Some("limit=1&limit=2"), &[])), vec![]);
    assert_eq!(brief(&check(&set, &req(&[], Some("limit=1&limit=9999"), &[]))), vec![("/query/limit".to_owned(), "maximum".to_owned())]);
    let set = compile(json!([{"name": "f", "in": "query", "style": "deepObject", "schema": {"type": "object"}}]), &[]);
    let errors = check(&set, &req(&[], Some("f[a]=1&f[a]=2"), &[]));
    assert_eq!(brief(&errors), vec![("/query/f".to_owned(), "style".to_owned())]);
}

#[test]
fn an_exploded_form_object_takes_named_members_and_with_additional_properties_the_rest() {
    let closed = compile(
        json!([
            {"name": "point", "in": "query", "schema": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x"]}},
            {"name": "page", "in": "query", "schema": {"type": "integer"}},
        ]),
        &[],
    );
    assert_eq!(check(&closed, &req(&[], Some("x=1&y=2&page=3&other=z"), &[])), vec![]);
    assert_eq!(brief(&check(&closed, &req(&[], Some("x=a"), &[]))), vec![("/query/point/x".to_owned(), "type".to_owned())]);
    let open = compile(
        json!([
            {"name": "free", "in": "query", "schema": {"type": "object", "additionalProperties": {"type": "integer"}}},
            {"name": "page", "in": "query", "schema": {"type": "integer"}},
        ]),
        &[],
    );
    // `page` is its own parameter; every other pair is a member of `free`.
    assert_eq!(check(&open, &req(&[], Some("a=1&b=2&page=3"), &[])), vec![]);
    // A deepObject's `f[x]` pairs are its own, not members of the free-form object.
    let with_deep = compile(
        json!([
            {"name": "free", "in": "query", "schema": {"type": "object", "additionalProperties": {"type": "integer"}}},
            {"name": "f", "in": "query", "style": "deepObject", "schema": {"type": "object", "additionalProperties": {"type": "string"}}},
        ]),
        &[],
    );
    assert_eq!(check(&with_deep, &req(&[], Some("a=1&f[x]=y"), &[])), vec![]);
    assert_eq!(brief(&check(&open, &req(&[], Some("a=1&b=x&page=3"), &[]))), vec![("/query/free/b".to_owned(), "type".to_owned())]);
}

#[test]
fn content_parameters_are_json_or_text() {
    let set = compile(
        json!([
            {"name": "coords", "in": "query", "required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["lat", "long"], "properties": {"lat": {"type": "number"}}}}}},
            {"name": "note", "in": "header", "content": {"text/plain": {"schema": {"maxLength": 3}}}},
        ]),
        &[],
    );
    assert_eq!(check(&set, &req(&[], Some("coords=%7B%22lat%22%3A1.5%2C%22long%22%3A2%7D"), &[("note", "123")])), vec![]);
    assert_eq!(brief(&check(&set, &req(&[], Some("coords={bad"), &[]))), vec![("/query/coords".to_owned(), "content".to_owned())]);
    assert_eq!(
        brief(&check(&set, &req(&[], Some(r#"coords={"lat":"n","long":1}"#), &[("note", "1234")]))),
        [("/query/coords/lat", "type"), ("/header/note", "maxLength")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[test]
fn types_behind_a_document_ref_are_found_by_the_resolver() {
    // As the OpenAPI part calls it: schemas compile against the document, `$ref`s resolve in it.
    let doc = json!({"components": {"schemas": {"Limit": {"type": "integer", "maximum": 10}}}});
    let schemas = |s: &Value, p: &FieldPath| {
        let wrapped = json!({"components": doc["components"], "allOf": [s]});
        BodySchema::compile(&wrapped, true, p).map(Arc::new)
    };
    let resolve = |_: &Value, r: &str| doc.pointer(r.strip_prefix('#')?).cloned();
    let params = json!([{"name": "limit", "in": "query", "schema": {"$ref": "#/components/schemas/Limit"}}]);
    let set = ParamSet::compile_with_refs(params.as_array().unwrap(), &[], &schemas, &resolve, &FieldPath::root()).unwrap();
    assert_eq!(check(&set, &req(&[], Some("limit=5"), &[])), vec![], "5 is coerced to an integer through the $ref");
    assert_eq!(brief(&check(&set, &req(&[], Some("limit=50"), &[]))), vec![("/query/limit".to_owned(), "maximum".to_owned())]);
    // Without the resolver the type is unknown: the value stays a string, the schema refuses it.
    let set = ParamSet::compile(params.as_array().unwrap(), &[], &schemas, &FieldPath::root()).unwrap();
    assert_eq!(brief(&check(&set, &req(&[], Some("limit=5"), &[]))), vec![("/query/limit".to_owned(), "type".to_owned())]);
}

#[test]
fn errors_are_bounded_by_max_errors() {
    let set = compile(
        json!((0..20)
            .map(|i| json!({"name": format!("p{i}"), "in": "query", "required": true, "schema": {"type": "integer"}}))
            .collect::<Vec<_>>()),
        &[],
    );
    let r = req(&[], Some(""), &[]);
    assert_eq!(set.check(&ParamInput { path_params: &r.path, raw_query: r.query, headers: &r.headers }, 3).len(), 3);
}

#[test]
fn config_errors_name_the_parameter_field() {
    let schemas = |s: &Value, p: &FieldPath| BodySchema::compile(s, true, p).map(Arc::new);
    let cases = [
        (
            json!([{"name": "a", "in": "body", "schema": {}}]),
            r#"parameters[0].in: unknown location "body", expected one of path, query, header, cookie"#,
        ),
        (
            json!([{"name": "a", "in": "query", "style": "matrix", "schema": {}}]),
            r#"parameters[0].style: style "matrix" is not allowed in query: use form, spaceDelimited, pipeDelimited, deepObject"#,
        ),
        (
            json!([{"name": "a", "in": "header", "style": "form", "schema": {}}]),
            r#"parameters[0].style: style "form" is not allowed in header: use simple"#,
        ),
        (
            json!([{"name": "a", "in": "query", "explode": "yes", "schema": {}}]),
            r#"parameters[0].explode: must be true or false, got "\"yes\"""#,
        ),
        (
            json!([{"name": "id", "in": "path", "schema": {}}]),
            r#"parameters[0].name: path parameter "id" is not in the path template (its names: "x")"#,
        ),
        (
            json!([{"name": "x", "in": "path", "required": false, "schema": {}}]),
            "parameters[0].required: a path parameter is always required, got false",
        ),
        (json!([{"name": "a", "in": "query"}]), "parameters[0]: a parameter needs schema or content"),
        (json!([{"name": "a", "in": "query", "schema": {}, "content": {}}]), "parameters[0].content: give schema or content, not both"),
        (
            json!([{"name": "a", "in": "query", "content": {"application/json": {}, "text/plain": {}}}]),
            "parameters[0].content: content must hold exactly one media type, got 2",
        ),
        (
            json!([{"name": "a", "in": "query", "content": {"application/xml": {}}}]),
            r#"parameters[0].content.application/xml: media type "application/xml" cannot be read from a parameter"#,
        ),
        (json!([{"in": "query", "schema": {}}]), "parameters[0]: missing field `name`"),
        (json!([{"name": "a", "in": "query", "schema": {}, "styel": "form"}]), r#"parameters[0].styel: unknown field "styel""#),
        (
            json!([{"name": "a", "in": "query", "schema": {"type": "intger"}}]),
            "parameters[0].schema.type: the 2020-12 schema does not compile",
        ),
        (
            json!([{"name": "a", "in": "query", "schema": {}}, {"name": "a", "in": "query", "schema": {}}]),
            r#"parameters[1].name: duplicate query parameter "a""#,
        ),
        (
            json!([{"name": "X-A", "in": "header", "schema": {}}, {"name": "x-a", "in": "header", "schema": {}}]),
            r#"parameters[1].name: duplicate header parameter "x-a""#,
        ),
        (json!([{"$ref": "#/components/parameters/a"}]), "parameters[0].$ref: a parameter reference must be resolved"),
        (json!(["a"]), r#"parameters[0]: a parameter must be an object, got "\"a\"""#),
    ];
    for (params, want) in cases {
        let err = ParamSet::compile(params.as_array().unwrap(), &["x"], &schemas, &FieldPath::root().field("parameters")).unwrap_err();
        assert!(err.to_string().starts_with(want), "{params}\n  expected: {want}\n  got:      {err}");
    }
    // `x-` extensions, descriptions, examples and the flags the check ignores are accepted.
    let ok = json!([{"name": "a", "in": "query", "schema": {}, "x-owner": 1, "description": "d", "example": 1, "deprecated": true, "allowEmptyValue": true, "allowReserved": false}]);
    assert!(ParamSet::compile(ok.as_array().unwrap(), &[], &schemas, &FieldPath::root()).is_ok());
}

#[test]
fn hostile_queries_and_values_are_bounded() {
    let set = compile(
        json!([
            {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 100}},
            {"name": "ids", "in": "query", "explode": false, "schema": {"type": "array", "items": {"type": "integer"}}},
            {"name": "x-big", "in": "header", "schema": {"type": "integer"}},
            {"name": "c", "in": "cookie", "schema": {"type": "string"}},
        ]),
        &[],
    );
    // 100,000 pairs: refused as a whole after MAX_QUERY_PAIRS (a parameter past the limit would
    // reach the upstream unchecked otherwise).
    let many = "a=1&".repeat(100_000);
    let errors = measured("100,000 query pairs", || check(&set, &req(&[], Some(&many), &[])));
    assert_eq!(brief(&errors), vec![("/query".to_owned(), "maxProperties".to_owned())]);
    assert!(errors[0].message.contains(&MAX_QUERY_PAIRS.to_string()));
    let just = "a=1&".repeat(MAX_QUERY_PAIRS);
    assert_eq!(check(&set, &req(&[], Some(&just), &[])), vec![], "exactly the limit is looked at");
    // A 1 MB value: one maxLength error, its message cut.
    let big = format!("q={}", "x".repeat(1 << 20));
    let errors = measured("1 MB query value", || check(&set, &req(&[], Some(&big), &[])));
    assert_eq!(brief(&errors), vec![("/query/q".to_owned(), "maxLength".to_owned())]);
    assert!(errors[0].message.chars().count() <= MAX_EXCERPT_CHARS + 1, "{}", errors[0].message.len());
    // A 1 MB list: more than MAX_ITEMS items is refused before any array is built.
    let list = format!("ids={}", "1,".repeat(1 << 19));
    let errors = measured("1 MB comma list", || check(&set, &req(&[], Some(&list), &[])));
    assert_eq!(brief(&errors), vec![("/query/ids".to_owned(), "style".to_owned())]);
    assert!(errors[0].message.contains(&MAX_ITEMS.to_string()));
    // A 1 MB header of digits beyond f64 stays a string: a type error, message cut.
    let digits = "9".repeat(1 << 20);
    let errors = measured("1 MB header of digits", || check(&set, &req(&[], None, &[("x-big", &digits)])));
    assert_eq!(brief(&errors), vec![("/header/x-big".to_owned(), "type".to_owned())]);
    assert!(errors[0].message.chars().count() <= MAX_EXCERPT_CHARS + 1);
    // 100,000 cookies: refused as a whole.
    let cookies = "k=v; ".repeat(100_000);
    let errors = measured("100,000 cookies", || check(&set, &req(&[], None, &[("cookie", &cookies)])));
    assert_eq!(brief(&errors), vec![("/cookie".to_owned(), "maxProperties".to_owned())]);
    // 100,000 deepObject members would be 100,000 pairs: the query bound covers them.
    let set = compile(json!([{"name": "f", "in": "query", "style": "deepObject", "schema": {"type": "object"}}]), &[]);
    let deep: String = (0..100_000).map(|i| format!("f[k{i}]=1&")).collect();
    assert_eq!(brief(&check(&set, &req(&[], Some(&deep), &[]))), vec![("/query".to_owned(), "maxProperties".to_owned())]);
}
