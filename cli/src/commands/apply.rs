//! `gatewarden apply POLICY --to DIR`: validates the policy with the filter's own code, checks its
//! approvals, renders the ECDS resource, records the version in `DIR/.gatewarden/history/` and
//! writes `DIR/<filter>.json` atomically (`ecds::apply`). A refused apply changes nothing on disk.
//! `--target envoy-native` writes the native module's resource (`hosts::envoy_native`) and its
//! trust settings to `DIR/gatewarden-trust.json`.

use std::path::Path;

use crate::cli::{ChangeArgs, FilterArg, ModuleArgs};
use crate::ecds::{apply, Applied, Meta, ModuleSettings};
use crate::error::{CliError, CmdResult};
use crate::hosts::envoy_native::{self, ModuleSource};
use crate::policy_file::{load, Filter};
use crate::timefmt;
use crate::trust::approved_vm_config;

#[derive(Debug, clap::Args)]
#[command(after_help = "Without --vm-config, the trust settings the directory serves now are kept and checked: an \
                        apply never drops approvals by omission.\n\
                        Exit status: 0 applied (or unchanged), 1 invalid or unapproved policy, 2 could not run \
                        (another apply running, unwritable directory). A refused apply changes nothing.")]
pub struct Args {
    /// The policy file (YAML or JSON).
    #[arg(value_name = "POLICY")]
    pub policy: String,
    /// The ECDS directory Envoy watches (must exist).
    #[arg(long, value_name = "DIR")]
    pub to: String,
    #[command(flatten)]
    pub filter: FilterArg,
    #[command(flatten)]
    pub change: ChangeArgs,
    #[command(flatten)]
    pub module: ModuleArgs,
    /// `envoy` (the Wasm filter, default) or `envoy-native` (the native module libgatewarden.so):
    /// apply writes Envoy ECDS resources (for Kong or nginx use `render --out DIR`).
    #[arg(long, value_name = "envoy|envoy-native")]
    pub target: Option<String>,
}

/// The line after every refusal of apply and rollback.
pub const REFUSED: &str = "gatewarden: apply refused, nothing changed";

/// `gatewarden apply`.
pub fn run(o: &Args) -> CmdResult {
    if let Some(other) = o.target.as_deref().filter(|t| *t != "envoy" && *t != envoy_native::TARGET) {
        return Err(CliError::could_not_run(format!(
            "gatewarden: --target {other:?}: apply writes Envoy ECDS resources only; for Kong or nginx use \
             `gatewarden render --target kong|nginx --out DIR` (same checks; nothing is written when it refuses)"
        )));
    }
    let file = o.policy.as_str();
    let dir = o.to.as_str();
    let policy = load(file, o.filter.filter).map_err(|e| CliError::load(file, &e).then_line(REFUSED))?;
    let mut settings = ModuleSettings::resolve(o.module.module.as_deref(), o.module.modules.as_deref(), policy.filter);
    if o.target.as_deref() == Some(envoy_native::TARGET) {
        let source = ModuleSource::resolve(o.module.module.as_deref(), o.module.modules.as_deref())
            .map_err(|e| CliError::usage("apply", e).then_line(REFUSED))?;
        settings.native = Some(source);
        if let Some(id) = &o.module.vm_id {
            eprintln!("gatewarden: warning: --vm-id {id:?}: the native module runs without a VM; ignored");
        }
        settings.vm_configuration =
            envoy_native::approved_trust(o.module.vm_config.as_deref(), Path::new(dir), &policy).map_err(|r| r.about(file, REFUSED))?;
    } else {
        settings.vm_id = o.module.vm_id.clone();
        settings.vm_configuration =
            approved_vm_config(o.module.vm_config.as_deref(), Path::new(dir), &policy).map_err(|r| r.about(file, REFUSED))?;
    }
    let meta = Meta {
        author: o.change.author(),
        message: o.change.message.clone().unwrap_or_default(),
        source: file.to_string(),
        rollback_of: None,
        now: timefmt::now(),
    };
    report(apply(Path::new(dir), &policy, &settings, meta), dir, policy.filter)
}

/// Prints what an apply (or rollback) did; an error says nothing changed.
pub fn report(result: Result<Applied, String>, dir: &str, filter: Filter) -> CmdResult {
    match result {
        Ok(Applied::New(e)) => {
            let what = e.rollback_of.map(|v| format!(" (rollback to version {v})")).unwrap_or_default();
            println!(
                "applied version {} of {dir}: {} policy {:?}{what}, sha256 {}\n  wrote {}/{}.json",
                e.version,
                e.filter,
                e.policy_version,
                e.sha256.get(..12).unwrap_or(&e.sha256),
                dir.trim_end_matches('/'),
                filter.name()
            );
            Ok(())
        }
        Ok(Applied::Unchanged(v)) => {
            println!("unchanged: {dir} already serves this {} policy (version {v})", filter.name());
            Ok(())
        }
        Err(e) => Err(CliError::could_not_run(format!("{REFUSED}: {e}"))),
    }
}
