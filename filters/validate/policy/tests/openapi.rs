//! OpenAPI documents natively: the routing table, `$ref`s, 3.0's dialect beside 3.1, request
//! bodies by media type, configuration errors at their path inside the document, YAML and JSON
//! text, the policy's `openapi` rule (404/405/pass, parameters, body, fetched documents), and
//! hostile documents (durations printed as `measured:`, never asserted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::type_complexity)]

use std::sync::Arc;
use std::time::Instant;

use gatewarden_policy::error::FieldPath;
use gatewarden_policy::{compile, ConfigError, RequestFacts, Verdict};
use gatewarden_validate_policy::openapi::{
    BodyChoice, OpenApi, OpenApiOptions, Route, MAX_IN_PLACE_REFS, MAX_OPERATIONS, MAX_PATHS, MAX_REF_HOPS, MAX_SCHEMAS,
};
use gatewarden_validate_policy::{BodyInput, Start, ValidateOutcome, ValidatePolicy};
use serde_json::{json, Value};

fn at() -> FieldPath {
    FieldPath::root().field("document")
}

fn api(doc: &Value) -> OpenApi {
    OpenApi::compile(doc, &OpenApiOptions::default(), &at()).unwrap_or_else(|e| panic!("document refused: {e}"))
}

fn refused(doc: &Value) -> String {
    match OpenApi::compile(doc, &OpenApiOptions::default(), &at()) {
        Ok(_) => panic!("document accepted: {doc}"),
        Err(e) => e.to_string(),
    }
}

/// A document of `version` with `paths` (and `components` when given).
fn doc(version: &str, paths: Value, components: Value) -> Value {
    json!({"openapi": version, "info": {"title": "t", "version": "1"}, "paths": paths, "components": components})
}

/// How `api` routes `method path`: `GET /pets/{id} id=7`, `404`, `405 GET, POST`.
fn route(api: &OpenApi, method: &str, path: &str) -> String {
    match api.route(method, path) {
        Route::Found { op, path_params } => {
            let params: Vec<String> = path_params.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            format!("{} {}{}", op.method(), op.template(), params.concat())
        }
        Route::UnknownPath => "404".into(),
        Route::UnknownMethod { allow } => format!("405 {allow}"),
    }
}

fn ok_op() -> Value {
    json!({"responses": {"200": {"description": "ok"}}})
}

#[test]
fn routing_table() {
    let paths = json!({
        "/pets": {"get": ok_op(), "post": ok_op()},
        "/pets/mine": {"get": ok_op()},
        "/pets/{petId}": {"get": ok_op(), "delete": ok_op()},
        "/pets/{petId}/photos/{photoId}": {"put": ok_op()},
        "/files/{name}.json": {"get": ok_op()},
        "/files/{name}": {"get": ok_op()},
        "/v{major}/status": {"get": ok_op()},
        "/café": {"get": ok_op()},
    });
    let a = api(
        &json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "servers": [{"url": "https://api.example.com/api/"}], "paths": paths}),
    );
    assert_eq!(a.base_path(), "/api");
    let rows = [
        ("GET", "/api/pets", "GET /pets"),
        ("POST", "/api/pets", "POST /pets"),
        // Concrete before templated, whatever the order in the document.
        ("GET", "/api/pets/mine", "GET /pets/mine"),
        ("GET", "/api/pets/7", "GET /pets/{petId} petId=7"),
        ("PUT", "/api/pets/7/photos/x", "PUT /pets/{petId}/photos/{photoId} petId=7 photoId=x"),
        // Literal suffixes inside a segment; the longer literal wins.
        ("GET", "/api/files/report.json", "GET /files/{name}.json name=report"),
        ("GET", "/api/files/a.b.json", "GET /files/{name}.json name=a.b"),
        ("GET", "/api/files/report.csv", "GET /files/{name} name=report.csv"),
        ("GET", "/api/v2/status", "GET /v{major}/status major=2"),
        // Percent-encoding: values decoded once, an encoded slash stays in its segment,
        // unreserved escapes are the same path, non-ASCII literals match their encoding.
        ("GET", "/api/pets/a%2Fb", "GET /pets/{petId} petId=a/b"),
        ("GET", "/api/pets/caf%C3%A9%20x", "GET /pets/{petId} petId=café x"),
        ("GET", "/api/p%65ts/mine", "GET /pets/mine"),
        ("GET", "/api/caf%c3%a9", "GET /café"),
        // Trailing slash and empty segments are significant.
        ("GET", "/api/pets/", "404"),
        ("GET", "/api/pets//photos/x", "404"),
        // The base path: required, on a segment boundary.
        ("GET", "/pets", "404"),
        ("GET", "/apix/pets", "404"),
        ("GET", "/api", "404"),
        // Unknown methods list the path's methods in the spec's order.
        ("PATCH", "/api/pets/7", "405 GET, DELETE"),
        ("get", "/api/pets", "405 GET, POST"),
        ("HEAD", "/api/pets/mine", "405 GET"),
        ("GET", "/api/nothing", "404"),
    ];
    for (method, path, want) in rows {
        assert_eq!(route(&a, method, path), want, "{method} {path}");
    }
}

