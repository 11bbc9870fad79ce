//! The rate-limit module under a flood of distinct keys (issue 13, "bounded memory"): shared-data
//! memory and admission accuracy after KEYS (default 1,000,000) distinct client addresses,
//! deterministic (simulated clock, no wall-clock assertion), seconds to a minute to run.
//!
//!   cargo run --release -p gatewarden-wasm-host --example rate_limit_flood -- \
//!       MODULE.wasm [KEYS] [MAX_KEYS] [envoy|kong]
//!
//! Policy: `per_ip`, 10 per 10 s (burst 10) per client address, the address being the last
//! `x-forwarded-for` hop (`xff_num_trusted_hops: 1`), `max_keys` MAX_KEYS (default 65,536, the
//! policy's default). Two VMs (two workers) share one store and take requests in turn.
//!
//! Traffic, on a clock that advances 10 µs per flood request (a flood of 100,000 requests/s):
//! - **attacker** (one address): drains its bucket first (11 requests, the 11th must be a 429),
//!   then sends one request per 100 flood requests (1,000/s) for the whole flood;
//! - **steady** (100 addresses): each sends one request every 250 ms (4/s, four times its rate);
//! - **flood**: KEYS requests, each from an address not seen before.
//!
//! Printed: at checkpoints, the store's entry count (the table's sets and the seed) and bytes
//! (keys + values, as Envoy holds them before its own per-entry overhead); at the end, admitted / configured for the attacker
//! (configured: 1 per second of flood, its burst being spent), for the steady clients (burst +
//! rate × elapsed each, at most what they sent) and admitted / sent for the flood. Exits non-zero when the store grew
//! after every set existed, when it holds anything but the sets and the seed, when a set is not
//! 8 × 96 bytes, when the
//! attacker got more than configured, or a steady client more than configured plus one burst
//! (a bucket that is not limited may be replaced, fullest first, and its client start again
//! with a full bucket: see the table's replacement policy).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewarden_wasm_host::{Host, LogLevel, Module, Profile, Request, Vm, VmOptions};

