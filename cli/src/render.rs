//! `gatewarden render --target envoy|istio|kong|nginx|compose POLICY`: the plugin config for each
//! host, from one policy file. Every target first compiles the policy with the filter's own code
//! (and, with `--vm-config`, runs its signature check); kong and nginx also refuse callout targets
//! that are not `host:port`. A refused render writes nothing (exit 1; 2 when it could not run).
//!
//! - `envoy`: the ECDS resource Envoy watches — byte for byte what `scripts/ecds.py` writes for the
//!   same policy JSON (`gatewarden apply` writes it too).
//! - `istio`: a `WasmPlugin` with the module's sha256 (of the file; pass `--sha256` for an OCI
//!   image digest).
//! - `kong`: a `filter_chains` entry for Kong's declarative config, and `<module>.meta.json`
//!   (the JSON Schema Kong validates `config` with) when `--out DIR` is given.
//! - `nginx`: the ngx_wasm_module configuration for plain nginx/OpenResty (see `nginx.rs`).
//! - `compose`: a docker compose file running stock Envoy with this filter, like
//!   `deploy/compose/docker-compose.yaml`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::modules::{module_dir, sha256_hex};
use crate::nginx::{self, Refusal};
use crate::policy_file::{load, Filter, LoadedPolicy};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const EXTENSION_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Where the module is and how its VM is named, for the host configs.
#[derive(Debug, Clone)]
pub struct ModuleSettings {
    /// The module path as the proxy sees it.
    pub module: String,
    /// `vm_id` and `root_id`; default `gatewarden_<filter>`.
    pub vm_id: Option<String>,
    /// `vm_config.configuration`: the platform owner's trust settings of approvals, if any.
    pub vm_configuration: Option<String>,
}

impl ModuleSettings {
    /// `--module PATH`, else `<--modules DIR | $GATEWARDEN_WASM_DIR | target/wasm32-wasip1/release>/gatewarden_<filter>.wasm`.
    pub fn resolve(module: Option<&str>, modules: Option<&str>, filter: Filter) -> Self {
        let module = module
            .map(str::to_string)
            .unwrap_or_else(|| module_dir(modules).join(filter.module_file()).to_string_lossy().into_owned());
        ModuleSettings { module, vm_id: None, vm_configuration: None }
    }

    fn id(&self, filter: Filter) -> String {
        self.vm_id.clone().unwrap_or_else(|| filter.root_id())
    }
}

#[derive(Serialize)]
struct DiscoveryResponse<'a> {
    version_info: String,
    resources: [Extension<'a>; 1],
}

#[derive(Serialize)]
struct Extension<'a> {
    #[serde(rename = "@type")]
    kind: &'a str,
    name: String,
    typed_config: WasmFilter<'a>,
}

#[derive(Serialize)]
struct WasmFilter<'a> {
    #[serde(rename = "@type")]
    kind: &'a str,
    config: PluginConfig<'a>,
}

#[derive(Serialize)]
struct PluginConfig<'a> {
    name: String,
    root_id: String,
    vm_config: VmConfig<'a>,
    configuration: StringValue<'a>,
    failure_policy: &'a str,
}

#[derive(Serialize)]
struct VmConfig<'a> {
    vm_id: String,
    runtime: &'a str,
    code: Code<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    configuration: Option<StringValue<'a>>,
}

#[derive(Serialize)]
struct Code<'a> {
    local: Local<'a>,
}

#[derive(Serialize)]
struct Local<'a> {
    filename: &'a str,
}

#[derive(Serialize)]
struct StringValue<'a> {
    #[serde(rename = "@type")]
    kind: &'a str,
    value: &'a str,
}

/// The ECDS resource name; the HTTP filter in the bootstrap has the same name.
pub fn resource_name(filter: Filter) -> String {
    format!("gatewarden.{}", filter.name())
}