#[test]
fn base_path_option_and_server_variables() {
    let d = json!({"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "servers": [{"url": "https://{host}/{version}", "variables": {"host": {"default": "x"}, "version": {"default": "v2"}}}],
        "paths": {"/a": {"get": ok_op()}}});
    assert_eq!(route(&api(&d), "GET", "/v2/a"), "GET /a");
    let opts = OpenApiOptions { base_path: Some("/".into()), ..OpenApiOptions::default() };
    let a = OpenApi::compile(&d, &opts, &at()).unwrap();
    assert_eq!(route(&a, "GET", "/a"), "GET /a");
    let relative = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "servers": [{"url": "/base"}], "paths": {"/a": {"get": ok_op()}}});
    assert_eq!(route(&api(&relative), "GET", "/base/a"), "GET /a");
    let bad = OpenApiOptions { base_path: Some("api".into()), ..OpenApiOptions::default() };
    let e = OpenApi::compile(&d, &bad, &at()).unwrap_err().to_string();
    assert_eq!(e, "document.base_path: a base path starts with \"/\" and has no query, got \"api\"");
}

#[test]
fn template_errors_name_the_path() {
    let e = refused(&doc("3.1.0", json!({"/pets/{id}": {"get": ok_op()}, "/pets/{petId}": {"get": ok_op()}}), json!({})));
    assert!(e.starts_with("document.paths./pets/{petId}: template \"/pets/{petId}\" is the same path as \"/pets/{id}\""), "{e}");
    let e = refused(&doc("3.1.0", json!({"/a/{x}-{y}": {"get": ok_op()}}), json!({})));
    assert_eq!(e, "document.paths./a/{x}-{y}: template \"/a/{x}-{y}\": at most one {expression} per path segment is supported");
    let e = refused(&doc("3.1.0", json!({"pets": {"get": ok_op()}}), json!({})));
    assert_eq!(e, "document.paths.pets: a path must start with \"/\", got \"pets\"");
    let e = refused(&doc("3.1.0", json!({"/a/{x": {"get": ok_op()}}), json!({})));
    assert_eq!(e, "document.paths./a/{x: unclosed \"{\" in template \"/a/{x\"");
}

#[test]
fn versions_are_3_0_and_3_1_only() {
    for v in ["3.0.0", "3.0.3", "3.0.4", "3.1.0", "3.1.1"] {
        api(&doc(v, json!({}), json!({})));
    }
    for (v, quoted) in
        [(json!("2.0"), "\"2.0\""), (json!("3.2.0"), "\"3.2.0\""), (json!("3.1"), "\"3.1\""), (json!("3.1.0-rc1"), "\"3.1.0-rc1\"")]
    {
        let e = refused(
            &doc("x", json!({}), json!({}))
                .as_object()
                .cloned()
                .map(|mut m| {
                    m.insert("openapi".into(), v.clone());
                    Value::Object(m)
                })
                .unwrap(),
        );
        assert_eq!(e, format!("document.openapi: unsupported OpenAPI version {quoted}: 3.0.x and 3.1.x are supported"));
    }
    // YAML reads `openapi: 3.0` as a number.
    let e = OpenApi::from_bytes(b"openapi: 3.0\npaths: {}\n", &OpenApiOptions::default(), &at()).unwrap_err().to_string();
    assert!(e.starts_with("document.openapi: unsupported OpenAPI version \"3.0\""), "{e}");
    let mut d = doc("3.1.0", json!({}), json!({}));
    d["jsonSchemaDialect"] = json!("https://example.com/my-dialect");
    assert!(refused(&d).starts_with("document.jsonSchemaDialect: unsupported dialect \"https://example.com/my-dialect\""));
    d["jsonSchemaDialect"] = json!("https://spec.openapis.org/oas/3.1/dialect/base");
    api(&d);
    // A draft named by jsonSchemaDialect is the draft the schemas compile as: draft-07's tuple
    // `items` is accepted there, and is a schema error under the default 2020-12.
    let mut d = body_doc("3.1.0", json!({"type": "array", "items": [{"type": "integer"}]}), json!({}));
    d["jsonSchemaDialect"] = json!("http://json-schema.org/draft-07/schema#");
    let a = api(&d);
    assert!(accepts(&a, &json!([1, "x"])) && !accepts(&a, &json!(["x"])));
    d.as_object_mut().unwrap().remove("jsonSchemaDialect");
    assert!(refused(&d).contains("items: not a valid 2020-12 schema"), "{}", refused(&d));
}

/// A document with one `POST /items` whose JSON body is `schema`.
fn body_doc(version: &str, schema: Value, components: Value) -> Value {
    doc(
        version,
        json!({"/items": {"post": {"requestBody": {"required": true, "content": {"application/json": {"schema": schema}}}, "responses": {"200": {"description": "ok"}}}}}),
        json!({"schemas": components}),
    )
}

/// Whether the document's `POST /items` accepts `body`.
fn accepts(a: &OpenApi, body: &Value) -> bool {
    let Route::Found { op, .. } = a.route("POST", "/items") else { panic!("no POST /items") };
    let BodyChoice::Media(_, entry) = op.body_for(Some("application/json")) else { panic!("no JSON body") };
    entry.schema().expect("a JSON schema").is_valid(body)
}

