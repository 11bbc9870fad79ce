//! The plain form of a rule through `start` and `finish`: each status (400 ×3, 404, 413 by
//! `content-length` and by bytes, 415, 503), a missing or optional body, bodies the headers do
//! not announce, parameters before the body, dry run, header needs, and configuration errors
//! with their field paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewarden_policy::{compile, ConfigError, FilterPolicy, Mode, RequestFacts, Verdict};
use gatewarden_validate_policy::{
    BodyInput, BodyPlan, Start, ValidateOutcome, ValidatePolicy, ValidateReason, DEFAULT_MAX_BODY_BYTES, SCHEMA_VIOLATION_BODY,
};
use serde_json::{json, Value};

fn policy_doc(doc: Value) -> Result<ValidatePolicy, ConfigError> {
    compile::<ValidatePolicy>(doc.to_string().as_bytes())
}

fn policy(default: Value) -> ValidatePolicy {
    policy_doc(json!({"policy_version": "t1", "default": default})).unwrap()
}

fn headers(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![(":method".to_owned(), method.to_owned()), (":path".to_owned(), path.to_owned())];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

fn start(p: &ValidatePolicy, method: &str, path: &str, extra: &[(&str, &str)]) -> Start {
    let h = headers(method, path, extra);
    p.start(&RequestFacts::new(&h, None))
}

fn done(s: Start) -> ValidateOutcome {
    match s {
        Start::Done(o) => o,
        Start::NeedBody(plan) => panic!("decided on the headers expected, got a body plan of {} bytes", plan.max_bytes),
    }
}

fn plan(s: Start) -> BodyPlan {
    match s {
        Start::NeedBody(plan) => plan,
        Start::Done(o) => panic!("a body plan expected, got {:?}", o.reason),
    }
}

/// The reason (or `allow`) and status of an outcome.
fn verdict(o: &ValidateOutcome) -> (&'static str, u16) {
    match &o.decision.verdict {
        Verdict::Allow => ("allow", 200),
        Verdict::Deny(d) => (d.reason, d.status),
    }
}

fn order_rule() -> Value {
    json!({
        "path_template": "/orders/{id}",
        "parameters": [
            {"name": "id", "in": "path", "schema": {"type": "integer", "minimum": 1}},
            {"name": "dry", "in": "query", "schema": {"type": "boolean"}},
        ],
        "body_schema": {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "minimum": 1}}},
        "max_body_bytes": 64,
    })
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn each_status_of_the_plain_form() {
    let p = policy(order_rule());
    let post = |path: &str, extra: &[(&str, &str)]| start(&p, "POST", path, extra);
    let body = |path: &str, b: &[u8]| {
        let len = b.len().to_string();
        p.finish(plan(post(path, &[JSON, ("content-length", &len)])), BodyInput::Whole(b))
    };
    // Allowed: headers, then the body.
    assert_eq!(verdict(&body("/orders/7?dry=true", br#"{"qty": 2}"#)), ("allow", 200));
    // 400 ×3: invalid JSON, schema violation, invalid parameter.
    assert_eq!(verdict(&body("/orders/7", b"{")), ("invalid_json", 400));
    let violation = body("/orders/7", br#"{"qty": 0}"#);
    assert_eq!(verdict(&violation), ("schema_violation", 400));
    assert_eq!(violation.errors[0].instance, "/qty");
    let bad_param = done(post("/orders/0?dry=maybe", &[JSON, ("content-length", "10")]));
    assert_eq!(verdict(&bad_param), ("invalid_parameter", 400));
    let pointers: Vec<(&str, &str)> = bad_param.errors.iter().map(|e| (e.instance.as_str(), e.keyword.as_str())).collect();
    assert_eq!(pointers, [("/path/id", "minimum"), ("/query/dry", "type")]);
    let problem: Value = serde_json::from_str(bad_param.body.as_deref().unwrap()).unwrap();
    assert_eq!(problem["detail"], "a request parameter is missing or invalid");
    assert_eq!(
        problem["errors"][1],
        json!({"pointer": "/query/dry", "schema": "/type", "keyword": "type", "detail": problem["errors"][1]["detail"]})
    );
    // 404: the path does not match the template.
    for path in ["/orders", "/orders/", "/orders/7/items", "/other/7"] {
        assert_eq!(verdict(&done(post(path, &[JSON]))), ("unknown_path", 404), "{path}");
    }
    // 413 by content-length (no body read), by digits beyond u64, and by the bytes that came.
    assert_eq!(verdict(&done(post("/orders/7", &[JSON, ("content-length", "65")]))), ("body_too_large", 413));
    assert_eq!(verdict(&done(post("/orders/7", &[JSON, ("content-length", "99999999999999999999999")]))), ("body_too_large", 413));
    let chunked = plan(post("/orders/7", &[JSON, ("transfer-encoding", "chunked")]));
    assert_eq!(chunked.max_bytes, 64);
    assert_eq!(verdict(&p.finish(chunked.clone(), BodyInput::TooLarge { seen: 65 })), ("body_too_large", 413));
    assert_eq!(verdict(&p.finish(chunked.clone(), BodyInput::Whole(&[b' '; 65]))), ("body_too_large", 413));
    // 415: another type, or none while a body is announced.
    assert_eq!(
        verdict(&done(post("/orders/7", &[("content-type", "text/plain"), ("content-length", "5")]))),
        ("unsupported_media_type", 415)
    );
    assert_eq!(verdict(&done(post("/orders/7", &[("content-length", "5")]))), ("unsupported_media_type", 415));
    assert_eq!(verdict(&done(post("/orders/7", &[("transfer-encoding", "chunked")]))), ("unsupported_media_type", 415));
    assert_eq!(verdict(&done(post("/orders/7", &[("content-type", "application/json-seq"), ("content-length", "5")]))).1, 415);
    // 503: the host cannot hand the body over.
    assert_eq!(verdict(&p.finish(chunked, BodyInput::Unavailable)), ("body_unavailable", 503));
}

#[test]
fn a_missing_body_is_refused_unless_optional() {
    let required = policy(json!({"body_schema": {"type": "object"}}));
    let optional = policy(json!({"body_schema": {"type": "object"}, "body_required": false}));
    // content-length: 0 decides at the headers, content type or not.
    assert_eq!(verdict(&done(start(&required, "POST", "/", &[("content-length", "0")]))), ("body_missing", 400));
    assert_eq!(verdict(&done(start(&optional, "POST", "/", &[("content-length", "0"), ("content-type", "text/plain")]))), ("allow", 200));
    // Neither content-length nor transfer-encoding: HTTP/2 may still send a body, so the
    // request waits; no body, or an empty one, is a missing body.
    for input in [BodyInput::Absent, BodyInput::Whole(b"")] {
        let r = required.finish(plan(start(&required, "POST", "/", &[])), input);
        assert_eq!(verdict(&r), ("body_missing", 400), "{input:?}");
        let o = optional.finish(plan(start(&optional, "POST", "/", &[])), input);
        assert_eq!(verdict(&o), ("allow", 200), "{input:?}");
    }
    // An unannounced body still needs its content type.
    let r = optional.finish(plan(start(&optional, "POST", "/", &[])), BodyInput::Whole(b"{}"));
    assert_eq!(verdict(&r), ("unsupported_media_type", 415));
    let r = optional.finish(plan(start(&optional, "POST", "/", &[("content-type", "text/plain")])), BodyInput::Whole(b"{}"));
    assert_eq!(verdict(&r), ("unsupported_media_type", 415));
    let r = optional.finish(plan(start(&optional, "POST", "/", &[JSON])), BodyInput::Whole(b"{}"));
    assert_eq!(verdict(&r), ("allow", 200));
    // A content-length that is not digits says nothing: the body decides (read up to the limit).
    let p = plan(start(&required, "POST", "/", &[JSON, ("content-length", "12abc")]));
    assert_eq!(p.max_bytes, DEFAULT_MAX_BODY_BYTES as usize);
}

#[test]
fn media_ranges_allow_types_suffixes_and_ignore_parameters() {
    let p = policy(json!({"body_schema": {}, "allowed_content_types": ["application/*+json", "text/*", "application/json"]}));
    let ct = |value: &str| verdict(&done(start(&p, "POST", "/", &[("content-type", value), ("content-length", "0")]))).0;
    assert_eq!(ct("application/json"), "body_missing", "an allowed type with an empty body: the body is missing");
    let announce = |value: &str| match start(&p, "POST", "/", &[("content-type", value), ("content-length", "2")]) {
        Start::NeedBody(_) => "read",
        Start::Done(o) => verdict(&o).0,
    };
    for ok in ["application/vnd.api+json", "Application/JSON; charset=utf-8", "text/csv"] {
        assert_eq!(announce(ok), "read", "{ok}");
    }
    for refused in ["application/xml", "application/+json", "json", "", "multipart/form-data; boundary=x"] {
        assert_eq!(announce(refused), "unsupported_media_type", "{refused}");
    }
    assert_eq!(ct("text/plain"), "body_missing");
}

#[test]
fn rules_without_a_body_schema_never_read_the_body() {
    let p = policy(json!({"parameters": [{"name": "q", "in": "query", "required": true, "schema": {"type": "string"}}]}));
    let o = done(start(&p, "POST", "/x?q=1", &[("content-length", "999999999"), ("content-type", "image/png")]));
    assert_eq!(verdict(&o), ("allow", 200));
    assert_eq!(verdict(&done(start(&p, "GET", "/x", &[]))), ("invalid_parameter", 400));
    let h = headers("POST", "/", &[]);
    assert!(!p.needs_body(&RequestFacts::new(&h, None)));
    let none = policy(json!({}));
    assert_eq!(verdict(&done(start(&none, "POST", "/", &[("transfer-encoding", "chunked")]))), ("allow", 200));
}

#[test]
fn the_path_is_checked_before_parameters_and_parameters_before_the_body() {
    let p = policy(order_rule());
    // An unknown path with a bad body announcement is a 404.
    assert_eq!(verdict(&done(start(&p, "POST", "/nope?dry=x", &[("content-length", "1000")]))).0, "unknown_path");
    // A bad parameter with a too-large body is a 400 invalid_parameter.
    assert_eq!(verdict(&done(start(&p, "POST", "/orders/x", &[("content-length", "1000")]))).0, "invalid_parameter");
}

#[test]
fn verbose_false_hides_the_error_list_but_keeps_it_for_the_log() {
    let mut rule = order_rule();
    rule["verbose"] = json!(false);
    rule["max_errors"] = json!(1);
    let p = policy(rule);
    let o = done(start(&p, "POST", "/orders/0?dry=x", &[JSON, ("content-length", "2")]));
    assert_eq!(verdict(&o), ("invalid_parameter", 400));
    assert_eq!(o.body, None, "the fixed body is sent");
    assert_eq!(o.errors.len(), 1, "max_errors bounds the list");
    let body = p.finish(plan(start(&p, "POST", "/orders/1", &[JSON, ("content-length", "9")])), BodyInput::Whole(br#"{"qty":0}"#));
    assert_eq!(body.body, None);
    assert_eq!(ValidateReason::SchemaViolation.denial().body, SCHEMA_VIOLATION_BODY);
}

#[test]
fn dry_run_decides_as_enforce_and_the_glue_lets_it_through() {
    let doc = |mode: &str| json!({"policy_version": "t1", "mode": mode, "default": order_rule()});
    let enforce = policy_doc(doc("enforce")).unwrap();
    let dry = policy_doc(doc("dry_run")).unwrap();
    assert_eq!(enforce.header().mode, Mode::Enforce);
    assert_eq!(dry.header().mode, Mode::DryRun, "the glue lets a would-be denial through and counts it");
    for (path, extra) in [("/orders/0", vec![JSON]), ("/nope", vec![]), ("/orders/1", vec![JSON, ("content-length", "65")])] {
        let a = done(start(&enforce, "POST", path, &extra));
        let b = done(start(&dry, "POST", path, &extra));
        assert_eq!((a.reason, a.errors), (b.reason, b.errors), "{path}: decided as in enforce mode");
        assert!(b.reason.is_some(), "{path}: still a denial for the log");
    }
}

#[test]
fn header_needs_list_every_header_read() {
    let doc = json!({
        "policy_version": "t1",
        "client_address": {"xff_num_trusted_hops": 1},
        "rules": [{
            "match": {"headers": [{"name": "x-tenant", "exact": "a"}]},
            "path_template": "/a/{id}",
            "parameters": [
                {"name": "id", "in": "path", "schema": {}},
                {"name": "X-Trace", "in": "header", "schema": {}},
                {"name": "s", "in": "cookie", "schema": {}},
            ],
            "body_schema": {},
        }],
    });
    let p = policy_doc(doc).unwrap();
    let needs = p.header_needs();
    for name in [":path", "content-length", "content-type", "cookie", "transfer-encoding", "x-forwarded-for", "x-tenant", "x-trace"] {
        assert!(needs.names().iter().any(|n| n == name), "{name} missing from {:?}", needs.names());
    }
    let none = policy(json!({}));
    assert_eq!(none.header_needs().names(), [] as [&str; 0], "a rule that checks nothing reads nothing");
}

#[test]
fn config_errors_name_the_field_path_and_quote_the_value() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"rules": [{}, {}, {"body_schema": {}, "allowed_content_types": ["application/json", "json"]}]}),
         r#"rules[2].allowed_content_types[1]: invalid media range "json": use type/subtype, type/*, */* or type/*+suffix"#),
        (json!({"default": {"body_schema": {}, "allowed_content_types": []}}),
         "default.allowed_content_types: an empty list would refuse every body"),
        (json!({"default": {"body_schema": {}, "max_body_bytes": 0}}), "default.max_body_bytes: 0 is not between 1 and 16777216"),
        (json!({"rules": [{"body_schema": {}, "max_body_bytes": 16777217}]}), "rules[0].max_body_bytes: 16777217 is not between 1 and 16777216"),
        (json!({"rules": [{"body_required": true}]}), "rules[0].body_required: applies to the body, which is read only with body_schema"),
        (json!({"rules": [{"allowed_content_types": ["text/plain"]}]}), "rules[0].allowed_content_types: applies to the body"),
        (json!({"rules": [{"max_body_bytes": 10}]}), "rules[0].max_body_bytes: applies to the body"),
        (json!({"rules": [{"path_template": "orders/{id}"}]}), r#"rules[0].path_template: invalid path template "orders/{id}": it must start with "/""#),
        (json!({"rules": [{"path_template": "/o/{id"}]}), r#"rules[0].path_template: invalid path template "/o/{id": unclosed "{""#),
        (json!({"rules": [{"path_template": "/o/{id}", "parameters": [{"name": "id", "in": "path", "style": "deepObject", "schema": {}}]}]}),
         r#"rules[0].parameters[0].style: style "deepObject" is not allowed in path: use simple, label, matrix"#),
        (json!({"rules": [{"parameters": [{"name": "id", "in": "path", "schema": {}}]}]}),
         r#"rules[0].parameters[0].name: path parameter "id" is not in the path template (its names: none)"#),
        (json!({"rules": [{"parameters": [{"name": "q", "in": "query", "schema": {"minimum": "one"}}]}]}),
         "rules[0].parameters[0].schema.minimum: the 2020-12 schema does not compile"),
        (json!({"rules": [{"parameters": [{"name": "q", "in": "query", "schema": {"format": "colour"}}]}]}),
         "rules[0].parameters[0].schema"),
        (json!({"rules": [{"openapi": {"document": {}}, "body_schema": {}}]}),
         "rules[0].body_schema: openapi and the plain fields (body_schema, body_required, allowed_content_types, path_template, parameters) exclude each other"),
        (json!({"rules": [{"openapi": {"document": {}}, "parameters": [{"name": "q", "in": "query", "schema": {}}]}]}),
         "rules[0].parameters: openapi and the plain fields"),
        (json!({"default": {"max_errors": 0}}), "default.max_errors: 0 is not between 1 and 100"),
        (json!({"rules": [{"allowed_content_tyeps": []}]}), "rules[0].allowed_content_tyeps: unknown field `allowed_content_tyeps`"),
        (json!({"rules": [{"parameters": {"name": "q"}}]}), "rules[0].parameters: invalid type: map, expected a sequence"),
    ];
    for (mut doc, want) in cases {
        doc["policy_version"] = json!("t1");
        let err = policy_doc(doc.clone()).unwrap_err().to_string();
        assert!(err.starts_with(want), "{doc}\n  expected: {want}\n  got:      {err}");
    }
    // format_assertions: false lets a parameter schema name a format the validator does not know.
    let ok = json!({"policy_version": "t1", "rules": [{"format_assertions": false, "parameters": [{"name": "q", "in": "query", "schema": {"format": "colour"}}]}]});
    assert!(policy_doc(ok).is_ok());
}
