//! `gatewarden render --target envoy|envoy-native|istio|kong|nginx|compose POLICY`: the plugin config for each
//! host, from one policy file. Every target first compiles the policy with the filter's own code
//! (and, with `--vm-config`, runs its signature check); kong and nginx also refuse callout targets
//! that are not `host:port`. A refused render writes nothing (exit 1; 2 when it could not run).
//!
//! - `envoy`: the ECDS resource Envoy watches (`ecds::resource`) — byte for byte what
//!   `scripts/ecds.py` writes for the same policy JSON (`gatewarden apply` writes it too).
//! - `envoy-native`: the same ECDS resource for the native module `libgatewarden.so`
//!   (`hosts::envoy_native`); with `--vm-config`, the trust settings go to a file for
//!   `GATEWARDEN_TRUST_FILE` (beside the resource with `--out`), since no filter config carries them.
//! - `istio`: a `WasmPlugin` with the module's sha256 (`hosts::istio`).
//! - `kong`: a `filter_chains` entry and, with `--out DIR`, `<module>.meta.json` (`hosts::kong`).
//! - `nginx`: the ngx_wasm_module configuration for plain nginx/OpenResty (`hosts::nginx`).
//! - `compose`: a docker compose file running stock Envoy with this filter (`hosts::compose`).

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::atomic::write_atomic;
use crate::cli::{FilterArg, ModuleArgs};
use crate::ecds::{ecds_resource, ModuleSettings};
use crate::error::{CliError, CmdResult, Refusal};
use crate::hosts::envoy_native::{self, ModuleSource};
use crate::hosts::{compose, istio, kong, nginx};
use crate::modules::sha256_hex;
use crate::policy_file::{load, LoadedPolicy};
use crate::trust::check_trust;

/// The hosts `render` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Envoy's ECDS resource (what `apply` writes).
    Envoy,
    /// Envoy's ECDS resource for the native module libgatewarden.so (a dynamic module, no Wasm VM).
    EnvoyNative,
    /// An Istio `WasmPlugin`.
    Istio,
    /// Kong's declarative `filter_chains` (+ meta.json with --out DIR).
    Kong,
    /// nginx + ngx_wasm_module: the `wasm{}` block and the `proxy_wasm` line.
    Nginx,
    /// A docker compose file running stock Envoy with this filter.
    Compose,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 rendered, 1 refused (invalid policy, missing approvals, a callout target \
                        Kong/nginx cannot reach, too long for nginx), 2 could not run. A refused render writes nothing.")]
pub struct Args {
    /// The host to render for.
    #[arg(long, value_enum)]
    pub target: Target,
    /// The policy file (YAML or JSON).
    #[arg(value_name = "POLICY")]
    pub policy: String,
    #[command(flatten)]
    pub filter: FilterArg,
    #[command(flatten)]
    pub module: ModuleArgs,
    /// Write here instead of stdout: a file (envoy, envoy-native, istio, compose) or a directory (kong, nginx).
    #[arg(long, value_name = "PATH")]
    pub out: Option<String>,
    /// Istio: the module URL.
    #[arg(long)]
    pub url: Option<String>,
    /// Istio: the module's sha256 (an OCI image digest; default: the module file's).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Istio: the namespace.
    #[arg(long, value_name = "NS", default_value = "istio-system")]
    pub namespace: String,
    /// Kong: the service the filter chain is attached to.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Compose: the ECDS directory Envoy watches.
    #[arg(long, value_name = "DIR", default_value = "deploy/envoy/ecds")]
    pub ecds_dir: String,
    /// nginx: size of the `gatewarden` shm_kv zone (fetched geo database / JWKS).
    #[arg(long, value_name = "SIZE", default_value = "64m", value_parser = parse_shm_size)]
    pub shm_size: String,
}

fn parse_shm_size(s: &str) -> Result<String, String> {
    nginx::check_size(s).map(|()| s.to_string())
}

const REFUSED: &str = "gatewarden: render refused, nothing written";

