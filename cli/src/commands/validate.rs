//! `gatewarden validate POLICY...`: each file compiled with its filter's own code (what
//! `on_configure` runs). Exit 0 all valid, 1 one is invalid, 2 one could not be read.

use crate::cli::{FilterArg, Format};
use crate::error::{load_status, CliError, CmdResult, Status};
use crate::policy_file::load;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 all valid, 1 a policy is invalid, 2 a file could not be read.")]
pub struct Args {
    /// Policy files (YAML or JSON).
    #[arg(value_name = "POLICY", required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArg,
    /// text: a line per file; json: a list of {file, valid, filter, policy_version | error, field}.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(a: &Args) -> CmdResult {
    let mut worst: Option<Status> = None;
    let mut results = Vec::new();
    for file in &a.files {
        let result = load(file, a.filter.filter);
        if let Err(e) = &result {
            let s = load_status(e);
            worst = Some(match worst {
                Some(Status::CouldNotRun) => Status::CouldNotRun,
                _ => s,
            });
        }
        match (a.format, &result) {
            (Format::Json, Ok(p)) => results
                .push(serde_json::json!({"file": file, "valid": true, "filter": p.filter.name(), "policy_version": p.policy_version})),
            (Format::Json, Err(e)) => results.push(serde_json::json!({
                "file": file, "valid": false, "error": e.to_string(), "field": e.field(),
                "could_not_run": load_status(e) == Status::CouldNotRun,
            })),
            (Format::Text, Ok(p)) => println!("{file}: valid {} policy {:?}", p.filter.name(), p.policy_version),
            (Format::Text, Err(e)) => eprintln!("{file}: {e}"),
        }
    }
    if a.format == Format::Json {
        let text = serde_json::to_string_pretty(&results).map_err(|e| CliError::could_not_run(e.to_string()))?;
        println!("{text}");
    }
    worst.map_or(Ok(()), |s| Err(CliError::reported(s)))
}
