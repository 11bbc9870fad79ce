//! `gatewarden render-json POLICY`: the policy as the compact JSON its filter receives.

use crate::cli::FilterArg;
use crate::error::{CliError, CmdResult};
use crate::policy_file::load;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 printed, 1 invalid policy, 2 unreadable file.")]
pub struct Args {
    /// The policy file (YAML or JSON).
    #[arg(value_name = "POLICY")]
    pub file: String,
    #[command(flatten)]
    pub filter: FilterArg,
}

pub fn run(a: &Args) -> CmdResult {
    let p = load(&a.file, a.filter.filter).map_err(|e| CliError::load(&a.file, &e))?;
    println!("{}", p.json);
    Ok(())
}
