//! Where the built `.wasm` modules are, their sha256, and compiling each once per run.
//!
//! `gatewarden test` and `eval` run the very files that will enforce the policy, so they find them
//! the way a deployment does: `--modules DIR`, else `$GATEWARDEN_WASM_DIR`, else
//! `target/wasm32-wasip1/release` relative to the current directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatewarden_wasm_host::Module;
use sha2::{Digest, Sha256};

use crate::policy_file::Filter;

/// The default module directory, relative to the current directory.
pub const DEFAULT_DIR: &str = "target/wasm32-wasip1/release";

/// The module directory: the flag, else `$GATEWARDEN_WASM_DIR`, else [`DEFAULT_DIR`].
pub fn module_dir(flag: Option<&str>) -> PathBuf {
    if let Some(dir) = flag {
        return PathBuf::from(dir);
    }
    match std::env::var_os("GATEWARDEN_WASM_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A filter's module, read and compiled.
pub struct LoadedModule {
    pub path: PathBuf,
    pub sha256: String,
    pub module: Module,
}

/// The modules of one run, each compiled at most once.
pub struct Modules {
    dir: PathBuf,
    loaded: BTreeMap<&'static str, Result<LoadedModule, String>>,
}

impl Modules {
    pub fn new(dir: PathBuf) -> Self {
        Modules { dir, loaded: BTreeMap::new() }
    }

    /// The path of `filter`'s module in this run's directory.
    pub fn path(&self, filter: Filter) -> PathBuf {
        self.dir.join(filter.module_file())
    }

    /// `filter`'s module, compiled on first use; the error says which file and why.
    pub fn get(&mut self, filter: Filter) -> Result<&LoadedModule, String> {
        let path = self.path(filter);
        self.loaded.entry(filter.name()).or_insert_with(|| load(&path)).as_ref().map_err(Clone::clone)
    }

    /// The modules loaded so far (by filter name), for the summary.
    pub fn loaded(&self) -> impl Iterator<Item = (&'static str, &LoadedModule)> {
        self.loaded.iter().filter_map(|(name, m)| m.as_ref().ok().map(|m| (*name, m)))
    }
}

fn load(path: &Path) -> Result<LoadedModule, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{}: cannot read the module ({e}); build it with scripts/build.sh or pass --modules DIR", path.display()))?;
    let module = Module::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(LoadedModule { path: path.to_path_buf(), sha256: sha256_hex(&bytes), module })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn flag_wins_over_the_default() {
        assert_eq!(module_dir(Some("/m")), PathBuf::from("/m"));
    }

    #[test]
    fn a_missing_module_names_the_file_and_the_fix() {
        let mut m = Modules::new(PathBuf::from("/nonexistent-gatewarden-modules"));
        let err = m.get(Filter::IpGeo).err().unwrap_or_default();
        assert!(err.starts_with("/nonexistent-gatewarden-modules/gatewarden_ip_geo.wasm: cannot read"), "{err}");
        assert!(err.contains("scripts/build.sh"), "{err}");
    }
}
