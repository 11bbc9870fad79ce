//! Applying a policy to an ECDS directory: validation already happened (the policy is loaded);
//! this records the version in the history, then writes `DIR/<filter>.json` through a temp file
//! and a rename, so Envoy sees one whole new file. A refused apply (unwritable directory, another
//! apply running) changes nothing on disk. For the native module, trust settings go to
//! `DIR/gatewarden-trust.json` (read by the module from `GATEWARDEN_TRUST_FILE` when Envoy starts).

use std::path::{Path, PathBuf};

use super::history::{state_dir, Entry, History};
use super::resource::ModuleSettings;
use crate::atomic::write_atomic;
use crate::hosts::envoy_native::{self, ModuleSource};
use crate::policy_file::LoadedPolicy;
use crate::{modules::sha256_hex, timefmt};

/// Held while an apply runs: `DIR/.gatewarden/lock`, created exclusively, removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(ecds_dir: &Path) -> Result<Lock, String> {
        let path = state_dir(ecds_dir).join("lock");
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => Ok(Lock(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(format!("{}: another apply is running (remove the file if it is stale)", path.display()))
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What an apply did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// A new version was written.
    New(Box<Entry>),
    /// The directory already serves exactly this policy with these settings.
    Unchanged(u64),
}

/// Who and why.
pub struct Meta {
    pub author: String,
    pub message: String,
    pub source: String,
    pub rollback_of: Option<u64>,
    /// Unix seconds.
    pub now: u64,
}

/// Records and writes `policy` into `ecds_dir`. Validation already happened (`policy` is loaded).
pub fn apply(ecds_dir: &Path, policy: &LoadedPolicy, settings: &ModuleSettings, meta: Meta) -> Result<Applied, String> {
    if !ecds_dir.is_dir() {
        return Err(format!("{}: not a directory", ecds_dir.display()));
    }
    let hist_dir = state_dir(ecds_dir).join("history");
    std::fs::create_dir_all(&hist_dir).map_err(|e| format!("{}: {e}", hist_dir.display()))?;
    let _lock = Lock::take(ecds_dir)?;
    let history = History::open(&ecds_dir.to_string_lossy())?;
    let sha = sha256_hex(policy.json.as_bytes());
    let text = settings.resource(policy);
    let target = ecds_dir.join(format!("{}.json", policy.filter.name()));
    // The native module's trust settings, when they differ from those beside the resources.
    let trust_path = ecds_dir.join(envoy_native::TRUST_FILE_NAME);
    let new_trust = match (&settings.native, &settings.vm_configuration) {
        (Some(_), Some(trust)) => std::fs::read(&trust_path).map_or(true, |old| old != trust.as_bytes()).then_some(trust),
        _ => None,
    };
    if let Some(cur) = history.current(policy.filter) {
        let on_disk = std::fs::read_to_string(&target).unwrap_or_default();
        if cur.sha256 == sha && on_disk == text && meta.rollback_of.is_none() && new_trust.is_none() {
            return Ok(Applied::Unchanged(cur.version));
        }
    }
    let entry = Entry {
        version: history.next_version(),
        filter: policy.filter.name().to_string(),
        policy_version: policy.policy_version.clone(),
        sha256: sha,
        time: timefmt::format(meta.now),
        author: meta.author,
        message: meta.message,
        source: meta.source,
        rollback_of: meta.rollback_of,
        module: match &settings.native {
            Some(ModuleSource::File(path)) => path.clone(),
            Some(ModuleSource::SearchPath) => String::new(),
            None => settings.module.clone(),
        },
        target: settings.native.as_ref().map(|_| envoy_native::TARGET.to_string()),
        vm_id: settings.native.is_none().then(|| settings.vm_id.clone()).flatten(),
        policy_json: policy.json.clone(),
    };
    // Read by Envoy only when it starts: written first, so a resource never serves without them.
    if let Some(trust) = new_trust {
        write_atomic(&trust_path, trust.as_bytes()).map_err(|e| format!("{}: {e}", trust_path.display()))?;
    }
    let entry_path = hist_dir.join(format!("{:06}.json", entry.version));
    let body = serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())? + "\n";
    write_atomic(&entry_path, body.as_bytes()).map_err(|e| format!("{}: {e}", entry_path.display()))?;
    if let Err(e) = write_atomic(&target, text.as_bytes()) {
        // The live file did not change: neither does the history.
        let _ = std::fs::remove_file(&entry_path);
        return Err(format!("{}: {e}", target.display()));
    }
    Ok(Applied::New(Box::new(entry)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecds::history::rollback_target;
    use crate::policy_file::{load_text, Filter};

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).ok();
        d
    }

    fn policy(version: &str) -> LoadedPolicy {
        let text =
            format!("{{\"filter\":\"ip_geo\",\"policy_version\":\"{version}\",\"rules\":[{{\"name\":\"a\",\"deny\":[\"10.0.0.0/8\"]}}]}}");
        load_text("p.json", &text, None).unwrap()
    }

    fn meta(now: u64) -> Meta {
        Meta { author: "ann".into(), message: "m".into(), source: "p.json".into(), rollback_of: None, now }
    }

    fn settings() -> ModuleSettings {
        ModuleSettings { module: "/m/gatewarden_ip_geo.wasm".into(), vm_id: None, vm_configuration: None, native: None }
    }

    #[test]
    fn apply_records_each_version_and_writes_the_ecds_file() {
        let d = temp_dir("records");
        let r1 = apply(&d, &policy("v1"), &settings(), meta(1_767_225_600));
        assert!(matches!(&r1, Ok(Applied::New(e)) if e.version == 1 && e.time == "2026-01-01T00:00:00Z"), "{r1:?}");
        let r2 = apply(&d, &policy("v2"), &settings(), meta(1_767_225_660));
        assert!(matches!(&r2, Ok(Applied::New(e)) if e.version == 2), "{r2:?}");
        let again = apply(&d, &policy("v2"), &settings(), meta(1_767_225_700));
        assert_eq!(again, Ok(Applied::Unchanged(2)));
        let h = History::open(&d.to_string_lossy()).map_err(|e| e.to_string());
        let h = h.as_ref().map(|h| h.entries().iter().map(|e| e.policy_version.clone()).collect::<Vec<_>>());
        assert_eq!(h, Ok(vec!["v1".to_string(), "v2".to_string()]));
        let file = std::fs::read_to_string(d.join("ip_geo.json")).unwrap_or_default();
        assert!(file.contains("\\\"policy_version\\\":\\\"v2\\\""), "{file}");
        assert!(!d.join(".gatewarden/lock").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_held_lock_refuses_and_changes_nothing() {
        let d = temp_dir("lock");
        std::fs::create_dir_all(d.join(".gatewarden/history")).ok();
        std::fs::write(d.join(".gatewarden/lock"), "").ok();
        let r = apply(&d, &policy("v1"), &settings(), meta(0));
        assert!(matches!(&r, Err(e) if e.contains("another apply is running")), "{r:?}");
        assert!(!d.join("ip_geo.json").exists());
        assert_eq!(std::fs::read_dir(d.join(".gatewarden/history")).map(|r| r.count()).unwrap_or(9), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_directory_is_refused() {
        let r = apply(Path::new("/nonexistent-gw-dir"), &policy("v1"), &settings(), meta(0));
        assert!(matches!(&r, Err(e) if e.contains("not a directory")), "{r:?}");
    }

    #[test]
    fn rollback_goes_to_the_version_before_the_current_one() {
        let d = temp_dir("rollback");
        let h = History::open(&d.to_string_lossy()).unwrap();
        assert!(rollback_target(&h, None, None).unwrap_err().contains("nothing applied"));
        apply(&d, &policy("v1"), &settings(), meta(0)).unwrap();
        let h = History::open(&d.to_string_lossy()).unwrap();
        assert!(rollback_target(&h, None, None).unwrap_err().contains("no earlier ip_geo version"));
        apply(&d, &policy("v2"), &settings(), meta(1)).unwrap();
        let h = History::open(&d.to_string_lossy()).unwrap();
        assert_eq!(rollback_target(&h, None, None).unwrap().policy_version, "v1");
        assert_eq!(rollback_target(&h, None, Some(2)).unwrap().policy_version, "v2");
        assert!(rollback_target(&h, Some(Filter::Jwt), Some(1)).unwrap_err().contains("is a ip_geo policy, not jwt"));
        assert!(rollback_target(&h, None, Some(7)).unwrap_err().contains("no version 7"));
        // The rollback is a new version; the next plain rollback goes back to v2.
        let mut m = meta(2);
        m.rollback_of = Some(1);
        apply(&d, &policy("v1"), &settings(), m).unwrap();
        let h = History::open(&d.to_string_lossy()).unwrap();
        assert_eq!(h.entries().len(), 3);
        assert_eq!(h.current(Filter::IpGeo).unwrap().rollback_of, Some(1));
        assert_eq!(rollback_target(&h, None, None).unwrap().policy_version, "v2");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn native_apply_records_the_target_and_writes_the_trust_settings_beside() {
        let d = temp_dir("native");
        let native = |trust: Option<&str>| ModuleSettings {
            module: String::new(),
            vm_id: None,
            vm_configuration: trust.map(str::to_string),
            native: Some(ModuleSource::SearchPath),
        };
        let r = apply(&d, &policy("v1"), &native(Some("{\"required_signatures\":0}")), meta(0));
        assert!(matches!(&r, Ok(Applied::New(e)) if e.target.as_deref() == Some("envoy-native") && e.module.is_empty()), "{r:?}");
        let file = std::fs::read_to_string(d.join("ip_geo.json")).unwrap_or_default();
        assert!(file.contains("DynamicModuleFilter") && file.contains("\"filter_name\": \"ip_geo\""), "{file}");
        let trust = d.join("gatewarden-trust.json");
        assert_eq!(std::fs::read_to_string(&trust).ok().as_deref(), Some("{\"required_signatures\":0}"));
        // The same policy and settings: unchanged. Other trust settings: a new version.
        assert_eq!(apply(&d, &policy("v1"), &native(Some("{\"required_signatures\":0}")), meta(1)), Ok(Applied::Unchanged(1)));
        assert_eq!(apply(&d, &policy("v1"), &native(None), meta(1)), Ok(Applied::Unchanged(1)));
        let r = apply(&d, &policy("v1"), &native(Some("{}")), meta(2));
        assert!(matches!(&r, Ok(Applied::New(e)) if e.version == 2), "{r:?}");
        assert_eq!(std::fs::read_to_string(&trust).ok().as_deref(), Some("{}"));
        // A Wasm apply afterwards writes the Wasm resource, recorded without a target.
        let r = apply(&d, &policy("v2"), &settings(), meta(3));
        assert!(matches!(&r, Ok(Applied::New(e)) if e.target.is_none() && e.module == "/m/gatewarden_ip_geo.wasm"), "{r:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_filter_is_inferred_only_when_unambiguous() {
        let d = temp_dir("filter");
        let h = History::open(&d.to_string_lossy());
        assert!(matches!(h.as_ref().map(|h| h.filter(None)), Ok(Err(e)) if e.contains("nothing applied")));
        apply(&d, &policy("v1"), &settings(), meta(0)).ok();
        let h = History::open(&d.to_string_lossy());
        assert_eq!(h.map(|h| h.filter(None)), Ok(Ok(Filter::IpGeo)));
        let _ = std::fs::remove_dir_all(&d);
    }
}