#[test]
fn refs_resolve_inside_the_document() {
    let components = json!({
        "Pet": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "owner": {"$ref": "#/components/schemas/Owner"}}},
        "Owner": {"$ref": "#/components/schemas/Person"},
        "Person": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
        "Node": {"type": "object", "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
    });
    let a = api(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/Pet"}), components.clone()));
    assert!(accepts(&a, &json!({"name": "rex", "owner": {"age": 3}})));
    assert!(!accepts(&a, &json!({"name": "rex", "owner": {"age": -1}})), "the chain Owner -> Person is followed");
    assert!(!accepts(&a, &json!({})));
    // The error's schema location is a pointer into the document.
    let Route::Found { op, .. } = a.route("POST", "/items") else { panic!() };
    let BodyChoice::Media(_, entry) = op.body_for(Some("application/json")) else { panic!() };
    let errors = entry.schema().unwrap().errors(&json!({"name": 5}), 10);
    assert_eq!(
        (errors[0].instance.as_str(), errors[0].schema.as_str(), errors[0].keyword.as_str()),
        ("/name", "/components/schemas/Pet/properties/name/type", "type")
    );
    // Recursive schemas.
    let a = api(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/Node"}), components.clone()));
    assert!(accepts(&a, &json!({"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]})));
    assert!(!accepts(&a, &json!({"value": 1, "children": [{"value": 2, "children": [{"value": "3"}]}]})));
    // A cycle of bare $refs constrains nothing (jsonschema answers "valid" when a node comes
    // back): refused at the $ref closing it, like every in-place cycle (crate::refs).
    let cyclic = json!({"A": {"$ref": "#/components/schemas/B"}, "B": {"$ref": "#/components/schemas/A"}});
    let e = refused(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/A"}), cyclic));
    assert!(e.starts_with("document.components.schemas.B.$ref: closes a cycle"), "{e}");
}

#[test]
fn refs_out_of_the_document_or_dangling_are_refused_at_their_path() {
    let e = refused(&body_doc("3.1.0", json!({"$ref": "pets.yaml#/Pet"}), json!({})));
    assert_eq!(
        e,
        "document.paths./items.post.requestBody.content.application/json.schema.$ref: $ref \"pets.yaml#/Pet\": only references inside the document (#/…) are supported: it would be fetched from elsewhere"
    );
    let e = refused(&body_doc("3.1.0", json!({"properties": {"a": {"$ref": "https://example.com/s.json"}}}), json!({})));
    assert!(
        e.starts_with(
            "document.paths./items.post.requestBody.content.application/json.schema.properties.a.$ref: $ref \"https://example.com/s.json\""
        ),
        "{e}"
    );
    let e = refused(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/Nope"}), json!({})));
    assert_eq!(e, "document.paths./items.post.requestBody.content.application/json.schema.$ref: $ref \"#/components/schemas/Nope\" names nothing in the document");
    let e = refused(&body_doc("3.1.0", json!({"$ref": "#pet"}), json!({})));
    assert!(e.contains("anchors are not supported"), "{e}");
    // A component reached only through a $ref is checked too, at its own path.
    let e =
        refused(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/A"}), json!({"A": {"properties": {"x": {"$ref": "#/nowhere"}}}})));
    assert_eq!(e, "document.components.schemas.A.properties.x.$ref: $ref \"#/nowhere\" names nothing in the document");
}

#[test]
fn reference_objects_resolve_and_chains_are_bounded() {
    // Parameters and request bodies by $ref; path-level parameters merged, the operation's win.
    let d = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/pets/{id}": {
            "parameters": [{"$ref": "#/components/parameters/Id"}, {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10}}],
            "post": {
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100}}],
                "requestBody": {"$ref": "#/components/requestBodies/Pet"},
                "responses": {"200": {"description": "ok"}}}}},
        "components": {
            "parameters": {"Id": {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}},
            "requestBodies": {"Pet": {"$ref": "#/components/requestBodies/PetBody"}, "PetBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}}}}});
    let p = policy_with(json!({"document": d}));
    let post = |path: &str| decide(&p, "POST", path, &[("content-type", "application/json"), ("content-length", "2")], Some(b"{}"));
    assert_eq!(post("/pets/7?limit=50"), "allow", "the operation's limit (max 100) overrides the path's (max 10)");
    assert_eq!(post("/pets/7?limit=500"), "400 invalid_parameter /query/limit");
    assert_eq!(post("/pets/x"), "400 invalid_parameter /path/id");
    assert_eq!(
        decide(&p, "POST", "/pets/7", &[("content-type", "application/json"), ("content-length", "2")], Some(b"[]")),
        "400 schema_violation /"
    );
    // A chain longer than the bound, and a cycle.
    let mut bodies = serde_json::Map::new();
    for i in 0..=MAX_REF_HOPS {
        bodies.insert(format!("B{i}"), json!({"$ref": format!("#/components/requestBodies/B{}", i + 1)}));
    }
    bodies.insert(format!("B{}", MAX_REF_HOPS + 1), json!({"content": {"text/plain": {}}}));
    let chain = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/a": {"post": {"requestBody": {"$ref": "#/components/requestBodies/B0"}, "responses": {}}}},
        "components": {"requestBodies": bodies}});
    assert!(refused(&chain).contains(&format!("a chain of more than {MAX_REF_HOPS} $refs, or a cycle")));
    let cycle = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/a": {"parameters": [{"$ref": "#/components/parameters/P"}], "get": ok_op()}},
        "components": {"parameters": {"P": {"$ref": "#/components/parameters/Q"}, "Q": {"$ref": "#/components/parameters/P"}}}});
    assert!(refused(&cycle).contains("or a cycle"));
}

