//! Admission accuracy of the rate-limit module when many clients cycle (the benchmark's
//! `tight_10k` traffic), deterministic: KEYS client addresses (default 10,000) send one request
//! each in turn, PASSES times (default 10), 100 µs apart on a simulated clock, against 5 per day
//! (burst 5) per address with `max_keys` MAX_KEYS (default 65,536). Configured: each address's
//! first 5. Prints admitted / configured after each pass, how many requests found every slot of
//! their set limited (`table_full`, answered 503 under `failure_mode: deny`), and at the end how
//! many keys got more than their 5 (over-admitted: their bucket was replaced while partly drained).
//!
//!   cargo run --release -p gatewarden-wasm-host --example rate_limit_cycle -- MODULE.wasm [KEYS] [PASSES] [MAX_KEYS]
//!
//! Why: the table has 8 slots per set (it had 4); a set that more than 8 cycling keys map to
//! must replace a partly drained bucket (none is full or limited before its fifth request), and
//! that key starts over. With 10,000 keys in 8,192 sets (65,536 slots) such a set is rare
//! (Poisson tail); with 60,000 keys it is common.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use gatewarden_wasm_host::{Host, LogLevel, Module, Profile, Request, VmOptions};

const VM_ID: &str = "gatewarden_rate_limit";
const BURST: u64 = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, rest @ ..] = args.as_slice() else {
        return Err("usage: rate_limit_cycle MODULE.wasm [KEYS] [PASSES] [MAX_KEYS]".into());
    };
    let keys: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let passes: u64 = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let max_keys: u32 = rest.get(2).map(|s| s.parse()).transpose()?.unwrap_or(65_536);
    let policy = format!(
        r#"{{"policy_version":"cycle","client_address":{{"xff_num_trusted_hops":1}},"max_keys":{max_keys},
            "default":{{"limits":[{{"name":"per_ip","rate":{BURST},"per_seconds":86400}}]}}}}"#
    );
    let host = Host::new(Profile::Envoy);
    host.record_calls(false);
    host.set_log_level(LogLevel::Error);
    host.set_time(UNIX_EPOCH + Duration::from_secs(1_767_225_600));
    let mut vm = host.load_vm(&Module::from_file(module)?, VmOptions::new(VM_ID).vm_id(VM_ID))?;
    if !vm.configure(policy.as_bytes())? {
        return Err("policy refused".into());
    }
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut per_key = vec![0u64; keys as usize];
    println!("{keys} addresses, max_keys {max_keys}, 5 per day each; after pass: admitted / configured");
    for pass in 1..=passes {
        for k in 0..keys {
            let addr = std::net::Ipv4Addr::from(0x0a64_0000_u32.wrapping_add(k as u32)).to_string();
            let out = vm.http_request(Request::get("/").source("10.0.0.1:5000").header("x-forwarded-for", &addr))?;
            *statuses.entry(out.status).or_default() += 1;
            if let (200, Some(n)) = (out.status, per_key.get_mut(k as usize)) {
                *n += 1;
            }
            host.advance(Duration::from_micros(100));
        }
        let admitted = statuses.get(&200).copied().unwrap_or(0);
        let configured = keys * BURST.min(pass);
        println!("pass {pass:>3}: {admitted} / {configured} = {:.4}  statuses {statuses:?}", admitted as f64 / configured as f64);
    }
    let over: Vec<u64> = per_key.iter().copied().filter(|n| *n > BURST).collect();
    let under = per_key.iter().filter(|n| **n < BURST.min(passes)).count();
    println!(
        "keys over-admitted: {} of {keys} ({} requests above their 5, most for one key {}); keys under-admitted: {under}",
        over.len(),
        over.iter().map(|n| n - BURST).sum::<u64>(),
        over.iter().max().copied().unwrap_or(0)
    );
    Ok(())
}
