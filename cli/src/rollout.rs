//! `gatewarden promote | abort`: end a rollout by editing the policy file.
//!
//! ```text
//! gatewarden promote [--filter NAME] POLICY   the candidate becomes the policy; rollout and signatures removed
//! gatewarden abort [--filter NAME] POLICY     rollout (and signatures) removed; the active policy stays
//! ```
//! Both validate the result with the filter's code before writing (atomically), keep the
//! file's format (YAML or JSON), and drop `signatures`: the content changed, so approvers must
//! sign again (said on stderr). Exit 0 done, 1 invalid policy or no rollout, 2 could not run.

use std::process::ExitCode;

use serde_json::Value;

use crate::policy_file::{load, Filter};
use crate::sign::PolicyText;

fn parse_args(args: &[String], cmd: &str) -> Result<(Option<Filter>, String), String> {
    let mut filter = None;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => {
                let n = it.next().ok_or("--filter needs a name")?;
                filter = Some(Filter::parse(n)?);
            }
            s if s.starts_with("--") => return Err(format!("{cmd}: unknown option {s}")),
            _ => files.push(a.clone()),
        }
    }
    match files.as_slice() {
        [f] => Ok((filter, f.clone())),
        _ => Err(format!("{cmd} takes one policy file")),
    }
}

fn fail(code: u8, msg: &str) -> Result<ExitCode, String> {
    eprintln!("{msg}");
    Ok(ExitCode::from(code))
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

fn edit(args: &[String], cmd: &str) -> Result<ExitCode, String> {
    let (filter, file) = parse_args(args, cmd)?;
    let doc = match PolicyText::read(&file) {
        Ok(d) => d,
        Err((code, msg)) => return fail(code, &msg),
    };
    let new = match if cmd == "promote" { promoted(&doc.value) } else { aborted(&doc.value) } {
        Some(v) => v,
        None => return fail(1, &format!("{file}: no rollout to {cmd} (expected rollout.candidate)")),
    };
    // Validate the result with the filter's code before touching the file.
    let dir = std::env::temp_dir().join(format!("gatewarden-{cmd}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let probe = dir.join("policy.json");
    std::fs::write(&probe, serde_json::to_string(&new).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", probe.display()))?;
    let checked = load(&probe.to_string_lossy(), filter);
    let _ = std::fs::remove_dir_all(&dir);
    let version = match checked {
        Ok(p) => p.policy_version,
        Err(e) => return fail(1, &format!("{file}: not changed: the {cmd}d policy would be invalid: {e}")),
    };
    let had_signatures = doc.value.get("signatures").is_some_and(|s| s.as_array().is_none_or(|a| !a.is_empty()));
    if cmd == "promote" {
        doc.write(&new, &[], None)?;
    } else {
        doc.write(&new, &["rollout", "signatures"], None)?;
    }
    match cmd {
        "promote" => eprintln!("{file}: candidate {version:?} promoted to the active policy; rollout removed"),
        _ => eprintln!("{file}: rollout aborted; the active policy {version:?} stays"),
    }
    if had_signatures {
        eprintln!("{file}: signatures removed: the content changed, approvers must sign it again");
    }
    Ok(ExitCode::SUCCESS)
}

/// `gatewarden promote POLICY`
pub fn promote(args: &[String]) -> Result<ExitCode, String> {
    edit(args, "promote")
}

/// `gatewarden abort POLICY`
pub fn abort(args: &[String]) -> Result<ExitCode, String> {
    edit(args, "abort")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::remove_top_level_yaml;
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

    #[test]
    fn yaml_block_removal_keeps_other_lines_and_comments() {
        let text = "# policy\npolicy_version: v1\nrollout:\n  percent: 5\n  candidate:\n    policy_version: v2\n\n# after\nsignatures:\n- key_id: a\n  sig: x\ndefault: {}\n";
        let out = remove_top_level_yaml(&remove_top_level_yaml(text, "rollout"), "signatures");
        assert_eq!(out, "# policy\npolicy_version: v1\n# after\ndefault: {}\n");
    }
}