/// Python's `json.dumps(..., ensure_ascii=True)`: every non-ASCII character as `\uXXXX`
/// (surrogate pairs above the BMP). Only strings hold non-ASCII, so this is safe on JSON text.
fn ascii_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The ECDS file's text (a `DiscoveryResponse` holding one `TypedExtensionConfig`), exactly as
/// `scripts/ecds.py` renders `policy_json` (the compact JSON the filter receives).
pub fn ecds_resource(filter: Filter, policy_json: &str, policy_version: &str, settings: &ModuleSettings) -> String {
    let digest = sha256_hex(policy_json.as_bytes());
    let version = if policy_version.is_empty() { "raw" } else { policy_version };
    let id = settings.id(filter);
    let doc = DiscoveryResponse {
        version_info: format!("{version}-{}", digest.get(..12).unwrap_or(&digest)),
        resources: [Extension {
            kind: EXTENSION_TYPE,
            name: resource_name(filter),
            typed_config: WasmFilter {
                kind: WASM_TYPE,
                config: PluginConfig {
                    name: resource_name(filter),
                    root_id: id.clone(),
                    vm_config: VmConfig {
                        vm_id: id,
                        runtime: "envoy.wasm.runtime.v8",
                        code: Code { local: Local { filename: &settings.module } },
                        configuration: settings
                            .vm_configuration
                            .as_deref()
                            .map(|value| StringValue { kind: STRING_VALUE_TYPE, value }),
                    },
                    configuration: StringValue { kind: STRING_VALUE_TYPE, value: policy_json },
                    failure_policy: "FAIL_CLOSED",
                },
            },
        }],
    };
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    ascii_json(&text) + "\n"
}

fn to_yaml<T: Serialize>(value: &T) -> Result<String, String> {
    serde_norway::to_string(value).map_err(|e| e.to_string())
}

/// Istio `WasmPlugin` options.
pub struct IstioOptions {
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub namespace: String,
}

/// The Istio `WasmPlugin` (YAML). `module_sha256` is the module file's checksum.
pub fn istio(policy: &LoadedPolicy, settings: &ModuleSettings, o: &IstioOptions, module_sha256: &str) -> Result<String, String> {
    let filter = policy.filter;
    let config: serde_json::Value = serde_json::from_str(&policy.json).map_err(|e| e.to_string())?;
    let url = o.url.clone().unwrap_or_else(|| format!("https://wasm.example.internal/{}", filter.module_file()));
    let sha = o.sha256.clone().unwrap_or_else(|| module_sha256.to_string());
    let sha = sha.strip_prefix("sha256:").unwrap_or(&sha).to_string();
    let doc = serde_json::json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": { "name": format!("gatewarden-{}", filter.name().replace('_', "-")), "namespace": o.namespace },
        "spec": {
            "selector": { "matchLabels": { "istio": "ingressgateway" } },
            "url": url,
            "sha256": sha,
            "imagePullPolicy": "IfNotPresent",
            "pluginName": settings.id(filter),
            "phase": "AUTHN",
            "failStrategy": "FAIL_CLOSE",
            "pluginConfig": config,
        }
    });
    let head = format!(
        "# Gatewarden {} filter on an Istio ingress gateway, rendered by `gatewarden render --target istio`\n\
         # from policy_version {:?}. sha256 is the module file's checksum ({}); for an oci:// url pass\n\
         # --sha256 <image digest>. Callout targets (geo_database.cluster, remote_jwks.cluster) are Envoy\n\
         # cluster names: in Istio \"outbound|<port>||<host>\".\n",
        filter.name(),
        policy.policy_version,
        settings.module
    );
    Ok(head + &to_yaml(&doc)?)
}

