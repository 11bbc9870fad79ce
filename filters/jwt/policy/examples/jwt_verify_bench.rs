//! Cost of parsing and verifying one token with the policy's JOSE code, natively or in a Wasm
//! runtime (the module's crypto without Envoy around it):
//!
//! ```text
//! scripts/bench.py makes target/bench/jwt/{jwks.json,es256-cold.txt,rs256-cold.txt}
//! cargo run --release -p gatewarden-policy --example jwt_verify_bench -- target/bench/jwt/jwks.json target/bench/jwt/es256-cold.txt 2000
//! cargo build --release -p gatewarden-policy --example jwt_verify_bench --target wasm32-wasip1
//! node scripts/wasi_run.mjs target/wasm32-wasip1/release/examples/jwt_verify_bench.wasm target/bench/jwt/jwks.json target/bench/jwt/es256-cold.txt 2000
//! ```
//! Prints microseconds per token (each token distinct, so nothing is cached).

use std::error::Error;
use std::time::Instant;

use gatewarden_jwt_policy::{jose, JwksSet};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(jwks), Some(tokens), n) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: jwt_verify_bench JWKS_FILE TOKENS_FILE [N]".into());
    };
    let set = JwksSet::parse(&std::fs::read(jwks)?)?;
    let text = std::fs::read_to_string(tokens)?;
    let n: usize = n.map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let tokens: Vec<&str> = text.split_whitespace().take(n).collect();
    let start = Instant::now();
    let mut ok = 0usize;
    for t in &tokens {
        let parsed = jose::parse(t).map_err(|r| format!("parse: {r:?}"))?;
        if set.verify(&parsed).is_ok() {
            ok += 1;
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / tokens.len().max(1) as f64;
    println!("{} tokens, {ok} valid, {us:.1} us/token", tokens.len());
    if ok != tokens.len() {
        return Err("some tokens did not verify".into());
    }
    Ok(())
}
