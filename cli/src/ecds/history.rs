//! The apply history of an ECDS directory: `DIR/.gatewarden/history/NNNNNN.json`, one entry per
//! applied version, holding the exact policy JSON, its sha256, the time, author, message,
//! policy_version and the module settings, so `rollback` can re-apply it and `diff` compare it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy_file::Filter;

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
    /// The `.wasm` file; with `target` `envoy-native`, the `libgatewarden.so` file, or empty when
    /// Envoy finds it through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    pub module: String,
    /// `envoy-native` when the native module's resource was written; absent for the Wasm filter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
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

/// `DIR/.gatewarden`: the history and the apply lock.
pub fn state_dir(ecds_dir: &Path) -> PathBuf {
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
    pub fn filter(&self, flag: Option<Filter>) -> Result<Filter, String> {
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

    pub fn next_version(&self) -> u64 {
        self.entries.last().map_or(1, |e| e.version + 1)
    }
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
