//! Wasm instructions a filter module executes per request (wasmtime fuel), for the benchmark's
//! "where does the time go" question: deterministic, seconds to run, no proxy around the filter.
//!
//!   cargo run -p gatewarden-wasm-host --example request_cost -- MODULE.wasm POLICY.json [N] ['name: value'...]
//!
//! Runs N (default 1000) allowed GET requests from 127.0.0.1 (with the given headers, at the
//! real current time) and prints instructions/request (the difference between N and 2N
//! requests, so set-up cancels out) and the host calls one request makes.

use gatewarden_wasm_host::{Host, Module, Profile, Request, VmOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, policy, rest @ ..] = args.as_slice() else {
        return Err("usage: request_cost MODULE.wasm POLICY.json [N]".into());
    };
    let n: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let headers: Vec<(String, String)> =
        rest.iter().skip(1).filter_map(|h| h.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    let module = Module::from_file(module)?;
    let policy = std::fs::read(policy)?;
    let host = Host::new(Profile::Envoy);
    host.set_time(std::time::SystemTime::now());
    let mut vm = host.load_vm(&module, VmOptions::new("bench"))?;
    if !vm.configure(&policy)? {
        return Err("policy refused".into());
    }
    run(&mut vm, &headers, 10)?; // warm-up: first-use allocations
    let calls_before = host.calls().len();
    let one = run(&mut vm, &headers, n)?;
    let two = run(&mut vm, &headers, 2 * n)?;
    let calls = (host.calls().len() - calls_before) as u64 / (3 * n);
    println!("{:.0} wasm instructions/request ({} host calls/request)", (two - one) as f64 / n as f64, calls);
    host.clear_calls();
    run(&mut vm, &headers, 1)?;
    let names: Vec<&str> = host.calls().iter().map(|c| c.name).collect();
    println!("host calls of one request: {}", names.join(", "));
    Ok(())
}

fn run(vm: &mut gatewarden_wasm_host::Vm, headers: &[(String, String)], count: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let before = vm.fuel_used();
    for _ in 0..count {
        let mut request = Request::get("/").source("127.0.0.1:40000");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let out = vm.http_request(request)?;
        if out.status != 200 {
            return Err(format!("status {}", out.status).into());
        }
    }
    Ok(vm.fuel_used() - before)
}