/// Kong: the `filter_chains` entry (YAML) and the `meta.json` text.
pub fn kong(policy: &LoadedPolicy, service: Option<&str>) -> Result<(String, String), String> {
    let filter = policy.filter;
    let config: serde_json::Value = serde_json::from_str(&policy.json).map_err(|e| e.to_string())?;
    let mut chain = serde_json::json!({
        "name": format!("gatewarden-{}", filter.name().replace('_', "-")),
        "filters": [ { "name": filter.root_id(), "enabled": true, "config": config } ],
    });
    if let (Some(s), Some(map)) = (service, chain.as_object_mut()) {
        map.insert("service".into(), serde_json::Value::String(s.to_string()));
    }
    let doc = serde_json::json!({ "filter_chains": [chain] });
    let head = format!(
        "# Kong (ngx_wasm_module) filter chain for policy_version {:?}, rendered by `gatewarden render --target kong`.\n\
         # wasm_filters_path must hold {} and {}.meta.json. On Kong, callouts go to host:port.\n",
        policy.policy_version,
        filter.module_file(),
        filter.root_id()
    );
    let meta = gatewarden_policy::schema::kong_meta(filter.schema());
    let meta = serde_json::to_string_pretty(&meta).map_err(|e| e.to_string())? + "\n";
    Ok((head + &to_yaml(&doc)?, meta))
}

/// A docker compose file running stock Envoy with this filter (see deploy/compose/docker-compose.yaml).
/// `ecds_dir` is where `gatewarden apply` writes; paths are relative to the repository root.
pub fn compose(policy: &LoadedPolicy, ecds_dir: &str, modules_dir: &str) -> Result<String, String> {
    let filter = policy.filter;
    let mut services = serde_json::json!({
        "envoy": {
            "image": "envoyproxy/envoy:v1.40.0",
            "working_dir": "/gatewarden",
            "entrypoint": ["/bin/sh", "/gatewarden/deploy/compose/docker/entrypoint.sh"],
            "command": ["--concurrency", "2", "-l", "info", "--component-log-level", "wasm:info"],
            "environment": {
                "FILTER": filter.name(),
                "UPSTREAM_HOST": "upstream",
                "UPSTREAM_PORT": "8080",
                "GEO_DB_HOST": "geo-db",
                "GEO_DB_PORT": "80",
            },
            "volumes": [
                "./deploy/envoy/envoy.yaml:/gatewarden/deploy/envoy/envoy.yaml:ro",
                "./deploy/compose/docker/entrypoint.sh:/gatewarden/deploy/compose/docker/entrypoint.sh:ro",
                format!("./{}:/gatewarden/deploy/envoy/ecds:ro", ecds_dir.trim_start_matches("./")),
                format!("./{0}:/gatewarden/{0}:ro", modules_dir.trim_start_matches("./")),
            ],
            "ports": ["127.0.0.1:10000:10000", "127.0.0.1:9901:9901"],
            "depends_on": ["upstream", "geo-db"],
        },
        "upstream": {
            "image": "mendhak/http-https-echo:31",
            "environment": { "HTTP_PORT": "8080" },
        },
        "geo-db": {
            "image": "nginx:1.27-alpine",
            "volumes": ["./node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb:/usr/share/nginx/html/country.mmdb:ro"],
        },
    });
    if filter != Filter::IpGeo {
        if let Some(map) = services.as_object_mut() {
            map.remove("geo-db");
        }
        if let Some(envoy) = services.get_mut("envoy").and_then(|e| e.as_object_mut()) {
            envoy.insert("depends_on".into(), serde_json::json!(["upstream"]));
        }
    }
    let doc = serde_json::json!({ "name": "gatewarden", "services": services });
    let head = format!(
        "# Stock Envoy with the Gatewarden {0} filter, rendered by `gatewarden render --target compose`.\n\
         # Run from the repository root:\n\
         #   gatewarden apply POLICY --to {1} --module {2}/{3}\n\
         #   docker compose -f <this file> --project-directory . up\n\
         # Envoy watches {1}: every later `gatewarden apply` is live within milliseconds.\n",
        filter.name(),
        ecds_dir,
        modules_dir.trim_end_matches('/'),
        filter.module_file()
    );
    Ok(head + &to_yaml(&doc)?)
}

/// Writes `data` to `path` through a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The hosts `render` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Envoy's ECDS resource (what `apply` writes).
    Envoy,
    /// An Istio `WasmPlugin`.
    Istio,
    /// Kong's declarative `filter_chains` (+ meta.json with --out DIR).
    Kong,
    /// nginx + ngx_wasm_module: the `wasm{}` block and the `proxy_wasm` line.
    Nginx,
    /// A docker compose file running stock Envoy with this filter.
    Compose,
}