/// The same request-body rows for a 3.0 schema and its 3.1 equivalent: equal verdicts.
#[test]
fn dialect_3_0_translates_to_the_3_1_verdicts() {
    let pairs: Vec<(Value, Value)> = vec![
        (json!({"type": "string", "nullable": true}), json!({"type": ["string", "null"]})),
        (json!({"type": "string", "nullable": false}), json!({"type": "string"})),
        // 3.0.3: nullable does not add null to an enum that lacks it.
        (json!({"type": "string", "enum": ["a", "b"], "nullable": true}), json!({"type": ["string", "null"], "enum": ["a", "b"]})),
        (json!({"type": "string", "enum": ["a", null], "nullable": true}), json!({"type": ["string", "null"], "enum": ["a", null]})),
        (json!({"type": "number", "minimum": 5, "exclusiveMinimum": true}), json!({"type": "number", "exclusiveMinimum": 5})),
        (json!({"type": "number", "maximum": 5, "exclusiveMaximum": true}), json!({"type": "number", "exclusiveMaximum": 5})),
        (json!({"type": "number", "minimum": 5, "exclusiveMinimum": false}), json!({"type": "number", "minimum": 5})),
        (json!({"type": "integer", "example": 3, "x-internal": {"nullable": true}}), json!({"type": "integer"})),
    ];
    let instances = [json!(null), json!("a"), json!("c"), json!(5), json!(5.5), json!(4.5), json!(3)];
    for (s30, s31) in pairs {
        let a30 = api(&body_doc("3.0.3", s30.clone(), json!({})));
        let a31 = api(&body_doc("3.1.0", s31.clone(), json!({})));
        for i in &instances {
            assert_eq!(accepts(&a30, i), accepts(&a31, i), "3.0 {s30} vs 3.1 {s31} on {i}");
        }
    }
    // Spot checks of the table itself.
    let a = api(&body_doc("3.0.3", json!({"type": "string", "nullable": true}), json!({})));
    assert!(accepts(&a, &json!(null)) && accepts(&a, &json!("x")) && !accepts(&a, &json!(1)));
    let a = api(&body_doc("3.0.3", json!({"type": "number", "minimum": 5, "exclusiveMinimum": true}), json!({})));
    assert!(!accepts(&a, &json!(5)) && accepts(&a, &json!(5.01)));
    // In 3.1 `nullable` is not a keyword, and a boolean exclusiveMinimum is a schema error.
    let a = api(&body_doc("3.1.0", json!({"type": "string", "nullable": true}), json!({})));
    assert!(!accepts(&a, &json!(null)));
    let e = refused(&body_doc("3.1.0", json!({"type": "number", "minimum": 5, "exclusiveMinimum": true}), json!({})));
    assert!(
        e.starts_with(
            "document.paths./items.post.requestBody.content.application/json.schema.exclusiveMinimum: not a valid 2020-12 schema"
        ),
        "{e}"
    );
}

#[test]
fn dialect_3_0_ref_siblings_are_ignored_and_read_only_properties_not_required() {
    let components = json!({
        "Id": {"type": "integer", "readOnly": true},
        "Pet": {"type": "object", "required": ["id", "name", "tag"],
                "properties": {"id": {"$ref": "#/components/schemas/Id"}, "name": {"type": "string"}, "tag": {"type": "string", "readOnly": true}}},
        "Small": {"type": "integer", "maximum": 3},
    });
    let a = api(&body_doc("3.0.3", json!({"$ref": "#/components/schemas/Pet"}), components.clone()));
    assert!(accepts(&a, &json!({"name": "rex"})), "readOnly id and tag are not required in a request (3.0)");
    assert!(!accepts(&a, &json!({})));
    let a31 = api(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/Pet"}), components.clone()));
    assert!(!accepts(&a31, &json!({"name": "rex"})), "3.1 keeps JSON Schema's required");
    // 3.0: a $ref's siblings are ignored; 3.1 applies them.
    let a = api(&body_doc("3.0.3", json!({"$ref": "#/components/schemas/Small", "minimum": 2}), components.clone()));
    assert!(accepts(&a, &json!(1)));
    let a = api(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/Small", "minimum": 2}), components));
    assert!(!accepts(&a, &json!(1)));
}

#[test]
fn schema_errors_name_the_path_inside_the_document() {
    let e = refused(&body_doc(
        "3.1.0",
        json!({"$ref": "#/components/schemas/Pet"}),
        json!({"Pet": {"properties": {"age": {"type": "integr"}}}}),
    ));
    assert!(e.starts_with("document.components.schemas.Pet.properties.age.type: not a valid 2020-12 schema"), "{e}");
    let e = refused(&body_doc("3.0.3", json!({"type": "object", "properties": {"a": {"minLength": -1}}}), json!({})));
    assert!(
        e.starts_with(
            "document.paths./items.post.requestBody.content.application/json.schema.properties.a.minLength: not a valid 2020-12 schema"
        ),
        "{e}"
    );
    // A pattern the linear-time engine refuses (look-around) fails at compile time.
    let e = refused(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/S"}), json!({"S": {"type": "string", "pattern": "^(?=a)"}})));
    assert!(e.starts_with("document.components.schemas.S.pattern: the 2020-12 schema does not compile"), "{e}");
    let d = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/a": {"get": {"parameters": [{"name": "n", "in": "query", "schema": {"type": "integer", "maximum": "x"}}], "responses": {}}}}});
    let e = refused(&d);
    assert!(e.starts_with("document.paths./a.get.parameters[0].schema.maximum: not a valid 2020-12 schema"), "{e}");
    let d = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/a": {"post": {"requestBody": {"content": {"json": {}}}, "responses": {}}}}});
    assert_eq!(
        refused(&d),
        "document.paths./a.post.requestBody.content.json: invalid media range \"json\": use type/subtype, type/*, */* or type/*+suffix"
    );
    let d =
        json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"post": {"requestBody": {"required": true}}}}});
    assert_eq!(refused(&d), "document.paths./a.post.requestBody: a Request Body needs \"content\"");
}