const VM_ID: &str = "gatewarden_rate_limit";
/// The module's table shape: slots per set (one shared-data entry) and bytes per slot.
const WAYS: usize = 8;
const SLOT_BYTES: usize = 96;
const RATE_PER_SECOND: f64 = 1.0; // 10 per 10 s
const BURST: u64 = 10;
const STEP: Duration = Duration::from_micros(10);
const ATTACKER_EVERY: u64 = 100;
const STEADY_CLIENTS: u32 = 100;
const STEADY_PERIOD: Duration = Duration::from_millis(250);

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, rest @ ..] = args.as_slice() else {
        return Err("usage: rate_limit_flood MODULE.wasm [KEYS] [MAX_KEYS] [envoy|kong]".into());
    };
    let keys: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let max_keys: u32 = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(65_536);
    let profile = match rest.get(2).map(String::as_str) {
        None | Some("envoy") => Profile::Envoy,
        Some("kong") => Profile::Kong,
        Some(other) => return Err(format!("profile {other:?}: expected envoy or kong").into()),
    };
    let policy = format!(
        r#"{{"policy_version":"flood","client_address":{{"xff_num_trusted_hops":1}},"max_keys":{max_keys},
            "default":{{"limits":[{{"name":"per_ip","rate":10,"per_seconds":10}}]}}}}"#
    );
    let module = Module::from_file(module)?;
    let host = Host::new(profile);
    host.record_calls(false);
    host.set_log_level(LogLevel::Error);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    host.set_time(t0);
    let mut vms = Vec::new();
    for _ in 0..2 {
        let mut vm = host.load_vm(&module, VmOptions::new(VM_ID).vm_id(VM_ID))?;
        if !vm.configure(policy.as_bytes())? {
            let why: Vec<String> = host.logs().into_iter().map(|l| l.message).collect();
            return Err(format!("policy refused: {why:?}").into());
        }
        vms.push(vm);
    }
    let sets = (max_keys as usize / WAYS).max(1);
    let slots = sets * WAYS;
    println!(
        "profile {profile:?}, max_keys {max_keys} ({slots} slots in {sets} sets of {WAYS}), {keys} distinct flood keys, 2 VMs on one store"
    );

    // The attacker drains its burst before the flood.
    let attacker = "203.0.113.7";
    let drained: Vec<u16> = (0..=BURST).map(|i| status(&mut vms, i, attacker)).collect::<Result<_, Error>>()?;
    if drained.iter().filter(|s| **s == 200).count() as u64 != BURST || drained.last() != Some(&429) {
        return Err(format!("attacker before the flood: {drained:?}").into());
    }

    let mut attacker_ok = 0u64;
    let mut flood_ok = 0u64;
    let mut flood_other = std::collections::BTreeMap::<u16, u64>::new();
    let mut steady_ok = vec![0u64; STEADY_CLIENTS as usize];
    let mut steady_sent = 0u64;
    let mut steady_span: Option<(SystemTime, SystemTime)> = None;
    let mut next_steady = t0;
    let flood_start = host.now();
    let mut grown_after_full: Option<(u64, usize, usize)> = None;
    let mut full_at: Option<(usize, usize)> = None;
    let mut checkpoints: Vec<u64> = [0, 10_000, 65_536, 100_000, 250_000, 500_000, 750_000].into_iter().filter(|c| *c < keys).collect();
    checkpoints.push(keys);
    println!("| flood keys sent | store entries | store bytes (keys + values) | set bytes | attacker admitted so far |");
    println!("|---:|---:|---:|---:|---:|");
    let mut n = 0u64;
    for &checkpoint in &checkpoints {
        while n < checkpoint {
            let addr = flood_address(n);
            match status(&mut vms, n, &addr)? {
                200 => flood_ok += 1,
                s => *flood_other.entry(s).or_default() += 1,
            }
            n += 1;
            host.advance(STEP);
            if n.is_multiple_of(ATTACKER_EVERY) && status(&mut vms, n, attacker)? == 200 {
                attacker_ok += 1;
            }
            if host.now() >= next_steady {
                for c in 0..STEADY_CLIENTS {
                    steady_sent += 1;
                    let ok = status(&mut vms, u64::from(c), &format!("198.51.100.{c}"))? == 200;
                    if let Some(count) = steady_ok.get_mut(c as usize) {
                        *count += u64::from(ok);
                    }
                }
                let now = host.now();
                steady_span = Some((steady_span.map_or(now, |(first, _)| first), now));
                next_steady += STEADY_PERIOD;
            }
            if n.is_multiple_of(1000) {
                host.tick()?;
            }
        }
        let (entries, bytes, set_bytes) = store_size(&host, sets);
        match full_at {
            Some((e, b)) if (e, b) != (entries, bytes) => grown_after_full = Some((n, entries, bytes)),
            None if entries == sets + 1 => full_at = Some((entries, bytes)),
            _ => {}
        }
        println!("| {n} | {entries} | {bytes} | {set_bytes} | {attacker_ok} |");
    }
    let elapsed = host.now().duration_since(flood_start)?.as_secs_f64();
    // GCRA: one unit per second once the burst is spent; the attacker asks 1,000 times a second.
    let attacker_configured = (elapsed * RATE_PER_SECOND).floor();
    // Each steady client: its burst, then one unit per second from its first request to its
    // last (never more than it sent).
    let per_steady = (steady_sent / u64::from(STEADY_CLIENTS)) as f64;
    let span = steady_span.map_or(Ok(Duration::ZERO), |(first, last)| last.duration_since(first))?.as_secs_f64();
    let per_steady_configured = per_steady.min(BURST as f64 + (span * RATE_PER_SECOND).floor());
    let steady_configured = f64::from(STEADY_CLIENTS) * per_steady_configured;
    let steady_total: u64 = steady_ok.iter().sum();
    let steady_max = steady_ok.iter().copied().max().unwrap_or(0);
    let steady_min = steady_ok.iter().copied().min().unwrap_or(0);
    let (entries, bytes, set_bytes) = store_size(&host, sets);
    println!();
    println!("simulated flood {elapsed:.2} s at {:.0} requests/s", keys as f64 / elapsed);
    println!(
        "store after the flood: {entries} entries = {sets} sets + the seed, {bytes} bytes ({:.2} MiB; set value {set_bytes} B = {WAYS} slots)",
        bytes as f64 / 1_048_576.0
    );
    println!(
        "attacker: {attacker_ok} admitted of {} sent, configured {attacker_configured:.0} → accuracy {:.3}",
        n / ATTACKER_EVERY,
        ratio(attacker_ok as f64, attacker_configured)
    );
    println!(
        "steady clients ({STEADY_CLIENTS}, 4/s each): {steady_total} admitted of {steady_sent} sent, configured {steady_configured:.0} \
         → accuracy {:.3} (per client: {steady_min} to {steady_max}, configured {per_steady_configured:.0})",
        ratio(steady_total as f64, steady_configured)
    );
    println!("flood: {flood_ok} admitted of {n} sent ({:.4}); other statuses {flood_other:?}", ratio(flood_ok as f64, n as f64));
    let mut failures = Vec::new();
    if let Some((at, e, b)) = grown_after_full {
        failures.push(format!("the store grew after every set existed: {e} entries, {b} bytes at {at} keys"));
    }
    if entries > sets + 1 {
        failures.push(format!("{entries} entries: more than {sets} sets and the seed"));
    }
    if set_bytes != 0 && set_bytes != WAYS * SLOT_BYTES {
        failures.push(format!("a set of {set_bytes} bytes, not {WAYS} × {SLOT_BYTES}"));
    }
    if attacker_ok as f64 > attacker_configured + 1.0 {
        failures.push(format!("attacker admitted {attacker_ok}, configured {attacker_configured}"));
    }
    // A bucket that is not limited may be replaced (fullest first) and start again full: its
    // client regains at most what it had spent, less than one burst.
    if steady_max as f64 > per_steady_configured + BURST as f64 {
        failures.push(format!("a steady client admitted {steady_max}, configured {per_steady_configured} + at most its burst"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// The n-th flood address: distinct for every n below 2^32 − 2^24 (skips 0.0.0.0/8).
fn flood_address(n: u64) -> String {
    let ip = std::net::Ipv4Addr::from(((n + (1 << 24)) & 0xffff_ffff) as u32);
    ip.to_string()
}

/// One request from `addr` (as the last `x-forwarded-for` hop), on VM `i mod 2`.
fn status(vms: &mut [Vm], i: u64, addr: &str) -> Result<u16, Error> {
    let count = vms.len() as u64;
    let vm = vms.get_mut((i % count) as usize).ok_or("no VM")?;
    let out = vm.http_request(Request::get("/api").source("10.0.0.1:5000").header("x-forwarded-for", addr))?;
    if out.trapped() {
        return Err(format!("trap on a request from {addr}").into());
    }
    Ok(out.status)
}

/// Entries of the store, their bytes (key + value) and one set's value size. The keys are
/// the module's (`gatewarden/rate_limit/seed`, `gatewarden/rate_limit/s<sets>w8/<i>`): the sum
/// counts every entry only when `entries` equals the sets present plus the seed.
fn store_size(host: &Host, sets: usize) -> (usize, usize, usize) {
    let entries = host.shared_data_len(VM_ID);
    let mut bytes = 0;
    let mut set_bytes = 0;
    let seed = "gatewarden/rate_limit/seed";
    if let Some(v) = host.shared_data(VM_ID, seed) {
        bytes += seed.len() + v.value.len();
    }
    for i in 0..sets {
        let key = format!("gatewarden/rate_limit/s{sets}w{WAYS}/{i}");
        if let Some(v) = host.shared_data(VM_ID, &key) {
            bytes += key.len() + v.value.len();
            set_bytes = v.value.len();
        }
    }
    (entries, bytes, set_bytes)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}
