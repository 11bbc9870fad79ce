//! `gatewarden rollback --to DIR [--version V]`: re-applies version V (default: the one before the
//! current, so two rollbacks in a row toggle) as a new version, after validating it with today's
//! filter code and checking its approvals as `apply` does.

use std::path::Path;

use crate::cli::{ChangeArgs, ModuleArgs};
use crate::commands::apply::report;
use crate::ecds::{apply, rollback_target, History, Meta, ModuleSettings};
use crate::error::{CliError, CmdResult, Status};
use crate::hosts::envoy_native::{self, ModuleSource};
use crate::modules::module_dir;
use crate::policy_file::{load_text, Filter};
use crate::timefmt;
use crate::trust::approved_vm_config;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 rolled back, 1 refused because today's filter code refuses that version or \
                        its approvals, 2 could not run (no such version, no earlier version, another apply running). \
                        A refused rollback changes nothing.")]
pub struct Args {
    /// The ECDS directory.
    #[arg(long, value_name = "DIR")]
    pub to: String,
    /// The history version to re-apply (`3` or `v3`); default: the one before the current.
    #[arg(long, value_name = "V", value_parser = parse_version)]
    pub version: Option<u64>,
    /// The filter to roll back, when several were applied to the directory.
    #[arg(long, value_name = "NAME", value_enum)]
    pub filter: Option<Filter>,
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Module settings; default: those recorded with the version.
    #[command(flatten)]
    pub module: ModuleArgs,
}

const ROLLBACK_REFUSED: &str = "gatewarden: rollback refused, nothing changed";

fn parse_version(v: &str) -> Result<u64, String> {
    v.trim_start_matches('v').parse().map_err(|_| format!("not a number: {v:?}"))
}

/// `gatewarden rollback`.
pub fn run(o: &Args) -> CmdResult {
    let dir = o.to.as_str();
    let fail = |e: String| CliError::could_not_run(format!("{ROLLBACK_REFUSED}: {e}"));
    let invalid = |e: String| CliError::failed(format!("{ROLLBACK_REFUSED}: {e}"));
    let h = History::open(dir).map_err(fail)?;
    let target = rollback_target(&h, o.filter, o.version).map_err(fail)?.clone();
    let filter = target.filter().map_err(fail)?;
    // The same validation as apply: the filter of today must still accept the old policy.
    let policy = load_text("history.json", &target.policy_json, Some(filter))
        .map_err(|e| invalid(format!("version {} no longer validates: {e}", target.version)))?;
    // The version's own target: the native module's resource again for a native version.
    let native = target.target.as_deref() == Some(envoy_native::TARGET);
    let trust = if native {
        envoy_native::approved_trust(o.module.vm_config.as_deref(), Path::new(dir), &policy)
    } else {
        approved_vm_config(o.module.vm_config.as_deref(), Path::new(dir), &policy)
    };
    let vm_configuration = trust.map_err(|r| {
        let e = format!("version {}: {}", target.version, r.message);
        if r.status == Status::Failed {
            invalid(e)
        } else {
            fail(e)
        }
    })?;
    let settings = if native {
        let source = match (&o.module.module, &o.module.modules) {
            (None, None) => ModuleSource::recorded(&target.module),
            (m, d) => ModuleSource::resolve(m.as_deref(), d.as_deref()).map_err(fail)?,
        };
        ModuleSettings { module: String::new(), vm_id: None, vm_configuration, native: Some(source) }
    } else {
        let module = match (&o.module.module, &o.module.modules) {
            (Some(m), _) => m.clone(),
            (None, Some(d)) => module_dir(Some(d)).join(filter.module_file()).to_string_lossy().into_owned(),
            (None, None) => target.module.clone(),
        };
        ModuleSettings { module, vm_id: o.module.vm_id.clone().or_else(|| target.vm_id.clone()), vm_configuration, native: None }
    };
    let meta = Meta {
        author: o.change.author(),
        message: o.change.message.clone().unwrap_or_else(|| format!("rollback to version {}", target.version)),
        source: String::new(),
        rollback_of: Some(target.version),
        now: timefmt::now(),
    };
    report(apply(Path::new(dir), &policy, &settings, meta), dir, filter)
}