/// `gatewarden render`.
pub fn run(o: &Args) -> CmdResult {
    let file = o.policy.as_str();
    let policy = load(file, o.filter.filter).map_err(|e| CliError::load(file, &e).then_line(REFUSED))?;
    let refused = |r: Refusal| r.about(file, REFUSED);
    let mut settings = ModuleSettings::resolve(o.module.module.as_deref(), o.module.modules.as_deref(), policy.filter);
    settings.vm_id = o.module.vm_id.clone();
    if let Some(path) = &o.module.vm_config {
        let text = std::fs::read_to_string(path).map_err(|e| refused(Refusal::could_not_run(format!("{path}: cannot read: {e}"))))?;
        check_trust(path, &text, &policy).map_err(refused)?;
        settings.vm_configuration = Some(text);
    }
    if matches!(o.target, Target::Kong | Target::Nginx) {
        nginx::check_kong_targets(&policy).map_err(refused)?;
    }
    if o.module.vm_config.is_some() && !matches!(o.target, Target::Envoy | Target::EnvoyNative | Target::Nginx) {
        eprintln!(
            "gatewarden: warning: --vm-config: the {} output has no place for the VM configuration, so it does not carry \
             the trust settings; the policy's signatures were checked here only",
            match o.target {
                Target::Kong => "Kong filter_chains",
                Target::Istio => "Istio WasmPlugin",
                _ => "compose",
            }
        );
    }
    if matches!(o.target, Target::Envoy | Target::EnvoyNative | Target::Istio | Target::Compose) {
        if let Some(w) = crate::hosts::body::envoy_warning(&policy) {
            eprintln!("{w}");
        }
    }
    let text = match o.target {
        Target::Envoy => ecds_resource(policy.filter, &policy.json, &policy.policy_version, &settings),
        Target::EnvoyNative => return render_native(o, &policy, settings.vm_configuration.as_deref()),
        Target::Istio => {
            let sha = match &o.sha256 {
                Some(s) => s.clone(),
                None => {
                    let bytes = std::fs::read(&settings.module).map_err(|e| {
                        CliError::could_not_run(format!(
                            "gatewarden: {}: cannot read the module for its sha256 ({e}); pass --module or --sha256",
                            settings.module
                        ))
                    })?;
                    sha256_hex(&bytes)
                }
            };
            let io = istio::IstioOptions { url: o.url.clone(), sha256: None, namespace: o.namespace.clone() };
            istio::istio(&policy, &settings, &io, &sha)?
        }
        Target::Kong => {
            let (chain, meta) = kong::kong(&policy, o.service.as_deref())?;
            if let Some(dir) = &o.out {
                let meta_name = format!("{}.meta.json", policy.filter.root_id());
                return write_files(dir, &[("filter_chains.yaml", &chain), (&meta_name, &meta)]);
            }
            chain
        }
        Target::Nginx => {
            let name = settings.id(policy.filter);
            let no = nginx::NginxOptions {
                name: &name,
                module: &settings.module,
                vm_configuration: settings.vm_configuration.as_deref(),
                shm_size: &o.shm_size,
            };
            let config = nginx::render(&policy, &no).map_err(refused)?;
            if let Some(dir) = &o.out {
                let (wasm_name, location_name) = nginx::out_files(&name);
                return write_files(dir, &[(&wasm_name, &config.wasm_block), (&location_name, &config.location)]);
            }
            nginx::stdout_text(&config)
        }
        Target::Compose => {
            let dir = o.module.modules.clone().unwrap_or_else(|| crate::modules::DEFAULT_DIR.to_string());
            compose::compose(&policy, &o.ecds_dir, &dir)?
        }
    };
    match &o.out {
        Some(path) => {
            write_atomic(Path::new(path), text.as_bytes()).map_err(|e| CliError::could_not_run(format!("gatewarden: {path}: {e}")))?;
            println!("{path}");
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `--target envoy-native`: the resource (stdout or `--out FILE`) and, with `--vm-config`, the trust
/// settings in `gatewarden-trust.json` beside `--out FILE` (stdout: the `--vm-config` file itself),
/// each with a note on stderr saying how Envoy gets them.
fn render_native(o: &Args, policy: &LoadedPolicy, trust: Option<&str>) -> CmdResult {
    let source = ModuleSource::resolve(o.module.module.as_deref(), o.module.modules.as_deref())
        .map_err(|e| CliError::usage("render", e).then_line(REFUSED))?;
    if let Some(id) = &o.module.vm_id {
        eprintln!("gatewarden: warning: --vm-id {id:?}: the native module runs without a VM; ignored");
    }
    let text = envoy_native::ecds_resource(policy.filter, &policy.json, &policy.policy_version, &source);
    let Some(out) = &o.out else {
        print!("{text}");
        if let (Some(path), Some(_)) = (&o.module.vm_config, trust) {
            eprintln!("{}", envoy_native::trust_note(Path::new(path), false));
        }
        return Ok(());
    };
    let out = Path::new(out);
    let cannot = |p: &Path, e: std::io::Error| CliError::could_not_run(format!("gatewarden: {}: {e}", p.display()));
    let mut written = vec![out.display().to_string()];
    if let Some(trust) = trust {
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let trust_path = dir.join(envoy_native::TRUST_FILE_NAME);
        if std::fs::read(&trust_path).is_ok_and(|old| old != trust.as_bytes()) {
            eprintln!(
                "gatewarden: warning: {}: the trust settings changed; a running Envoy keeps the ones it loaded until it restarts",
                trust_path.display()
            );
        }
        // The trust settings first: a resource that needs them never waits in the watched directory for them.
        write_atomic(&trust_path, trust.as_bytes()).map_err(|e| cannot(&trust_path, e))?;
        eprintln!("{}", envoy_native::trust_note(&trust_path, true));
        written.push(trust_path.display().to_string());
    }
    write_atomic(out, text.as_bytes()).map_err(|e| cannot(out, e))?;
    println!("{}", written.join("\n"));
    Ok(())
}

/// Writes each `(name, text)` into `dir` (created if needed) atomically and prints the paths.
fn write_files(dir: &str, files: &[(&str, &str)]) -> CmdResult {
    let dir = PathBuf::from(dir);
    let cannot = |p: &Path, e: std::io::Error| CliError::could_not_run(format!("gatewarden: {}: {e}", p.display()));
    std::fs::create_dir_all(&dir).map_err(|e| cannot(&dir, e))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes()).map_err(|e| cannot(&path, e))?;
        written.push(path.display().to_string());
    }
    println!("{}", written.join("\n"));
    Ok(())
}