#[derive(Debug, Parser)]
#[command(name = "gatewarden render", about = "Render the plugin configuration of a policy for a host.")]
struct Args {
    /// The host to render for.
    #[arg(long, value_enum)]
    target: Target,
    /// The policy file (YAML or JSON).
    #[arg(value_name = "POLICY")]
    policy: String,
    /// The filter, when the policy has no `filter` field.
    #[arg(long, value_name = "NAME", value_parser = Filter::parse)]
    filter: Option<Filter>,
    /// The module file as the proxy sees it (default: <modules dir>/gatewarden_<filter>.wasm).
    #[arg(long, value_name = "PATH", conflicts_with = "modules")]
    module: Option<String>,
    /// The modules directory (default: $GATEWARDEN_WASM_DIR, else target/wasm32-wasip1/release).
    #[arg(long, value_name = "DIR")]
    modules: Option<String>,
    /// Envoy: vm_id and root_id; nginx: the module name (default gatewarden_<filter>).
    #[arg(long, value_name = "ID")]
    vm_id: Option<String>,
    /// The approval trust settings (VM configuration): the policy must pass the filter's
    /// signature check against them; envoy and nginx carry them.
    #[arg(long, value_name = "TRUST.json")]
    vm_config: Option<String>,
    /// Write here instead of stdout: a file (envoy, istio, compose) or a directory (kong, nginx).
    #[arg(long, value_name = "PATH")]
    out: Option<String>,
    /// Istio: the module URL.
    #[arg(long)]
    url: Option<String>,
    /// Istio: the module's sha256 (an OCI image digest; default: the module file's).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Istio: the namespace.
    #[arg(long, value_name = "NS", default_value = "istio-system")]
    namespace: String,
    /// Kong: the service the filter chain is attached to.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Compose: the ECDS directory Envoy watches.
    #[arg(long, value_name = "DIR", default_value = "deploy/envoy/ecds")]
    ecds_dir: String,
    /// nginx: size of the `gatewarden` shm_kv zone (fetched geo database / JWKS).
    #[arg(long, value_name = "SIZE", default_value = "64m", value_parser = parse_shm_size)]
    shm_size: String,
}

fn parse_shm_size(s: &str) -> Result<String, String> {
    nginx::check_size(s).map(|()| s.to_string())
}

/// Checks `policy` against the trust settings `text` (read from `label`) with the filter's own
/// signature check: what `on_vm_start` + `on_configure` would do with them.
pub fn check_trust(label: &str, text: &str, policy: &LoadedPolicy) -> Result<(), Refusal> {
    let trust = gatewarden_policy::approvals::TrustConfig::parse(text.as_bytes())
        .map_err(|e| Refusal { code: 2, message: format!("{label}: invalid trust settings: {e}") })?;
    trust
        .verify(policy.json.as_bytes())
        .map(|_| ())
        .map_err(|e| Refusal::invalid(format!("the filter would refuse it: {e}")))
}

fn refuse(file: &str, r: &Refusal) -> ExitCode {
    eprintln!("{file}: {}", r.message);
    eprintln!("gatewarden: render refused, nothing written");
    ExitCode::from(r.code)
}

