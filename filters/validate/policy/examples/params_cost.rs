//! What checking a request's parameters costs natively: a plain rule with six parameters (path,
//! query primitive, query array, deepObject, header, cookie), valid and invalid requests, and the
//! hostile bounds (a query at the 256-pair limit, 100,000 pairs, a 1 MB value).
//!
//! `cargo run --release -p gatewarden-validate-policy --example params_cost`
//!
//! Wall clock on a shared machine: each figure is the best of 5 rounds of `n` checks.

use std::time::{Duration, Instant};

use gatewarden_policy::{compile, RequestFacts};
use gatewarden_validate_policy::{Start, ValidatePolicy};
use serde_json::json;

fn best_of_5(n: u32, mut f: impl FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let doc = json!({
        "policy_version": "bench",
        "default": {
            "path_template": "/orders/{id}",
            "parameters": [
                {"name": "id", "in": "path", "schema": {"type": "integer", "minimum": 1}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "tags", "in": "query", "explode": false, "schema": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 8}},
                {"name": "filter", "in": "query", "style": "deepObject", "schema": {"type": "object", "properties": {"min": {"type": "number"}, "max": {"type": "number"}}, "additionalProperties": false}},
                {"name": "X-Trace", "in": "header", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}},
                {"name": "session", "in": "cookie", "schema": {"type": "string", "minLength": 8}},
            ],
        },
    });
    let policy = match compile::<ValidatePolicy>(doc.to_string().as_bytes()) {
        Ok(p) => p,
        Err(e) => return eprintln!("policy refused: {e}"),
    };
    let many = format!("/orders/7?{}", "a=1&".repeat(100_000));
    let at_limit = format!("/orders/7?{}", "a=1&".repeat(250));
    let big = format!("/orders/7?tags={}", "x".repeat(1 << 20));
    let cases: [(&str, String, u32); 6] = [
        ("valid, all six", "/orders/7?limit=10&tags=a,b,c&filter[min]=1.5&filter[max]=9".to_owned(), 20_000),
        ("valid, path and header only", "/orders/7".to_owned(), 20_000),
        ("invalid: three errors", "/orders/0?limit=1000&filter[x]=1".to_owned(), 20_000),
        ("250 junk pairs (under the limit)", at_limit, 2_000),
        ("100,000 pairs (refused)", many, 200),
        ("1 MB tags value", big, 20),
    ];
    println!("| request | decision | per check |");
    println!("|---|---|---|");
    for (what, path, n) in &cases {
        let headers = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), path.clone()),
            ("x-trace".to_owned(), "0123456789abcdef".to_owned()),
            ("cookie".to_owned(), "session=abcdefgh12".to_owned()),
        ];
        let facts = RequestFacts::new(&headers, None);
        let decision = match policy.start(&facts) {
            Start::Done(o) => o.reason.map_or("allow".to_owned(), |r| format!("{} ({} errors)", r.as_str(), o.errors.len())),
            Start::NeedBody(_) => "body".to_owned(),
        };
        let per = best_of_5(*n, || {
            std::hint::black_box(policy.start(&facts));
        });
        println!("| {what} | {decision} | {per:.2?} |");
    }
}
