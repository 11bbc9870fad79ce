//! `gatewarden apply | history | rollback` on an ECDS watched directory.
//!
//! `apply POLICY --to DIR` validates the policy with the filter's own code, renders the ECDS
//! resource (`render --target envoy`), records the version in `DIR/.gatewarden/history/`, then
//! writes `DIR/<filter>.json` through a temp file and a rename, so Envoy sees one whole new file.
//! A refused apply (invalid policy, unwritable directory, another apply running) changes nothing
//! on disk. Each history entry (`NNNNNN.json`) keeps the exact policy JSON, its sha256, the time,
//! author, message, policy_version and the module settings, so `rollback` can re-apply it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::policy_file::{load, load_text, Filter, LoadError, LoadedPolicy};
use crate::render::{ecds_resource, write_atomic, ModuleSettings};
use crate::{modules::sha256_hex, timefmt};

/// One applied version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub version: u64,
    pub filter: String,
    pub policy_version: String,
    /// sha256 of `policy_json`.
    pub sha256: String,
    /// UTC, `2026-11-23T19:30:00Z`.
    pub time: String,
    pub author: String,
    pub message: String,
    /// The file applied (empty for a rollback).
    pub source: String,
    /// Set when this entry re-applied an earlier version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// The exact configuration the filter received.
    pub policy_json: String,
}

impl Entry {
    pub fn filter(&self) -> Result<Filter, String> {
        Filter::from_name(&self.filter).ok_or_else(|| format!("version {}: unknown filter {:?}", self.version, self.filter))
    }
}

/// The apply history of one ECDS directory.
pub struct History {
    pub dir: PathBuf,
    entries: Vec<Entry>,
}

fn state_dir(ecds_dir: &Path) -> PathBuf {
    ecds_dir.join(".gatewarden")
}

impl History {
    /// Reads `DIR/.gatewarden/history/` (empty when there is none yet). `DIR` must exist.
    pub fn open(dir: &str) -> Result<History, String> {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            return Err(format!("{}: not a directory", dir.display()));
        }
        let hist = state_dir(&dir).join("history");
        let mut entries = Vec::new();
        if hist.is_dir() {
            let listing = std::fs::read_dir(&hist).map_err(|e| format!("{}: {e}", hist.display()))?;
            for f in listing {
                let path = f.map_err(|e| format!("{}: {e}", hist.display()))?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let entry: Entry = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                    entries.push(entry);
                }
            }
        }
        entries.sort_by_key(|e| e.version);
        Ok(History { dir, entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, version: u64) -> Result<&Entry, String> {
        self.entries
            .iter()
            .find(|e| e.version == version)
            .ok_or_else(|| format!("{}: no version {version} in the history", self.dir.display()))
    }

    /// The latest entry of `filter`: what its ECDS file holds.
    pub fn current(&self, filter: Filter) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.filter == filter.name())
    }

    /// The filter a command means: the flag, else the only one in the history.
    fn filter(&self, flag: Option<Filter>) -> Result<Filter, String> {
        if let Some(f) = flag {
            return Ok(f);
        }
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.filter.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        match names.as_slice() {
            [one] => Filter::from_name(one).ok_or_else(|| format!("unknown filter {one:?} in the history")),
            [] => Err(format!("{}: nothing applied yet", self.dir.display())),
            many => Err(format!("several filters applied here ({}): pass --filter", many.join(", "))),
        }
    }

    fn next_version(&self) -> u64 {
        self.entries.last().map_or(1, |e| e.version + 1)
    }
}

