//! Ending a rollout by editing the policy file (`gatewarden promote`, `gatewarden abort`): the
//! result is validated with the filter's code before the file is written (atomically, in its
//! format), and `signatures` are dropped: the content changed, so approvers must sign again.

use serde_json::Value;

use crate::error::{CliError, CmdResult};
use crate::policy_doc::PolicyText;
use crate::policy_file::Filter;

/// How a rollout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The candidate becomes the policy.
    Promote,
    /// The rollout is dropped; the active policy stays.
    Abort,
}

/// The document after `promote`: the candidate, keeping the active `filter` if it names none.
pub fn promoted(doc: &Value) -> Option<Value> {
    let mut candidate = doc.get("rollout")?.get("candidate")?.clone();
    let obj = candidate.as_object_mut()?;
    if let (None, Some(f)) = (obj.get("filter"), doc.get("filter")) {
        obj.insert("filter".to_owned(), f.clone());
    }
    Some(candidate)
}

/// The document after `abort`: without rollout and signatures.
pub fn aborted(doc: &Value) -> Option<Value> {
    doc.get("rollout")?;
    let mut d = doc.clone();
    let obj = d.as_object_mut()?;
    obj.remove("rollout");
    obj.remove("signatures");
    Some(d)
}

/// Ends the rollout of the policy in `file`; exit 1 when it has none or the result is invalid.
pub fn end(file: &str, filter: Option<Filter>, how: Ending) -> CmdResult {
    let cmd = match how {
        Ending::Promote => "promote",
        Ending::Abort => "abort",
    };
    let doc = PolicyText::read(file)?;
    let new = match how {
        Ending::Promote => promoted(&doc.value),
        Ending::Abort => aborted(&doc.value),
    }
    .ok_or_else(|| CliError::failed(format!("{file}: no rollout to {cmd} (expected rollout.candidate)")))?;
    // Validate the result with the filter's code before touching the file.
    let version = crate::policy_file::load_value(file, new.clone(), filter)
        .map(|p| p.policy_version)
        .map_err(|e| CliError::failed(format!("{file}: not changed: the {cmd}d policy would be invalid: {e}")))?;
    let had_signatures = doc.value.get("signatures").is_some_and(|s| s.as_array().is_none_or(|a| !a.is_empty()));
    match how {
        Ending::Promote => doc.write(&new, &[], None)?,
        Ending::Abort => doc.write(&new, &["rollout", "signatures"], None)?,
    }
    match how {
        Ending::Promote => eprintln!("{file}: candidate {version:?} promoted to the active policy; rollout removed"),
        Ending::Abort => eprintln!("{file}: rollout aborted; the active policy {version:?} stays"),
    }
    if had_signatures {
        eprintln!("{file}: signatures removed: the content changed, approvers must sign it again");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn promote_takes_the_candidate_and_keeps_the_filter() {
        let doc = json!({"filter": "ip_geo", "policy_version": "v1", "signatures": [], "rollout": {"percent": 5, "candidate": {"policy_version": "v2", "default": {}}}});
        assert_eq!(promoted(&doc), Some(json!({"filter": "ip_geo", "policy_version": "v2", "default": {}})));
        assert_eq!(promoted(&json!({"policy_version": "v1"})), None);
    }

    #[test]
    fn abort_drops_rollout_and_signatures() {
        let doc = json!({"policy_version": "v1", "signatures": [{"key_id": "a", "sig": "x"}], "rollout": {"percent": 5, "candidate": {}}});
        assert_eq!(aborted(&doc), Some(json!({"policy_version": "v1"})));
        assert_eq!(aborted(&json!({"policy_version": "v1"})), None);
    }
}
