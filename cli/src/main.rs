//! `gatewarden`: the policy lifecycle command.
//!
//! ```text
//! gatewarden validate [--filter NAME] [--format text|json] POLICY...   exit 0 valid, 1 invalid, 2 could not run
//! gatewarden schema NAME [--kong]                                       JSON Schema (or Kong meta.json)
//! gatewarden render-json POLICY                                         the policy as the JSON a filter receives
//! gatewarden geo-lookup DB.mmdb IP...                                   the country a database gives each address
//! gatewarden test [--modules DIR] [--junit FILE] [DIR|FILE]...          policy tests through the built .wasm
//! gatewarden eval --policy P [--request R.yaml] [flags]                 one request through the .wasm, as JSON
//! gatewarden render --target envoy|istio|kong|nginx|compose POLICY      the plugin config for each host
//! gatewarden apply POLICY --to DIR [--author A] [-m MSG]                validate + atomic ECDS write + history
//! gatewarden history --to DIR | diff A B | rollback --to DIR [--version V]
//! gatewarden keygen | sign | verify                                     approvals (src/sign.rs)
//! gatewarden promote | abort                                            end a rollout (src/rollout.rs)
//! gatewarden counters --module M.wasm [--host-prefix none|envoy|kong]   metric names a module defines
//! ```
//! Validation runs exactly the code the filter runs in `on_configure`.

mod apply;
mod counters;
mod diff;
mod eval;
mod junit;
mod modules;
mod nginx;
mod policy_file;
mod policy_test;
mod render;
mod rollout;
mod run;
mod sign;
mod timefmt;

use std::process::ExitCode;

use policy_file::{load, Filter, LoadError};

const USAGE: &str = "usage:
  gatewarden validate [--filter NAME] [--format text|json] POLICY...
  gatewarden schema NAME [--kong]
  gatewarden render-json [--filter NAME] POLICY
  gatewarden geo-lookup DB.mmdb IP...
  gatewarden test [--modules DIR] [--junit FILE] [DIR|FILE]...
  gatewarden eval --policy POLICY [--request R.yaml] [--fixtures TESTFILE] [--method M] [--path P]
                  [--header 'name: value']... [--peer IP] [--body TEXT] [--time T] [--modules DIR]
  gatewarden render --target envoy|istio|kong|nginx|compose [--out PATH] [--module PATH | --modules DIR]
                  [--vm-id ID] [--vm-config TRUST.json] [--url URL] [--sha256 HEX] [--namespace NS]
                  [--service NAME] [--shm-size SIZE] POLICY
  gatewarden apply POLICY --to DIR [--author A] [-m MSG] [--module PATH | --modules DIR] [--vm-id ID]
                  [--vm-config TRUST.json]
  gatewarden history --to DIR [--filter NAME] [--format text|json]
  gatewarden diff [--to DIR] [--format text|json] A B          A, B: policy files or history versions
  gatewarden rollback --to DIR [--version V] [--filter NAME] [--author A] [-m MSG] [--vm-config TRUST.json]
  gatewarden keygen --out PREFIX
  gatewarden sign --key KEYFILE --key-id ID [--filter NAME] POLICY
  gatewarden verify --trust TRUST.json [--filter NAME] POLICY
  gatewarden promote [--filter NAME] POLICY
  gatewarden abort [--filter NAME] POLICY
  gatewarden counters --module PATH.wasm [--host-prefix none|envoy|kong] [--module-name NAME]
filters: ip_geo, jwt";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("gatewarden: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    filter: Option<Filter>,
    json: bool,
    kong: bool,
    files: Vec<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options { filter: None, json: false, kong: false, files: Vec::new() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => {
                let name = it.next().ok_or("--filter needs a name")?;
                o.filter = Some(Filter::parse(name)?);
            }
            "--format" => match it.next().map(String::as_str) {
                Some("json") => o.json = true,
                Some("text") => o.json = false,
                other => return Err(format!("--format takes text or json, got {other:?}")),
            },
            "--kong" => o.kong = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => o.files.push(a.clone()),
        }
    }
    Ok(o)
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else { return Err("no command".into()) };
    // Commands with their own options.
    match cmd.as_str() {
        "test" => return policy_test::main(rest),
        "eval" => return eval::main(rest),
        "render" => return render::main(rest),
        "apply" => return apply::main_apply(rest),
        "history" => return apply::main_history(rest),
        "diff" => return diff::main(rest),
        "rollback" => return apply::main_rollback(rest),
        "keygen" => return sign::keygen(rest),
        "sign" => return sign::sign(rest),
        "verify" => return sign::verify(rest),
        "promote" => return rollout::promote(rest),
        "abort" => return rollout::abort(rest),
        "counters" => return counters::main(rest),
        _ => {}
    }
    let o = parse_options(rest)?;
    match cmd.as_str() {
        "validate" => validate(&o),
        "schema" => {
            let [name] = o.files.as_slice() else { return Err("schema takes one filter name".into()) };
            let filter = Filter::parse(name)?;
            let schema = filter.schema();
            let out = if o.kong { gatewarden_policy::schema::kong_meta(schema) } else { schema };
            println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        "render-json" => {
            let [file] = o.files.as_slice() else { return Err("render-json takes one policy file".into()) };
            match load(file, o.filter) {
                Ok(p) => {
                    println!("{}", p.json);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => report_one(file, &e),
            }
        }
        "geo-lookup" => geo_lookup(&o.files),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn report_one(file: &str, e: &LoadError) -> Result<ExitCode, String> {
    eprintln!("{file}: {e}");
    Ok(ExitCode::from(if e.is_invalid() { 1 } else { 2 }))
}

fn validate(o: &Options) -> Result<ExitCode, String> {
    if o.files.is_empty() {
        return Err("validate needs at least one policy file".into());
    }
    let mut worst = 0u8;
    let mut results = Vec::new();
    for file in &o.files {
        let result = load(file, o.filter);
        let code = match &result {
            Ok(_) => 0,
            Err(e) if e.is_invalid() => 1,
            Err(_) => 2,
        };
        worst = worst.max(code);
        if o.json {
            results.push(match &result {
                Ok(p) => serde_json::json!({"file": file, "valid": true, "filter": p.filter.name(), "policy_version": p.policy_version}),
                Err(e) => serde_json::json!({"file": file, "valid": false, "error": e.to_string(), "field": e.field(), "could_not_run": code == 2}),
            });
        } else {
            match &result {
                Ok(p) => println!("{file}: valid {} policy {:?}", p.filter.name(), p.policy_version),
                Err(e) => eprintln!("{file}: {e}"),
            }
        }
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?);
    }
    Ok(ExitCode::from(worst))
}

/// Prints the country the database gives each address, as the filter would read it.
fn geo_lookup(args: &[String]) -> Result<ExitCode, String> {
    let [db, ips @ ..] = args else { return Err("geo-lookup takes a database and addresses".into()) };
    if ips.is_empty() {
        return Err("geo-lookup takes a database and addresses".into());
    }
    let bytes = std::fs::read(db).map_err(|e| format!("{db}: cannot read: {e}"))?;
    let geo = match gatewarden_ip_geo_policy::GeoDb::from_bytes(bytes) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{db}: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    for ip in ips {
        let addr = gatewarden_policy::cidr::parse_address(ip).ok_or_else(|| format!("not an address: {ip:?}"))?;
        match geo.country(addr) {
            Ok(Some(cc)) => println!("{ip}\t{cc}"),
            Ok(None) => println!("{ip}\tunknown"),
            Err(e) => println!("{ip}\terror: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