/// Held while an apply runs: `DIR/.gatewarden/lock`, created exclusively, removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(ecds_dir: &Path) -> Result<Lock, String> {
        let path = state_dir(ecds_dir).join("lock");
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => Ok(Lock(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(format!(
                "{}: another apply is running (remove the file if it is stale)",
                path.display()
            )),
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
    let text = ecds_resource(policy.filter, &policy.json, &policy.policy_version, settings);
    let target = ecds_dir.join(format!("{}.json", policy.filter.name()));
    if let Some(cur) = history.current(policy.filter) {
        let on_disk = std::fs::read_to_string(&target).unwrap_or_default();
        if cur.sha256 == sha && on_disk == text && meta.rollback_of.is_none() {
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
        module: settings.module.clone(),
        vm_id: settings.vm_id.clone(),
        policy_json: policy.json.clone(),
    };
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

fn default_author() -> String {
    ["GATEWARDEN_AUTHOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Default)]
struct Options {
    files: Vec<String>,
    to: Option<String>,
    author: Option<String>,
    message: Option<String>,
    filter: Option<Filter>,
    module: Option<String>,
    modules: Option<String>,
    vm_id: Option<String>,
    /// `--vm-config FILE`: the trust settings written as vm_config.configuration and checked first.
    vm_config: Option<String>,
    version: Option<u64>,
    json: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--to" => o.to = Some(value()?),
            "--author" => o.author = Some(value()?),
            "-m" | "--message" => o.message = Some(value()?),
            "--filter" => {
                let n = value()?;
                o.filter = Some(Filter::parse(&n)?);
            }
            "--module" => o.module = Some(value()?),
            "--modules" => o.modules = Some(value()?),
            "--vm-id" => o.vm_id = Some(value()?),
            "--vm-config" => o.vm_config = Some(value()?),
            "--target" => match value()?.as_str() {
                "envoy" => {}
                other => {
                    return Err(format!(
                        "--target {other:?}: apply writes Envoy ECDS resources only; for Kong or nginx use \
                         `gatewarden render --target kong|nginx --out DIR` (same checks; nothing is written when it refuses)"
                    ))
                }
            },
            "--version" => {
                let v = value()?;
                o.version = Some(v.trim_start_matches('v').parse().map_err(|_| format!("--version: not a number: {v:?}"))?);
            }
            "--format" => match value()?.as_str() {
                "json" => o.json = true,
                "text" => o.json = false,
                other => return Err(format!("--format takes text or json, got {other:?}")),
            },
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => o.files.push(a.clone()),
        }
    }
    Ok(o)
}

fn report(result: Result<Applied, String>, dir: &str, filter: Filter) -> ExitCode {
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
            ExitCode::SUCCESS
        }
        Ok(Applied::Unchanged(v)) => {
            println!("unchanged: {dir} already serves this {} policy (version {v})", filter.name());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatewarden: apply refused, nothing changed: {e}");
            ExitCode::from(2)
        }
    }
}

/// `gatewarden apply POLICY --to DIR [--author A] [-m MSG] [--module PATH | --modules DIR] [--vm-id ID]`.
pub fn main_apply(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_args(args)?;
    let [file] = o.files.as_slice() else { return Err("apply takes one policy file".into()) };
    let dir = o.to.clone().ok_or("apply needs --to DIR (the ECDS watched directory)")?;
    let policy = match load(file, o.filter) {
        Ok(p) => p,
        Err(e) => return Ok(refused(file, &e)),
    };
    let mut settings = ModuleSettings::resolve(o.module.as_deref(), o.modules.as_deref(), policy.filter);
    settings.vm_id = o.vm_id.clone();
    settings.vm_configuration = match approved_vm_config(&o, Path::new(&dir), &policy) {
        Ok(v) => v,
        Err((code, msg)) => {
            eprintln!("{file}: {msg}");
            eprintln!("gatewarden: apply refused, nothing changed");
            return Ok(ExitCode::from(code));
        }
    };
    let meta = Meta {
        author: o.author.clone().unwrap_or_else(default_author),
        message: o.message.clone().unwrap_or_default(),
        source: file.clone(),
        rollback_of: None,
        now: timefmt::now(),
    };
    Ok(report(apply(Path::new(&dir), &policy, &settings, meta), &dir, policy.filter))
}

/// `--vm-config FILE`: the trust settings of approvals (the platform owner's), written into the
/// ECDS resource as `vm_config.configuration`; the policy must pass the filter's own signature
/// check against them first (`sign::verify` runs the same code).
///
/// Without `--vm-config`, the trust settings the directory's resource serves now are kept (and
/// checked): an apply or rollback never drops approvals by omission.
fn approved_vm_config(o: &Options, dir: &Path, policy: &LoadedPolicy) -> Result<Option<String>, (u8, String)> {
    let (path, text) = match &o.vm_config {
        Some(path) => (path.clone(), std::fs::read_to_string(path).map_err(|e| (2, format!("{path}: cannot read: {e}")))?),
        None => match serving_vm_config(dir, policy.filter)? {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    crate::render::check_trust(&path, &text, policy).map_err(|r| (r.code, r.message))?;
    Ok(Some(text))
}

/// The trust settings (`vm_config.configuration`) of the resource `dir` serves for `filter`, with
/// a label for messages; None when there is no resource or it has none.
fn serving_vm_config(dir: &Path, filter: Filter) -> Result<Option<(String, String)>, (u8, String)> {
    let path = dir.join(format!("{}.json", filter.name()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err((2, format!("{}: cannot read: {e}", path.display()))),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| (2, format!("{}: not an ECDS resource: {e}", path.display())))?;
    let found = doc.pointer("/resources/0/typed_config/config/vm_config/configuration/value").and_then(|v| v.as_str());
    Ok(found.map(|v| (format!("{} (serving trust settings)", path.display()), v.to_owned())))
}

fn refused(file: &str, e: &LoadError) -> ExitCode {
    eprintln!("{file}: {e}");
    eprintln!("gatewarden: apply refused, nothing changed");
    ExitCode::from(if e.is_invalid() { 1 } else { 2 })
}

/// `gatewarden history --to DIR [--filter F] [--format json]`.
pub fn main_history(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_args(args)?;
    let dir = o.to.clone().ok_or("history needs --to DIR")?;
    let h = match History::open(&dir) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("gatewarden history: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let shown: Vec<&Entry> = h.entries().iter().filter(|e| o.filter.is_none_or(|f| f.name() == e.filter)).collect();
    if o.json {
        let list: Vec<serde_json::Value> = shown
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.remove("policy_json");
                    let current = e.filter().ok().and_then(|f| h.current(f)).is_some_and(|c| c.version == e.version);
                    m.insert("current".into(), current.into());
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    if shown.is_empty() {
        println!("{dir}: nothing applied yet");
        return Ok(ExitCode::SUCCESS);
    }
    println!("  {:>3}  {:20}  {:7}  {:16}  {:12}  {:10}  MESSAGE", "VER", "TIME (UTC)", "FILTER", "POLICY_VERSION", "SHA256", "AUTHOR");
    for e in shown {
        let current = e.filter().ok().and_then(|f| h.current(f)).is_some_and(|c| c.version == e.version);
        let mut msg = e.message.clone();
        if let Some(v) = e.rollback_of {
            msg = if msg.is_empty() { format!("rollback to {v}") } else { msg };
        }
        println!(
            "{} {:>3}  {:20}  {:7}  {:16}  {:12}  {:10}  {msg}",
            if current { "*" } else { " " },
            e.version,
            e.time,
            e.filter,
            e.policy_version,
            e.sha256.get(..12).unwrap_or(&e.sha256),
            e.author
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The version a rollback re-applies: `version`, else the entry of the filter before its current one.
pub fn rollback_target(h: &History, filter: Option<Filter>, version: Option<u64>) -> Result<&Entry, String> {
    if let Some(v) = version {
        let e = h.entry(v)?;
        if let Some(f) = filter.filter(|f| f.name() != e.filter) {
            return Err(format!("version {v} is a {} policy, not {}", e.filter, f.name()));
        }
        return Ok(e);
    }
    let filter = h.filter(filter)?;
    let mine: Vec<&Entry> = h.entries().iter().filter(|e| e.filter == filter.name()).collect();
    match mine.as_slice() {
        [.., prev, _current] => Ok(prev),
        _ => Err(format!("{}: no earlier {} version to roll back to", h.dir.display(), filter.name())),
    }
}

/// `gatewarden rollback --to DIR [--version V] [--filter F] [--author A] [-m MSG]`: re-applies
/// version V (default: the one before the current) as a new version.
pub fn main_rollback(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_args(args)?;
    if !o.files.is_empty() {
        return Err("rollback takes no policy file (use --version)".into());
    }
    let dir = o.to.clone().ok_or("rollback needs --to DIR")?;
    let fail = |e: String| {
        eprintln!("gatewarden: rollback refused, nothing changed: {e}");
        Ok(ExitCode::from(2))
    };
    let h = match History::open(&dir) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let target = match rollback_target(&h, o.filter, o.version) {
        Ok(t) => t.clone(),
        Err(e) => return fail(e),
    };
    let filter = match target.filter() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    // The same validation as apply: the filter of today must still accept the old policy.
    let policy = match load_text("history.json", &target.policy_json, Some(filter)) {
        Ok(p) => p,
        Err(e) => return fail(format!("version {} no longer validates: {e}", target.version)),
    };
    let vm_configuration = match approved_vm_config(&o, Path::new(&dir), &policy) {
        Ok(v) => v,
        Err((_, msg)) => return fail(format!("version {}: {msg}", target.version)),
    };
    let settings = ModuleSettings {
        module: o.module.clone().unwrap_or_else(|| target.module.clone()),
        vm_id: o.vm_id.clone().or_else(|| target.vm_id.clone()),
        vm_configuration,
    };
    let meta = Meta {
        author: o.author.clone().unwrap_or_else(default_author),
        message: o.message.clone().unwrap_or_else(|| format!("rollback to version {}", target.version)),
        source: String::new(),
        rollback_of: Some(target.version),
        now: timefmt::now(),
    };
    Ok(report(apply(Path::new(&dir), &policy, &settings, meta), &dir, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).ok();
        d
    }

    fn policy(version: &str) -> LoadedPolicy {
        let text = format!("{{\"filter\":\"ip_geo\",\"policy_version\":\"{version}\",\"rules\":[{{\"name\":\"a\",\"deny\":[\"10.0.0.0/8\"]}}]}}");
        load_text("p.json", &text, None).unwrap()
    }

    fn meta(now: u64) -> Meta {
        Meta { author: "ann".into(), message: "m".into(), source: "p.json".into(), rollback_of: None, now }
    }

    fn settings() -> ModuleSettings {
        ModuleSettings { module: "/m/gatewarden_ip_geo.wasm".into(), vm_id: None, vm_configuration: None }
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
