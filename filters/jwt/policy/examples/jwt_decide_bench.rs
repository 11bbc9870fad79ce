//! The JWT policy's own work for one request with a token it has verified before (the warm path:
//! the verified-token cache hits), natively, for a profile of where that work goes:
//!
//! ```text
//! cargo run --release -p gatewarden-policy --example jwt_decide_bench -- POLICY.json TOKENS_FILE [N]
//! ```
//! POLICY.json is a JWT policy document (e.g. scripts/bench.py's `jwt_policy`); the tokens are
//! cycled, each request carrying `authorization: Bearer <token>` and a few usual headers.

use std::error::Error;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gatewarden_jwt_policy::{JwtPolicy, NoRemoteKeys};
use gatewarden_policy::{compile, RequestFacts, Verdict};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(policy), Some(tokens), n) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: jwt_decide_bench POLICY.json TOKENS_FILE [N]".into());
    };
    let policy: JwtPolicy = compile(&std::fs::read(policy)?).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(tokens)?;
    let tokens: Vec<&str> = text.split_whitespace().take(4).collect();
    let n: usize = n.map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let requests: Vec<Vec<(String, String)>> = tokens
        .iter()
        .map(|t| {
            vec![
                (":authority".to_owned(), "127.0.0.1:10000".to_owned()),
                (":path".to_owned(), "/".to_owned()),
                (":method".to_owned(), "GET".to_owned()),
                (":scheme".to_owned(), "http".to_owned()),
                ("user-agent".to_owned(), "wrk".to_owned()),
                ("authorization".to_owned(), format!("Bearer {t}")),
                ("x-forwarded-proto".to_owned(), "http".to_owned()),
                ("x-request-id".to_owned(), "4c5f1e0e-3c8b-4a57-9d53-0b0c7c6ad3b1".to_owned()),
            ]
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut cache = policy.new_token_cache();
    let start = Instant::now();
    let mut allowed = 0usize;
    for headers in requests.iter().cycle().take(n) {
        let facts = RequestFacts::new(headers, Some("127.0.0.1:40000"));
        let out = policy.decide(&facts, now, &NoRemoteKeys, Some(&mut cache));
        if matches!(out.decision.verdict, Verdict::Allow) {
            allowed += 1;
        }
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64;
    println!("{n} requests, {allowed} allowed, {ns:.0} ns/request");
    if allowed != n {
        return Err("some requests were denied".into());
    }
    Ok(())
}