#[test]
fn media_types_most_specific_wins() {
    let d = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"post": {"requestBody": {"content": {
        "*/*": {"schema": {"type": "string"}},
        "application/*": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}},
        "application/*+json": {"schema": {"type": "array"}},
        "text/plain": {},
    }}, "responses": {}}}}});
    let a = api(&d);
    let Route::Found { op, .. } = a.route("POST", "/a") else { panic!() };
    let choose = |ct: Option<&str>| match op.body_for(ct) {
        BodyChoice::Media(_, e) => format!("{} json={}", e.key(), e.schema().is_some()),
        BodyChoice::NoContentType(_) => "none".into(),
        BodyChoice::Unsupported(_) => "415".into(),
        BodyChoice::NotDescribed => "not described".into(),
    };
    assert_eq!(choose(Some("application/json; charset=utf-8")), "application/json json=true");
    assert_eq!(choose(Some("Application/JSON")), "application/json json=true");
    assert_eq!(choose(Some("application/vnd.x+json")), "application/*+json json=true");
    assert_eq!(choose(Some("application/xml")), "application/* json=false");
    assert_eq!(choose(Some("text/plain")), "text/plain json=false");
    assert_eq!(choose(Some("image/png")), "*/* json=false");
    assert_eq!(choose(Some("not a type")), "415");
    assert_eq!(choose(None), "none");
}

#[test]
fn yaml_and_json_text_give_the_same_document() {
    let yaml = "# a comment\nopenapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets/{id}:\n    get:\n      parameters:\n        - {name: id, in: path, required: true, schema: {type: integer}}\n      responses: {}\n";
    let json_text = r#"{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/pets/{id}": {"get": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {}}}}}"#;
    for text in [yaml, json_text] {
        let a = OpenApi::from_bytes(text.as_bytes(), &OpenApiOptions::default(), &at()).unwrap();
        assert_eq!(route(&a, "GET", "/pets/3"), "GET /pets/{id} id=3");
        // The same text as a string in the policy's `document`.
        let a = api(&Value::String(text.to_owned()));
        assert_eq!(route(&a, "GET", "/pets/3"), "GET /pets/{id} id=3");
    }
    let e = OpenApi::from_bytes(b"openapi: [", &OpenApiOptions::default(), &at()).unwrap_err().to_string();
    assert!(e.starts_with("document: the document is not valid YAML"), "{e}");
    let e = OpenApi::from_bytes(b"{\"openapi\": ", &OpenApiOptions::default(), &at()).unwrap_err().to_string();
    assert!(e.starts_with("document: the document is not valid JSON"), "{e}");
}

#[test]
fn hostile_text_is_refused_quickly() {
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    let t = Instant::now();
    let e = OpenApi::from_bytes(bomb.as_bytes(), &OpenApiOptions::default(), &at()).unwrap_err().to_string();
    assert!(e.contains("repetition limit exceeded"), "{e}");
    println!("measured: YAML alias bomb (9^7 nodes) refused in {:?}", t.elapsed());
    let deep = format!("openapi: 3.1.0\nx: {}", "[".repeat(10_000));
    let e = OpenApi::from_bytes(deep.as_bytes(), &OpenApiOptions::default(), &at()).unwrap_err().to_string();
    assert!(e.contains("recursion limit exceeded"), "{e}");
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let e = OpenApi::from_bytes(&big, &OpenApiOptions::default(), &at()).unwrap_err().to_string();
    assert_eq!(e, "document: the document is 4194305 bytes: at most 4194304 are accepted");
}

