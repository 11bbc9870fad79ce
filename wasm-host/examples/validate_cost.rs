//! What validating a request body costs inside the request-validation module, per body size, for
//! comparing builds of the module (opt-level, wasm-opt): wasm instructions per request (wasmtime
//! fuel: deterministic) and CPU µs per request (this process's CPU time over at least 2 s of
//! requests: steadier than wall-clock time on a shared machine), each also per KB of body; and
//! the module's compile and configure time (wall clock).
//!
//!   cargo run --release -p gatewarden-wasm-host --example validate_cost -- MODULE.wasm... [--n N]
//!
//! The policy validates `POST /orders` bodies against an order schema (`$ref`s, `pattern`,
//! `format` email and date-time, `enum`, `additionalProperties: false`, bounds); the bodies are
//! valid orders of about 200 B, 10 KB and 100 KB (1 to about 1,900 items). Each request goes
//! through the Envoy profile in one chunk and must reach the upstream (200). N requests per round
//! (default 200; 20 for the 100 KB body). Instructions are the fuel of 2N requests less that of
//! N (set-up cancels out); the same body without the filter reading it (a path no rule
//! validates) is subtracted to give the validation's own share.

use std::time::Instant;

use gatewarden_wasm_host::{Host, Module, Profile, Request, Vm, VmOptions};
use serde_json::{json, Value};

fn policy() -> Value {
    json!({
        "policy_version": "bench",
        "rules": [{
            "name": "orders",
            "match": {"path_exact": "/orders", "methods": ["POST"]},
            "body_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "required": ["id", "customer", "items", "placed_at"],
                "additionalProperties": false,
                "properties": {
                    "id": {"type": "string", "maxLength": 64},
                    "customer": {"$ref": "#/$defs/customer"},
                    "items": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"$ref": "#/$defs/item"}},
                    "placed_at": {"type": "string", "format": "date-time"},
                    "note": {"type": "string", "maxLength": 500}
                },
                "$defs": {
                    "customer": {
                        "type": "object",
                        "required": ["email", "name"],
                        "properties": {
                            "email": {"type": "string", "format": "email"},
                            "name": {"type": "string", "minLength": 1, "maxLength": 100}
                        }
                    },
                    "item": {
                        "type": "object",
                        "required": ["sku", "qty", "price"],
                        "additionalProperties": false,
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4,8}$"},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                            "price": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                            "size": {"enum": ["S", "M", "L", "XL"]}
                        }
                    }
                }
            }
        }]
    })
}

/// A valid order of `items` items.
fn order(items: usize) -> Vec<u8> {
    let items: Vec<Value> =
        (0..items).map(|i| json!({"sku": format!("ABC-{:04}", 1000 + i), "qty": 1 + i % 9, "price": 19.99, "size": "M"})).collect();
    let order = json!({
        "id": "ord-2026-12-03-000042",
        "customer": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "items": items,
        "placed_at": "2026-12-03T17:00:00Z",
    });
    serde_json::to_vec(&order).unwrap_or_default()
}

/// A valid order of about `bytes` bytes (at least one item).
fn order_of(bytes: usize) -> Vec<u8> {
    let one = order(1).len();
    let per_item = order(2).len() - one;
    order(1 + bytes.saturating_sub(one) / per_item)
}

fn post(path: &str, body: &[u8]) -> Request {
    Request::new("POST", path)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .body(body.to_vec())
        .chunked(body.len().max(1))
}

/// Fuel used by `n` requests; fails on any status but 200.
fn fuel(vm: &mut Vm, path: &str, body: &[u8], n: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let before = vm.fuel_used();
    for _ in 0..n {
        let out = vm.http_request(post(path, body))?;
        if out.status != 200 {
            return Err(format!("{path}: status {} ({:?})", out.status, String::from_utf8_lossy(&out.response_body)).into());
        }
    }
    Ok(vm.fuel_used() - before)
}

/// This process's CPU time (user + system), from /proc (clock ticks of 10 ms): on a shared
/// machine a request's CPU time is steadier than its wall-clock time.
fn cpu_seconds() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("no ) in /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, Box<dyn std::error::Error>> { Ok(fields.get(i).ok_or("short /proc/self/stat")?.parse::<f64>()?) };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU µs per request: batches of `n` until at least 2 s of CPU time (±0.5 %).
fn micros(vm: &mut Vm, path: &str, body: &[u8], n: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let start = cpu_seconds()?;
    let mut requests = 0;
    while cpu_seconds()? - start < 2.0 {
        fuel(vm, path, body, n)?;
        requests += n;
    }
    Ok((cpu_seconds()? - start) * 1e6 / requests as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut n: u64 = 200;
    if let Some(i) = args.iter().position(|a| a == "--n") {
        n = args.get(i + 1).ok_or("--n N")?.parse()?;
        args.drain(i..=i + 1);
    }
    if args.is_empty() {
        return Err("usage: validate_cost MODULE.wasm... [--n N]".into());
    }
    let policy = policy().to_string();
    let bodies = [("200 B", order_of(200)), ("10 KB", order_of(10 * 1024)), ("100 KB", order_of(100 * 1024))];
    println!(
        "| module | bytes | compile ms | configure ms | body | instr/req | validation instr/KB | CPU µs/req | CPU µs/KB (whole request) |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for path in &args {
        let size = std::fs::metadata(path)?.len();
        let t = Instant::now();
        let module = Module::from_file(path)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let host = Host::new(Profile::Envoy);
        let mut vm = host.load_vm(&module, VmOptions::new("gatewarden_validate"))?;
        let t = Instant::now();
        if !vm.configure(policy.as_bytes())? {
            return Err(format!("{path}: policy refused").into());
        }
        let configure_ms = t.elapsed().as_secs_f64() * 1e3;
        let name = std::path::Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        for (label, body) in &bodies {
            let n = if body.len() > 50_000 { (n / 10).max(1) } else { n };
            fuel(&mut vm, "/orders", body, 3)?; // warm-up: first-use allocations
            fuel(&mut vm, "/unvalidated", body, 3)?;
            let per = |one: u64, two: u64| (two - one) as f64 / n as f64;
            let checked = per(fuel(&mut vm, "/orders", body, n)?, fuel(&mut vm, "/orders", body, 2 * n)?);
            let passed = per(fuel(&mut vm, "/unvalidated", body, n)?, fuel(&mut vm, "/unvalidated", body, 2 * n)?);
            let kb = body.len() as f64 / 1024.0;
            let us = micros(&mut vm, "/orders", body, n)?;
            println!(
                "| {name} | {size} | {compile_ms:.0} | {configure_ms:.2} | {label} ({} B) | {checked:.0} | {:.0} | {us:.1} | {:.2} |",
                body.len(),
                (checked - passed) / kb,
                us / kb
            );
        }
    }
    Ok(())
}
