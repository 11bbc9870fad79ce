//! Measures the two JSON Schema validator candidates side by side (docs/design/validator-choice.md):
//! speed on 200 B, 10 KB and 100 KB order bodies, error output, drafts, `format`, and hostile input.
//!
//! `cargo run --release -p gatewarden-validate-policy --features compare --example validator_compare`
//!
//! Timings are wall clock on a shared machine: each figure is the best of 5 rounds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One leaf error: instance pointer, schema location, keyword.
type Leaf = (String, String, String);

trait Candidate: Sized {
    const NAME: &'static str;
    fn compile(schema: &Value, formats: bool) -> Result<Self, String>;
    fn is_valid(&self, v: &Value) -> bool;
    fn errors(&self, v: &Value) -> Vec<Leaf>;
}

struct Js(jsonschema::Validator);

impl Candidate for Js {
    const NAME: &'static str = "jsonschema 0.61.2";
    fn compile(schema: &Value, formats: bool) -> Result<Self, String> {
        jsonschema::options().should_validate_formats(formats).build(schema).map(Js).map_err(|e| format!("{} at {}", e, e.schema_path()))
    }
    fn is_valid(&self, v: &Value) -> bool {
        self.0.is_valid(v)
    }
    fn errors(&self, v: &Value) -> Vec<Leaf> {
        self.0.iter_errors(v).map(|e| (e.instance_path().to_string(), e.schema_path().to_string(), e.kind().keyword().to_owned())).collect()
    }
}

/// jsonschema as the policy configures it: `pattern` on the linear-time `regex` crate.
struct JsLinear(jsonschema::Validator);

impl Candidate for JsLinear {
    const NAME: &'static str = "jsonschema, regex only";
    fn compile(schema: &Value, formats: bool) -> Result<Self, String> {
        jsonschema::options()
            .should_validate_formats(formats)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(schema)
            .map(JsLinear)
            .map_err(|e| format!("{} at {}", e, e.schema_path()))
    }
    fn is_valid(&self, v: &Value) -> bool {
        self.0.is_valid(v)
    }
    fn errors(&self, v: &Value) -> Vec<Leaf> {
        self.0.iter_errors(v).map(|e| (e.instance_path().to_string(), e.schema_path().to_string(), e.kind().keyword().to_owned())).collect()
    }
}

/// fancy-regex's backtrack limit, reached by every string of an array: what one body costs.
fn backtracking() {
    let strings: Vec<String> = (0..1000).map(|i| format!("{}{i}!", "a".repeat(30))).collect();
    let body = json!(strings);
    for limit in [10_000, 1_000_000] {
        let opts = jsonschema::PatternOptions::fancy_regex().backtrack_limit(limit);
        let Ok(v) = jsonschema::options().with_pattern_options(opts).build(&json!({"items": {"pattern": "^(a|a)*\\1$"}})) else {
            continue;
        };
        let (ok, d) = timed(|| v.is_valid(&body));
        let (errs, d2) = timed(|| v.iter_errors(&body).count());
        println!("jsonschema fancy-regex, backtrack_limit {limit}: 1,000 strings of 32 B hitting it: is_valid={ok} in {d:?}, iter_errors {errs} in {d2:?}");
    }
}

struct Boon(boon::Schemas, boon::SchemaIndex);

