//! `gatewarden promote POLICY`: the candidate (`rollout.candidate`) becomes the policy; `rollout` and
//! `signatures` are removed (`rollout::end`).

use crate::cli::FilterArg;
use crate::error::CmdResult;
use crate::rollout::{end, Ending};

#[derive(Debug, clap::Args)]
#[command(after_help = "Signatures are dropped (the content changed; approvers sign again). \
                        Exit status: 0 done, 1 no rollout or the result would be invalid (file unchanged), 2 could not run.")]
pub struct Args {
    /// The policy file with a `rollout`, edited in place (keeps YAML or JSON).
    #[arg(value_name = "POLICY")]
    pub policy: String,
    #[command(flatten)]
    pub filter: FilterArg,
}

/// `gatewarden promote`.
pub fn run(a: &Args) -> CmdResult {
    end(&a.policy, a.filter.filter, Ending::Promote)
}
