//! `gatewarden counters --module PATH.wasm [--host-prefix none|envoy|envoy-native|kong] [--module-name NAME]`:
//! every metric a filter module defines, one name a line, sorted by name.
//!
//! The module runs in the wasmtime Proxy-Wasm host (as for `gatewarden test`): the VM starts and
//! one root context is created, which is when the glue defines its counters
//! (`proxy_define_metric`). The root is then configured with an empty configuration, which the
//! filter refuses; no policy is needed, and the refusal defines nothing more.
//!
//! `--host-prefix` prints the names as each host exposes them:
//! - `none`: the name the module defines (`gatewarden_ip_geo_allowed`);
//! - `envoy`: Envoy's stat name, `wasmcustom.<name>`;
//! - `envoy-native`: Envoy's stat name with the native module (`libgatewarden.so`), which defines
//!   the same counters as the `.wasm` of the filter: `dynamicmodulescustom.<name>`;
//! - `kong`: ngx_wasm_module's, `pw:<module name>:<name>` (docs/METRICS.md "Name Prefixing"),
//!   where the module name is that of nginx's `module <name> <path>` directive, and on Kong the
//!   file name without `.wasm` (the default here).

use clap::ValueEnum;
use gatewarden_wasm_host::{Host, Module, Profile, VmOptions};
use std::path::{Path, PathBuf};

use crate::error::{CliError, CmdResult};
use crate::hosts::nginx::check_module_name;

/// ngx_wasm_module's default `max_metric_name_length`: a longer prefixed name traps at definition.
pub const KONG_MAX_METRIC_NAME_LENGTH: usize = 256;

/// How a host names the metrics a module defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostPrefix {
    /// The names the module defines.
    None,
    /// Envoy: `wasmcustom.<name>`.
    Envoy,
    /// Envoy with the native module libgatewarden.so (the same counters): `dynamicmodulescustom.<name>`.
    EnvoyNative,
    /// Kong / ngx_wasm_module: `pw:<module name>:<name>`.
    Kong,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 printed (also when the module defines none), 2 the module could not be read or started.")]
pub struct Args {
    /// The filter module (.wasm).
    #[arg(long, value_name = "PATH.wasm")]
    pub module: PathBuf,
    /// Print the names as a host exposes them.
    #[arg(long, value_enum, default_value_t = HostPrefix::None)]
    pub host_prefix: HostPrefix,
    /// The module's name in nginx's `module <name> <path>` (Kong: the file name without .wasm);
    /// used by `--host-prefix kong`. Default: the file name without .wasm.
    #[arg(long, value_name = "NAME")]
    pub module_name: Option<String>,
}

/// The name `host` shows for metric `name` defined by module `module_name`.
pub fn exposed_name(prefix: HostPrefix, module_name: &str, name: &str) -> String {
    match prefix {
        HostPrefix::None => name.to_string(),
        HostPrefix::Envoy => format!("wasmcustom.{name}"),
        HostPrefix::EnvoyNative => format!("dynamicmodulescustom.{name}"),
        HostPrefix::Kong => format!("pw:{module_name}:{name}"),
    }
}

/// The module name nginx and Kong give `path` by default: the file name without `.wasm`.
pub fn default_module_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .map(|n| n.strip_suffix(".wasm").map(str::to_string).unwrap_or(n))
        .unwrap_or_default()
}

/// The metric names `module` defines when a VM starts and a root context is created, sorted.
/// Warnings (a trap while configuring) go to `warn`.
pub fn defined_metrics(path: &Path, profile: Profile, root_id: &str, warn: &mut dyn FnMut(String)) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read the module: {e}", path.display()))?;
    let module = Module::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let host = Host::new(profile);
    let mut vm = host
        .load_vm(&module, VmOptions::new(root_id).vm_id(root_id))
        .map_err(|e| format!("{}: the VM did not start: {e}", path.display()))?;
    // Creates the root context (the glue defines its counters there), then on_vm_start and
    // on_configure with an empty configuration, which a filter may refuse: that is fine here.
    if let Err(e) = vm.configure(b"") {
        warn(format!("{}: configuring with an empty configuration trapped: {e}", path.display()));
    }
    Ok(host.metrics().into_keys().collect())
}

/// `gatewarden counters`.
pub fn run(o: &Args) -> CmdResult {
    let module_name = o.module_name.clone().unwrap_or_else(|| default_module_name(&o.module));
    if o.host_prefix == HostPrefix::Kong {
        check_module_name(&module_name).map_err(|e| CliError::could_not_run(format!("gatewarden counters: --module-name: {e}")))?;
    }
    // The names a module defines do not depend on the host; the Envoy profile tolerates
    // callbacks a module does not export, which are not this command's business.
    let profile = Profile::Envoy;
    let root_id = if module_name.is_empty() { "gatewarden".to_string() } else { module_name.clone() };
    let mut warnings = Vec::new();
    let names = defined_metrics(&o.module, profile, &root_id, &mut |w| warnings.push(w))
        .map_err(|e| CliError::could_not_run(format!("gatewarden counters: {e}")))?;
    for w in &warnings {
        eprintln!("gatewarden counters: warning: {w}");
    }
    let mut out = String::new();
    for name in &names {
        let shown = exposed_name(o.host_prefix, &module_name, name);
        if o.host_prefix == HostPrefix::Kong && shown.len() > KONG_MAX_METRIC_NAME_LENGTH {
            eprintln!(
                "gatewarden counters: warning: {shown:?} is {} bytes: ngx_wasm_module traps defining it unless max_metric_name_length (default {KONG_MAX_METRIC_NAME_LENGTH}) is raised",
                shown.len()
            );
        }
        out.push_str(&shown);
        out.push('\n');
    }
    print!("{out}");
    if names.is_empty() {
        eprintln!("gatewarden counters: {} defines no metrics", o.module.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_prefixes() {
        assert_eq!(exposed_name(HostPrefix::None, "m", "gatewarden_jwt_allowed"), "gatewarden_jwt_allowed");
        assert_eq!(exposed_name(HostPrefix::Envoy, "m", "gatewarden_jwt_allowed"), "wasmcustom.gatewarden_jwt_allowed");
        assert_eq!(exposed_name(HostPrefix::EnvoyNative, "m", "gatewarden_jwt_allowed"), "dynamicmodulescustom.gatewarden_jwt_allowed");
        assert_eq!(exposed_name(HostPrefix::Kong, "gatewarden_jwt", "gatewarden_jwt_allowed"), "pw:gatewarden_jwt:gatewarden_jwt_allowed");
    }

    #[test]
    fn module_name_is_the_file_stem() {
        assert_eq!(default_module_name(Path::new("/x/gatewarden_ip_geo.wasm")), "gatewarden_ip_geo");
        assert_eq!(default_module_name(Path::new("filter")), "filter");
    }
}