impl Candidate for Boon {
    const NAME: &'static str = "boon 0.6.1";
    fn compile(schema: &Value, formats: bool) -> Result<Self, String> {
        let mut c = boon::Compiler::new();
        c.set_default_draft(boon::Draft::V2020_12);
        if formats {
            c.enable_format_assertions();
        }
        c.add_resource("urn:body", schema.clone()).map_err(|e| format!("{e:#}"))?;
        let mut s = boon::Schemas::new();
        let i = c.compile("urn:body", &mut s).map_err(|e| format!("{e:#}"))?;
        Ok(Boon(s, i))
    }
    fn is_valid(&self, v: &Value) -> bool {
        self.0.validate(v, self.1).is_ok()
    }
    fn errors(&self, v: &Value) -> Vec<Leaf> {
        fn walk(e: &boon::ValidationError, out: &mut Vec<Leaf>) {
            if e.causes.is_empty() {
                let kw = e.kind.keyword_path().map(|k| k.to_string()).unwrap_or_default();
                out.push((e.instance_location.to_string(), e.schema_url.to_owned(), kw));
            }
            for c in &e.causes {
                walk(c, out);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = self.0.validate(v, self.1) {
            walk(&e, &mut out);
        }
        out
    }
}

fn order_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "item": {
                "type": "object",
                "required": ["sku", "quantity", "unit_price"],
                "additionalProperties": false,
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4,8}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "unit_price": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                    "note": {"type": "string", "maxLength": 200}
                }
            },
            "address": {
                "type": "object",
                "required": ["street", "city", "country"],
                "properties": {
                    "street": {"type": "string", "minLength": 1, "maxLength": 200},
                    "city": {"type": "string", "minLength": 1, "maxLength": 100},
                    "postcode": {"type": "string", "pattern": "^[0-9A-Z -]{3,10}$"},
                    "country": {"enum": ["DE", "FR", "GB", "NL", "US"]}
                }
            }
        },
        "type": "object",
        "required": ["id", "customer", "items", "created_at"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "customer": {
                "type": "object",
                "required": ["email"],
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "name": {"type": "string", "maxLength": 100},
                    "phone": {"type": "string", "pattern": "^\\+[0-9]{6,15}$"}
                }
            },
            "status": {"enum": ["new", "paid", "shipped"]},
            "created_at": {"type": "string", "format": "date-time"},
            "shipping": {"$ref": "#/$defs/address"},
            "items": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"$ref": "#/$defs/item"}},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}
        }
    })
}

/// The order schema without `multipleOf: 0.01`, which boon gets wrong for 19.99 (f64 division):
/// the speed comparison runs both on the same schema.
fn speed_schema() -> Value {
    let mut s = order_schema();
    if let Some(Value::Object(price)) = s.pointer_mut("/$defs/item/properties/unit_price") {
        price.remove("multipleOf");
    }
    s
}

fn order(items: usize) -> Value {
    let items: Vec<Value> = (0..items)
        .map(|i| json!({"sku": format!("ABC-{:06}", i), "quantity": 1 + i % 50, "unit_price": 19.99, "note": "gift wrap"}))
        .collect();
    json!({
        "id": "0b6c1a7e-3f1d-4c55-9a53-2f0f5c8e9d10",
        "customer": {"email": "ann@example.com", "name": "Ann"},
        "status": "new",
        "created_at": "2026-12-03T15:00:00Z",
        "items": items
    })
}

/// The smallest order at least `bytes` long (1 item for the small body).
fn order_of_size(bytes: usize) -> Vec<u8> {
    let mut n = 1;
    loop {
        let b = serde_json::to_vec(&order(n)).unwrap_or_default();
        if b.len() >= bytes || n > 100_000 {
            return b;
        }
        n = (n * bytes / b.len().max(1)).max(n + 1);
    }
}

/// Best of 5 rounds of `iters` calls, per call.
fn best<F: FnMut()>(iters: u32, mut f: F) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed() / iters);
    }
    best
}

fn speed<C: Candidate>(bodies: &[(&str, Vec<u8>)]) {
    if let Ok(v) = C::compile(&order_schema(), true) {
        let small = bodies.first().map(|b| b.1.as_slice()).unwrap_or_default();
        let inst: Value = serde_json::from_slice(small).unwrap_or(Value::Null);
        println!("{}: valid 200 B order with unit_price 19.99, multipleOf 0.01: {:?}", C::NAME, v.errors(&inst));
    }
    let v = match C::compile(&speed_schema(), true) {
        Ok(v) => v,
        Err(e) => return println!("{}: order schema does not compile: {e}", C::NAME),
    };
    let t = Instant::now();
    for _ in 0..100 {
        let _ = C::compile(&speed_schema(), true);
    }
    println!("{}: compile order schema {:?}", C::NAME, t.elapsed() / 100);
    for (name, body) in bodies {
        let inst: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let errs = v.errors(&inst);
        assert!(errs.is_empty(), "{} rejects the valid {name} body: {errs:?}", C::NAME);
        let iters = (2_000_000 / body.len()).max(20) as u32;
        let valid = best(iters, || assert!(v.is_valid(std::hint::black_box(&inst))));
        let full = best(iters, || assert!(v.errors(std::hint::black_box(&inst)).is_empty()));
        let kb = body.len() as f64 / 1024.0;
        println!(
            "  {name:>6} ({} B): is_valid {:>10?} = {:>6.0} ns/KB; errors() {:>10?} = {:>6.0} ns/KB",
            body.len(),
            valid,
            valid.as_nanos() as f64 / kb,
            full,
            full.as_nanos() as f64 / kb
        );
    }
}

