//! `gatewarden diff A B`: the semantic diff (`policy_diff`) of two policy versions. A and B are
//! policy files (YAML/JSON), or version numbers of an apply history (`--to DIR`).
//! Exit status like diff(1): 0 same, 1 different, 2 could not run.

use serde_json::Value;

use crate::cli::{FilterArg, Format};
use crate::ecds::History;
use crate::error::{CliError, CmdResult, Status};
use crate::policy_diff::{diff_policies, format_text};
use crate::policy_file::{load, load_text, Filter, LoadedPolicy};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status like diff(1): 0 same, 1 different, 2 could not run (unreadable or invalid \
                        policy, no such version).")]
pub struct Args {
    /// The old policy: a file, or a history version with --to.
    #[arg(value_name = "A")]
    pub a: String,
    /// The new policy: a file, or a history version with --to.
    #[arg(value_name = "B")]
    pub b: String,
    /// An ECDS directory whose history versions A and B may name (`1`, `v2`).
    #[arg(long, value_name = "DIR")]
    pub to: Option<String>,
    #[command(flatten)]
    pub filter: FilterArg,
    /// text: one change a line; json: {a, b, same, diff}.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Loads one side: a policy file, or (with a history) a version number.
fn side(arg: &str, history: Option<&History>, filter: Option<Filter>) -> Result<(String, LoadedPolicy), String> {
    let number = arg.strip_prefix('v').unwrap_or(arg);
    if let (Some(h), Ok(n)) = (history, number.parse::<u64>()) {
        if !std::path::Path::new(arg).exists() {
            let entry = h.entry(n)?;
            let p = load_text("history.json", &entry.policy_json, Some(entry.filter()?)).map_err(|e| format!("version {n}: {e}"))?;
            return Ok((format!("version {n} ({})", entry.policy_version), p));
        }
    }
    let p = load(arg, filter).map_err(|e| format!("{arg}: {e}"))?;
    Ok((arg.to_string(), p))
}

/// `gatewarden diff`.
pub fn run(o: &Args) -> CmdResult {
    let could_not = |e: String| CliError::could_not_run(format!("gatewarden diff: {e}"));
    let history = o.to.as_deref().map(History::open).transpose().map_err(could_not)?;
    let filter = o.filter.filter;
    let (name_a, pa) = side(&o.a, history.as_ref(), filter).map_err(could_not)?;
    let (name_b, pb) = side(&o.b, history.as_ref(), filter).map_err(could_not)?;
    let va: Value = serde_json::from_str(&pa.json).map_err(|e| could_not(e.to_string()))?;
    let vb: Value = serde_json::from_str(&pb.json).map_err(|e| could_not(e.to_string()))?;
    let d = diff_policies(&va, &vb);
    if o.format == Format::Json {
        let out = serde_json::json!({"a": name_a, "b": name_b, "same": d.is_empty(), "diff": d});
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| could_not(e.to_string()))?);
    } else if d.is_empty() {
        println!("no difference between {name_a} and {name_b}");
    } else {
        println!("--- {name_a}\n+++ {name_b}");
        print!("{}", format_text(&d));
    }
    if d.is_empty() {
        Ok(())
    } else {
        Err(CliError::reported(Status::Failed))
    }
}