#[test]
fn hostile_documents_are_bounded() {
    // The bound on paths, and on operations.
    let many = |n: usize, ops: &[&str]| {
        let mut paths = serde_json::Map::new();
        for i in 0..n {
            let item: serde_json::Map<String, Value> = ops.iter().map(|m| (m.to_string(), ok_op())).collect();
            paths.insert(format!("/r{i}/{{id}}"), Value::Object(item));
        }
        doc("3.1.0", Value::Object(paths), json!({}))
    };
    let e = refused(&many(10_000, &["get"]));
    assert_eq!(e, format!("document.paths: 10000 paths: at most {MAX_PATHS} are supported"));
    let e = refused(&many(MAX_PATHS, &["get", "put", "post"]));
    assert_eq!(e, format!("document.paths: more than {MAX_OPERATIONS} operations are not supported"));
    let t = Instant::now();
    let a = api(&many(MAX_PATHS, &["get", "post"]));
    println!("measured: {MAX_PATHS} paths x 2 operations compiled in {:?} (debug build)", t.elapsed());
    assert_eq!(route(&a, "POST", &format!("/r{}/x", MAX_PATHS - 1)), format!("POST /r{}/{{id}} id=x", MAX_PATHS - 1));
    // A deep chain of $refs that each descend into the body (`properties`): compiled without
    // deep recursion; validating it goes only as deep as the body (at most 128 when parsed).
    let mut schemas = serde_json::Map::new();
    for i in 0..2_000 {
        schemas
            .insert(format!("S{i}"), json!({"type": "object", "properties": {"a": {"$ref": format!("#/components/schemas/S{}", i + 1)}}}));
    }
    schemas.insert("S2000".into(), json!({"type": "integer"}));
    let t = Instant::now();
    let a = api(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/S0"}), Value::Object(schemas)));
    println!("measured: a chain of 2,000 schemas through properties compiled in {:?} (debug build)", t.elapsed());
    assert!(accepts(&a, &json!({"a": {"a": {}}})) && !accepts(&a, &json!({"a": {"a": 5}})));
    // The bound on schemas prepared.
    let schemas: serde_json::Map<String, Value> = (0..=MAX_SCHEMAS).map(|i| (format!("S{i}"), json!({"type": "integer"}))).collect();
    let t = Instant::now();
    let e = refused(&body_doc("3.1.0", json!({"type": "object"}), Value::Object(schemas)));
    assert_eq!(e, format!("document: more than {MAX_SCHEMAS} schemas: not supported"));
    println!("measured: {} component schemas refused in {:?} (debug build)", MAX_SCHEMAS + 1, t.elapsed());
}

// ---- The policy's `openapi` rule ----

fn policy_with(openapi: Value) -> ValidatePolicy {
    try_policy(openapi).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

fn try_policy(openapi: Value) -> Result<ValidatePolicy, ConfigError> {
    let doc = json!({"policy_version": "t1", "default": {"openapi": openapi}});
    compile::<ValidatePolicy>(doc.to_string().as_bytes())
}

/// The decision for a request: `allow`, `allow unvalidated <reason>`, `405 method_not_allowed allow=GET`,
/// `400 invalid_parameter /query/limit`, `needs body` (when `body` is `None` and it would read one).
fn decide(p: &ValidatePolicy, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> String {
    decide_with(p, method, path, headers, body, &|_| None)
}

fn decide_with(
    p: &ValidatePolicy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    docs: &dyn Fn(usize) -> Option<Arc<OpenApi>>,
) -> String {
    let mut h = vec![(":method".to_owned(), method.to_owned()), (":path".to_owned(), path.to_owned())];
    h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let facts = RequestFacts::new(&h, None);
    let out = match p.start_with(&facts, docs) {
        Start::Done(out) => out,
        Start::NeedBody(plan) => match body {
            None => return "needs body".into(),
            Some(b) => p.finish(plan, if b.is_empty() { BodyInput::Absent } else { BodyInput::Whole(b) }),
        },
    };
    describe(&out)
}

fn describe(out: &ValidateOutcome) -> String {
    match (&out.decision.verdict, out.unvalidated) {
        (Verdict::Allow, None) => "allow".into(),
        (Verdict::Allow, Some(why)) => format!("allow unvalidated {}", why.as_str()),
        (Verdict::Deny(d), _) => {
            let mut s = format!("{} {}", d.status, d.reason);
            if let Some(allow) = &out.allow {
                s.push_str(&format!(" allow={allow}"));
            }
            if let Some(e) = out.errors.first() {
                s.push_str(&format!(" {}", if e.instance.is_empty() { "/" } else { &e.instance }));
            }
            s
        }
    }
}

fn shop() -> Value {
    json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "servers": [{"url": "/api"}],
        "paths": {
            "/orders": {
                "get": {"parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100}}], "responses": {}},
                "post": {"requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Order"}},
                    "text/csv": {}}}, "responses": {}}},
            "/orders/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                "get": {"responses": {}},
                "patch": {"requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object", "maxProperties": 1}}}}, "responses": {}}}},
        "components": {"schemas": {"Order": {"type": "object", "required": ["sku"], "additionalProperties": false, "properties": {"sku": {"type": "string"}}}}}})
}