fn parse_speed(bodies: &[(&str, Vec<u8>)]) {
    for (name, body) in bodies {
        let iters = (2_000_000 / body.len()).max(20) as u32;
        let d = best(iters, || {
            let _ = std::hint::black_box(serde_json::from_slice::<Value>(std::hint::black_box(body)));
        });
        println!("  serde_json parse {name:>6}: {d:>10?} = {:>6.0} ns/KB", d.as_nanos() as f64 / (body.len() as f64 / 1024.0));
    }
}

fn error_output<C: Candidate>() {
    let v = match C::compile(&order_schema(), true) {
        Ok(v) => v,
        Err(e) => return println!("{}: {e}", C::NAME),
    };
    let bad = json!({
        "id": "not-a-uuid",
        "customer": {"email": "nope"},
        "created_at": "2026-13-03",
        "items": [{"sku": "abc", "quantity": 0, "unit_price": 1.005, "extra": 1}],
        "status": "lost"
    });
    println!("{}: errors on one bad order", C::NAME);
    for (i, s, k) in v.errors(&bad) {
        println!("  instance {i:<22} keyword {k:<22} schema {s}");
    }
    let plain = C::compile(&order_schema(), false).map(|v| v.errors(&bad).len()).unwrap_or(0);
    println!("  with format assertions off: {plain} errors");
}

