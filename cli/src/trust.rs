//! Approvals at deploy time: a policy checked against the platform owner's trust settings with
//! the filter's own signature check (what `on_vm_start` + `on_configure` would do with them),
//! before `render` or `apply` hands it to a proxy.

use std::path::Path;

use crate::ecds::serving_vm_config;
use crate::error::Refusal;
use crate::policy_file::LoadedPolicy;

/// Checks `policy` against the trust settings `text` (read from `label`).
pub fn check_trust(label: &str, text: &str, policy: &LoadedPolicy) -> Result<(), Refusal> {
    let trust = gatewarden_policy::approvals::TrustConfig::parse(text.as_bytes())
        .map_err(|e| Refusal::could_not_run(format!("{label}: invalid trust settings: {e}")))?;
    trust.verify(policy.json.as_bytes()).map(|_| ()).map_err(|e| Refusal::invalid(format!("the filter would refuse it: {e}")))
}

/// The trust settings an apply or rollback writes into the ECDS resource as
/// `vm_config.configuration`, checked against `policy` first: `--vm-config FILE` when given,
/// else the ones the directory's resource serves now (an apply never drops approvals by
/// omission); None when there are none.
pub fn approved_vm_config(flag: Option<&str>, dir: &Path, policy: &LoadedPolicy) -> Result<Option<String>, Refusal> {
    let (label, text) = match flag {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Refusal::could_not_run(format!("{path}: cannot read: {e}")))?;
            (path.to_string(), text)
        }
        None => match serving_vm_config(dir, policy.filter)? {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    check_trust(&label, &text, policy)?;
    Ok(Some(text))
}