/// `gatewarden render`.
pub fn main(args: &[String]) -> Result<ExitCode, String> {
    let o = match Args::try_parse_from(std::iter::once("gatewarden render".to_string()).chain(args.iter().cloned())) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)));
        }
    };
    let file = o.policy.clone();
    let policy = match load(&file, o.filter) {
        Ok(p) => p,
        Err(e) => {
            let code = if e.is_invalid() { 1 } else { 2 };
            return Ok(refuse(&file, &Refusal { code, message: e.to_string() }));
        }
    };
    let mut settings = ModuleSettings::resolve(o.module.as_deref(), o.modules.as_deref(), policy.filter);
    settings.vm_id = o.vm_id.clone();
    if let Some(path) = &o.vm_config {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return Ok(refuse(&file, &Refusal { code: 2, message: format!("{path}: cannot read: {e}") })),
        };
        if let Err(r) = check_trust(path, &text, &policy) {
            return Ok(refuse(&file, &r));
        }
        settings.vm_configuration = Some(text);
    }
    if matches!(o.target, Target::Kong | Target::Nginx) {
        if let Err(r) = nginx::check_kong_targets(&policy) {
            return Ok(refuse(&file, &r));
        }
    }
    if o.vm_config.is_some() && !matches!(o.target, Target::Envoy | Target::Nginx) {
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
    let text = match o.target {
        Target::Envoy => ecds_resource(policy.filter, &policy.json, &policy.policy_version, &settings),
        Target::Istio => {
            let sha = match &o.sha256 {
                Some(s) => s.clone(),
                None => {
                    let bytes = std::fs::read(&settings.module).map_err(|e| {
                        format!("{}: cannot read the module for its sha256 ({e}); pass --module or --sha256", settings.module)
                    })?;
                    sha256_hex(&bytes)
                }
            };
            let io = IstioOptions { url: o.url.clone(), sha256: None, namespace: o.namespace.clone() };
            istio(&policy, &settings, &io, &sha)?
        }
        Target::Kong => {
            let (chain, meta) = kong(&policy, o.service.as_deref())?;
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
            let config = match nginx::render(&policy, &no) {
                Ok(c) => c,
                Err(r) => return Ok(refuse(&file, &r)),
            };
            if let Some(dir) = &o.out {
                let (wasm_name, location_name) = nginx::out_files(&name);
                return write_files(dir, &[(&wasm_name, &config.wasm_block), (&location_name, &config.location)]);
            }
            nginx::stdout_text(&config)
        }
        Target::Compose => {
            let dir = o.modules.clone().unwrap_or_else(|| crate::modules::DEFAULT_DIR.to_string());
            compose(&policy, &o.ecds_dir, &dir)?
        }
    };
    match &o.out {
        Some(path) => {
            write_atomic(Path::new(path), text.as_bytes()).map_err(|e| format!("{path}: {e}"))?;
            println!("{path}");
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes each `(name, text)` into `dir` (created if needed) atomically and prints the paths.
fn write_files(dir: &str, files: &[(&str, &str)]) -> Result<ExitCode, String> {
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    println!("{}", written.join("\n"));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ModuleSettings {
        ModuleSettings { module: "target/wasm32-wasip1/release/gatewarden_ip_geo.wasm".into(), vm_id: None, vm_configuration: None }
    }

    #[test]
    fn ecds_resource_matches_the_shipped_file_of_ecds_py() {
        // deploy/envoy/ecds/ip_geo.json was written by scripts/ecds.py from deploy/policies/ip_geo.json.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let shipped = std::fs::read_to_string(root.join("deploy/envoy/ecds/ip_geo.json")).unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(&shipped).unwrap_or_default();
        let policy = doc["resources"][0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap_or("");
        assert!(!policy.is_empty());
        assert_eq!(ecds_resource(Filter::IpGeo, policy, "2026-11-23.1", &settings()), shipped);
    }

    #[test]
    fn non_ascii_is_escaped_like_python() {
        assert_eq!(ascii_json("\"é😀\""), "\"\\u00e9\\ud83d\\ude00\"");
    }

    #[test]
    fn vm_id_flag_names_root_and_vm() {
        let mut s = settings();
        s.vm_id = Some("shared_vm".into());
        let text = ecds_resource(Filter::IpGeo, "{}", "", &s);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let config = &v["resources"][0]["typed_config"]["config"];
        assert_eq!(config["root_id"], "shared_vm");
        assert_eq!(config["vm_config"]["vm_id"], "shared_vm");
        assert!(v["version_info"].as_str().unwrap_or("").starts_with("raw-"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("gw-atomic-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("x.json");
        write_atomic(&p, b"one").ok();
        write_atomic(&p, b"two").ok();
        assert_eq!(std::fs::read_to_string(&p).unwrap_or_default(), "two");
        assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