fn drafts<C: Candidate>() {
    // One keyword whose meaning differs per draft, each with an instance that only that draft rejects.
    let cases: [(&str, Value, Value); 6] = [
        (
            "draft-04 exclusiveMinimum boolean",
            json!({"$schema": "http://json-schema.org/draft-04/schema#", "minimum": 5, "exclusiveMinimum": true}),
            json!(5),
        ),
        (
            "draft-06 exclusiveMinimum number",
            json!({"$schema": "http://json-schema.org/draft-06/schema#", "exclusiveMinimum": 5}),
            json!(5),
        ),
        (
            "draft-07 if/then",
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "if": {"type": "integer"}, "then": {"minimum": 10}}),
            json!(3),
        ),
        (
            "2019-09 dependentRequired",
            json!({"$schema": "https://json-schema.org/draft/2019-09/schema", "dependentRequired": {"a": ["b"]}}),
            json!({"a": 1}),
        ),
        (
            "2019-09 unevaluatedProperties",
            json!({"$schema": "https://json-schema.org/draft/2019-09/schema", "properties": {"a": true}, "unevaluatedProperties": false}),
            json!({"a": 1, "b": 2}),
        ),
        (
            "2020-12 prefixItems",
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "prefixItems": [{"type": "string"}], "items": false}),
            json!(["a", 1]),
        ),
    ];
    for (name, schema, bad) in cases {
        let r = match C::compile(&schema, false) {
            Ok(v) => if v.is_valid(&bad) { "NOT rejected" } else { "rejected" }.to_owned(),
            Err(e) => format!("compile error: {e}"),
        };
        println!("  {:<18} {name:<36} {r}", C::NAME);
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn hostile<C: Candidate>() {
    println!("{}: hostile input", C::NAME);
    // 1. Deep nesting: a recursive schema, the deepest instance serde_json parses (128 levels).
    let recursive = json!({"type": ["array", "integer"], "items": {"$ref": "#"}});
    let v = C::compile(&recursive, false).ok();
    let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    let inst: Value = serde_json::from_str(&deep).unwrap_or(Value::Null);
    if let Some(v) = &v {
        let (ok, d) = timed(|| v.is_valid(&inst));
        println!("  127-deep array, recursive schema: valid={ok} in {d:?}");
        let bad = format!("{}\"x\"{}", "[".repeat(127), "]".repeat(127));
        let inst: Value = serde_json::from_str(&bad).unwrap_or(Value::Null);
        let (errs, d) = timed(|| v.errors(&inst));
        println!("  127-deep array, bad leaf: {} errors in {d:?}: {:?}", errs.len(), errs.first().map(|e| (e.0.len(), &e.2)));
    }
    // 2. 100,000 keys against additionalProperties: false.
    let mut m = serde_json::Map::new();
    for i in 0..100_000 {
        m.insert(format!("k{i}"), json!(i));
    }
    let many = Value::Object(m);
    if let Ok(v) = C::compile(&json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false}), false) {
        let (ok, d) = timed(|| v.is_valid(&many));
        println!("  100,000 keys, additionalProperties false: valid={ok} in {d:?}");
        let (errs, d) = timed(|| v.errors(&many));
        println!("  ... errors(): {} leaf errors in {d:?}", errs.len());
    }
    if let Ok(v) = C::compile(&json!({"type": "object", "additionalProperties": {"type": "string"}}), false) {
        let (errs, d) = timed(|| v.errors(&many));
        println!("  100,000 keys, additionalProperties {{type: string}}: {} leaf errors in {d:?}", errs.len());
    }
    // 3. Huge numbers.
    if let Ok(v) = C::compile(&json!({"type": "number", "multipleOf": 0.01, "maximum": 1e300}), false) {
        for n in [json!(1e308), json!(-1e308), json!(123456789012345678901234567890.0_f64), json!(u64::MAX), json!(19.99), json!(1.005)] {
            let (ok, d) = timed(|| v.is_valid(&n));
            println!("  number {n} multipleOf 0.01, maximum 1e300: valid={ok} in {d:?}");
        }
    }
    // 4. A 1 MB string against pattern, maxLength and format email.
    let big = Value::String("a".repeat(1 << 20));
    for schema in [json!({"pattern": "^[a-z]+$"}), json!({"maxLength": 100}), json!({"format": "email"}), json!({"format": "date-time"})] {
        if let Ok(v) = C::compile(&schema, true) {
            let (ok, d) = timed(|| v.is_valid(&big));
            println!("  1 MiB string vs {schema}: valid={ok} in {d:?}");
        }
    }
    // 5. Pathological and non-regular patterns.
    let evil = Value::String(format!("{}!", "a".repeat(40)));
    for p in ["^(a+)+$", "^(a|a)*$", "^(a|aa)+$", "^(?=.*[A-Z]).{8,}$", "^(\\w+)\\s\\1$", "\\p{L}+", "^[\\w-]+$", "\\d+", "^(?!x)"] {
        match C::compile(&json!({"pattern": p}), false) {
            Ok(v) => {
                let (ok, d) = timed(|| v.is_valid(&evil));
                let long = Value::String(format!("{}!", "a".repeat(100_000)));
                let (ok2, d2) = timed(|| v.is_valid(&long));
                println!("  pattern {p:<22} on 'a'x40+'!': valid={ok} in {d:?}; on 'a'x100000+'!': valid={ok2} in {d2:?}");
            }
            Err(e) => println!("  pattern {p:<22} does not compile: {}", e.chars().take(120).collect::<String>()),
        }
    }
}

fn main() {
    let bodies: Vec<(&str, Vec<u8>)> =
        vec![("200 B", order_of_size(200)), ("10 KB", order_of_size(10_240)), ("100 KB", order_of_size(102_400))];
    // serde_json's own recursion limit: a 10,000-deep document never reaches a validator.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    println!("serde_json on 10,000-deep array: {:?}", serde_json::from_str::<Value>(&deep).map(|_| ()).map_err(|e| e.to_string()));
    println!("serde_json on 1e400: {:?}", serde_json::from_str::<Value>("1e400").map_err(|e| e.to_string()));
    parse_speed(&bodies);
    speed::<Js>(&bodies);
    speed::<JsLinear>(&bodies);
    speed::<Boon>(&bodies);
    error_output::<Js>();
    error_output::<Boon>();
    println!("drafts (by $schema):");
    drafts::<Js>();
    drafts::<Boon>();
    hostile::<Js>();
    hostile::<JsLinear>();
    hostile::<Boon>();
    backtracking();
}
