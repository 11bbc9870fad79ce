//! `gatewarden verify --trust TRUST.json POLICY`: the filter's own signature check, on the JSON
//! the filter receives, against the platform owner's trust settings.

use gatewarden_policy::approvals::TrustConfig;

use crate::cli::FilterArg;
use crate::error::{CliError, CmdResult};
use crate::policy_file::load;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 enough valid signatures, 1 not enough (the filter would refuse it) or \
                        invalid policy, 2 could not run (unreadable file, invalid trust settings).")]
pub struct Args {
    /// The trust settings: `{"trusted_signers": [{key_id, public_key}], "required_signatures": N}`.
    #[arg(long, value_name = "TRUST.json")]
    pub trust: String,
    /// The policy file.
    #[arg(value_name = "POLICY")]
    pub policy: String,
    #[command(flatten)]
    pub filter: FilterArg,
}

/// `gatewarden verify`.
pub fn run(a: &Args) -> CmdResult {
    let (file, trust_path) = (a.policy.as_str(), a.trust.as_str());
    let bytes = std::fs::read(trust_path).map_err(|e| CliError::could_not_run(format!("{trust_path}: cannot read: {e}")))?;
    let trust = TrustConfig::parse(&bytes).map_err(|e| CliError::could_not_run(format!("{trust_path}: invalid trust settings: {e}")))?;
    let policy = load(file, a.filter.filter).map_err(|e| CliError::load(file, &e))?;
    let checked = trust.check(policy.json.as_bytes()).map_err(|e| CliError::could_not_run(format!("{file}: {e}")))?;
    for k in &checked.valid {
        println!("{file}: valid signature by {k:?}");
    }
    for r in &checked.rejected {
        println!("{file}: not counted: {r}");
    }
    match trust.verify(policy.json.as_bytes()) {
        Ok(_) => {
            println!("{file}: approved ({} of {} required signatures)", checked.valid.len(), trust.required());
            Ok(())
        }
        Err(e) => Err(CliError::failed(format!("{file}: would be refused: {e}"))),
    }
}