#[test]
fn policy_rule_routes_checks_parameters_and_bodies() {
    let p = policy_with(json!({"document": shop()}));
    let json_ct = [("content-type", "application/json"), ("content-length", "13")];
    let rows: Vec<(&str, &str, Vec<(&str, &str)>, Option<&[u8]>, &str)> = vec![
        ("GET", "/api/orders?limit=5", vec![], None, "allow"),
        ("GET", "/api/orders?limit=500", vec![], None, "400 invalid_parameter /query/limit"),
        ("GET", "/api/orders/7", vec![], None, "allow"),
        ("GET", "/api/orders/0", vec![], None, "400 invalid_parameter /path/id"),
        ("DELETE", "/api/orders/7", vec![], None, "405 method_not_allowed allow=GET, PATCH"),
        ("GET", "/api/customers", vec![], None, "404 unknown_path"),
        ("POST", "/api/orders", json_ct.to_vec(), Some(br#"{"sku": "a1"}"#), "allow"),
        ("POST", "/api/orders", json_ct.to_vec(), Some(br#"{"sku": 1}  "#), "400 schema_violation /sku"),
        ("POST", "/api/orders", json_ct.to_vec(), Some(b"{not json}   "), "400 invalid_json"),
        ("POST", "/api/orders", vec![("content-type", "application/xml"), ("content-length", "3")], None, "415 unsupported_media_type"),
        ("POST", "/api/orders", vec![("content-length", "3")], None, "415 unsupported_media_type"),
        ("POST", "/api/orders", vec![("content-type", "application/json"), ("content-length", "0")], None, "400 body_missing"),
        ("POST", "/api/orders", vec![("content-type", "application/json"), ("content-length", "9999999")], None, "413 body_too_large"),
        // A non-JSON entry: the content type is checked, the body is not parsed.
        ("POST", "/api/orders", vec![("content-type", "text/csv"), ("content-length", "5")], Some(b"{{{{{"), "allow"),
        // Not required: no body is fine, a +json body is validated.
        ("PATCH", "/api/orders/7", vec![("content-length", "0")], None, "allow"),
        (
            "PATCH",
            "/api/orders/7",
            vec![("content-type", "application/merge-patch+json"), ("content-length", "8")],
            Some(br#"{"a":1,"b":2}"#),
            "400 schema_violation /",
        ),
        ("GET", "/api/orders/7", vec![("content-type", "application/json"), ("content-length", "2")], None, "allow"),
    ];
    for (method, path, headers, body, want) in rows {
        assert_eq!(decide(&p, method, path, &headers, body), want, "{method} {path} {headers:?}");
    }
}

#[test]
fn policy_rule_unknown_routes_can_pass() {
    let p = policy_with(json!({"document": shop(), "unknown_path": "pass", "unknown_method": "pass"}));
    assert_eq!(decide(&p, "GET", "/elsewhere", &[], None), "allow unvalidated unknown_path");
    assert_eq!(decide(&p, "DELETE", "/api/orders/7", &[], None), "allow unvalidated method_not_allowed");
    let p = policy_with(json!({"document": shop(), "unknown_method": "404"}));
    assert_eq!(decide(&p, "DELETE", "/api/orders/7", &[], None), "404 unknown_path");
    let e = try_policy(json!({"document": shop(), "unknown_path": "405"})).unwrap_err().to_string();
    assert_eq!(e, "default.openapi.unknown_path: \"405\" needs a known path: use \"404\" or \"pass\"");
    let p = policy_with(json!({"document": shop(), "base_path": "/"}));
    assert_eq!(decide(&p, "GET", "/orders/7", &[], None), "allow");
}

#[test]
fn policy_rule_config_errors() {
    let e = try_policy(json!({})).unwrap_err().to_string();
    assert_eq!(e, "default.openapi: give the OpenAPI document inline (document) or where to fetch it (source)");
    let e = try_policy(json!({"document": shop(), "source": {"cluster": "c", "path": "/o.yaml"}})).unwrap_err().to_string();
    assert_eq!(e, "default.openapi.source: give document or source, not both");
    let mut bad = shop();
    bad["components"]["schemas"]["Order"]["properties"]["sku"]["type"] = json!("strin");
    let e = try_policy(json!({"document": bad})).unwrap_err().to_string();
    assert!(e.starts_with("default.openapi.document.components.schemas.Order.properties.sku.type: not a valid 2020-12 schema"), "{e}");
    let doc = json!({"policy_version": "t1", "default": {"openapi": {"document": shop()}, "body_schema": {}}});
    let e = compile::<ValidatePolicy>(doc.to_string().as_bytes()).unwrap_err().to_string();
    assert!(e.starts_with("default.body_schema: openapi and the plain fields"), "{e}");
}

#[test]
fn fetched_documents_are_used_once_loaded() {
    let doc = json!({"policy_version": "t1", "rules": [{"name": "shop", "match": {"path_prefix": "/api"},
        "openapi": {"source": {"cluster": "specs", "path": "/shop.yaml"}}}], "default": {}});
    let p = compile::<ValidatePolicy>(doc.to_string().as_bytes()).unwrap();
    let remote = p.remote_documents();
    assert_eq!(remote.len(), 1);
    assert_eq!((remote[0].rule, remote[0].source.path.as_str(), remote[0].source.kind), (0, "/shop.yaml", "openapi"));
    assert_eq!((remote[0].source.schedule.refresh_ms, remote[0].source.max_bytes), (300_000, 4 << 20));
    assert!(p.reads_all_headers());
    // Nothing loaded: the policy's failure mode (deny) gives 503.
    assert_eq!(decide(&p, "GET", "/api/orders/7", &[], None), "503 document_unavailable");
    let loaded = Arc::new(p.compile_document(0, shop().to_string().as_bytes()).unwrap());
    let docs = move |i: usize| (i == 0).then(|| loaded.clone());
    assert_eq!(decide_with(&p, "GET", "/api/orders/7", &[], None, &docs), "allow");
    assert_eq!(decide_with(&p, "GET", "/api/orders/0", &[], None, &docs), "400 invalid_parameter /path/id");
    // A bad fetched document is an error at the source's path.
    let e = p.compile_document(0, b"openapi: 2.0\n").unwrap_err().to_string();
    assert!(e.starts_with("rules[0].openapi.source.openapi: unsupported OpenAPI version \"2.0\""), "{e}");
    // failure_mode allow: through, unvalidated.
    let doc = json!({"policy_version": "t1", "default": {"openapi": {"source": {"cluster": "specs", "path": "/shop.yaml", "failure_mode": "allow"}}}});
    let p = compile::<ValidatePolicy>(doc.to_string().as_bytes()).unwrap();
    assert_eq!(decide(&p, "GET", "/api/orders/7", &[], None), "allow unvalidated document_unavailable");
    assert_eq!(p.remote_documents()[0].rule, 0);
}

#[test]
fn header_needs_cover_the_document_s_parameters() {
    let mut d = shop();
    d["paths"]["/orders"]["get"]["parameters"] = json!([{"name": "X-Trace", "in": "header", "schema": {"type": "string"}}, {"name": "s", "in": "cookie", "schema": {"type": "string"}}]);
    let p = policy_with(json!({"document": d}));
    let needs = p.header_needs();
    for h in [":method", ":path", "content-type", "content-length", "x-trace", "cookie"] {
        assert!(needs.names().iter().any(|n| n == h), "{h} in {:?}", needs.names());
    }
    assert!(!p.reads_all_headers());
}

#[test]
fn example_document_compiles_and_is_measured() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../deploy/policies/openapi");
    for name in ["orders-api.yaml", "orders-api.json", "orders-api-3.0.yaml"] {
        let Ok(text) = std::fs::read(dir.join(name)) else {
            println!("measured: {name} not present, skipped");
            continue;
        };
        let t = Instant::now();
        let a = OpenApi::from_bytes(&text, &OpenApiOptions::default(), &at()).unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "measured: {name} ({} bytes, {} operations) compiled in {:?} (debug build)",
            text.len(),
            a.operations().count(),
            t.elapsed()
        );
        assert!(a.operations().count() > 0);
        if name != "orders-api-3.0.yaml" {
            // The concrete path beside its template, and the base path of servers[0].
            assert_eq!(route(&a, "GET", "/api/orders/summary"), "GET /orders/summary", "{name}");
            assert_eq!(route(&a, "GET", "/api/orders/12"), "GET /orders/{orderId} orderId=12", "{name}");
            assert_eq!(route(&a, "GET", "/orders/12"), "404", "{name}");
        }
    }
}

/// Components `S0` … `S{n}`, each `allOf` the next, the last an integer: with the body schema's
/// own `$ref`, `n + 2` in-place references.
fn in_place_chain(n: usize) -> Value {
    let mut schemas = serde_json::Map::new();
    for i in 0..n {
        schemas.insert(format!("S{i}"), json!({"allOf": [{"$ref": format!("#/components/schemas/S{}", i + 1)}]}));
    }
    schemas.insert(format!("S{n}"), json!({"type": "integer"}));
    body_doc("3.1.0", json!({"$ref": "#/components/schemas/S0"}), Value::Object(schemas))
}

#[test]
fn in_place_ref_chains_are_bounded() {
    let a = api(&in_place_chain(MAX_IN_PLACE_REFS - 1));
    assert!(accepts(&a, &json!(1)) && !accepts(&a, &json!("1")));
    let e = refused(&in_place_chain(MAX_IN_PLACE_REFS));
    assert_eq!(
        e,
        format!("document.paths./items.post.requestBody.content.application/json.schema: a chain of more than {MAX_IN_PLACE_REFS} in-place $refs (allOf, anyOf, oneOf, not, if/then/else or a bare $ref) starts here: not supported")
    );
    // 5,000 (which exhausted the stack natively before the bound) is refused the same way.
    assert!(refused(&in_place_chain(5_000)).contains("in-place $refs"));
}

/// The worst the bounds allow: a recursive schema whose every level passes through the longest
/// in-place chain, and a body nested as deep as serde_json parses (128). No stack overflow.
#[test]
fn worst_recursion_the_bounds_allow_validates() {
    let mut schemas = serde_json::Map::new();
    let n = MAX_IN_PLACE_REFS - 2;
    schemas.insert("Node".into(), json!({"allOf": [{"$ref": "#/components/schemas/A0"}]}));
    for i in 0..n {
        schemas.insert(format!("A{i}"), json!({"anyOf": [{"$ref": format!("#/components/schemas/A{}", i + 1)}]}));
    }
    schemas.insert(
        format!("A{n}"),
        json!({"type": "object", "properties": {"c": {"$ref": "#/components/schemas/Node"}, "v": {"type": "integer"}}}),
    );
    let a = api(&body_doc("3.1.0", json!({"$ref": "#/components/schemas/Node"}), Value::Object(schemas)));
    let nested = |leaf: Value| {
        let mut v = json!({"v": leaf});
        for _ in 0..126 {
            v = json!({"c": v});
        }
        v
    };
    let t = Instant::now();
    assert!(accepts(&a, &nested(json!(1))));
    assert!(!accepts(&a, &nested(json!("x"))));
    println!("measured: 127 levels x {MAX_IN_PLACE_REFS} in-place $refs validated twice in {:?} (debug build)", t.elapsed());
}

#[test]
fn operations_naming_the_same_schema_share_its_validator() {
    let body = |schema: Value| json!({"requestBody": {"content": {"application/json": {"schema": schema}}}, "responses": {}});
    let d = doc(
        "3.1.0",
        json!({"/a": {"post": body(json!({"$ref": "#/components/schemas/S"})), "put": body(json!({"$ref": "#/components/schemas/S"}))},
               "/b": {"post": body(json!({"type": "object", "required": ["x"]}))}}),
        json!({"schemas": {"S": {"type": "integer"}}}),
    );
    let a = api(&d);
    let schema = |method: &str, path: &str| {
        let Route::Found { op, .. } = a.route(method, path) else { panic!("{method} {path}") };
        let BodyChoice::Media(_, entry) = op.body_for(Some("application/json")) else { panic!("{method} {path}: no JSON body") };
        entry.schema().unwrap().clone()
    };
    assert!(Arc::ptr_eq(&schema("POST", "/a"), &schema("PUT", "/a")));
    assert!(!Arc::ptr_eq(&schema("POST", "/a"), &schema("POST", "/b")));
    assert!(schema("PUT", "/a").is_valid(&json!(1)) && !schema("POST", "/b").is_valid(&json!({})));
}

#[test]
fn a_rollout_candidate_uses_the_active_policy_s_fetched_documents() {
    let with = |candidate_path: &str, base_path: Option<&str>| {
        let mut openapi = json!({"source": {"cluster": "specs", "path": candidate_path}});
        if let Some(b) = base_path {
            openapi["base_path"] = json!(b);
        }
        json!({"policy_version": "t1", "default": {"openapi": {"source": {"cluster": "specs", "path": "/shop.yaml"}}},
            "rollout": {"percent": 10, "candidate": {"policy_version": "t2", "default": {"openapi": openapi}}}})
    };
    compile::<ValidatePolicy>(with("/shop.yaml", None).to_string().as_bytes()).unwrap();
    let refused = |doc: Value| compile::<ValidatePolicy>(doc.to_string().as_bytes()).unwrap_err().to_string();
    let e = refused(with("/shop-v2.yaml", None));
    assert!(e.starts_with("rollout.candidate.default.openapi.source: a candidate's openapi.source must be the active policy's"), "{e}");
    let e = refused(with("/shop.yaml", Some("/v2")));
    assert!(e.starts_with("rollout.candidate.default.openapi.source:"), "{e}");
}
