//! `gatewarden render --target envoy|istio|kong|compose POLICY`: the plugin config for each host,
//! from one policy file.
//!
//! - `envoy`: the ECDS resource Envoy watches — byte for byte what `scripts/ecds.py` writes for the
//!   same policy JSON (`gatewarden apply` writes it too).
//! - `istio`: a `WasmPlugin` with the module's sha256 (of the file; pass `--sha256` for an OCI
//!   image digest).
//! - `kong`: a `filter_chains` entry for Kong's declarative config, and `<module>.meta.json`
//!   (the JSON Schema Kong validates `config` with) when `--out DIR` is given.
//! - `compose`: a docker compose file running stock Envoy with this filter, like
//!   `envoy-config/docker-compose.yaml`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::modules::{module_dir, sha256_hex};
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

/// A docker compose file running stock Envoy with this filter (see envoy-config/docker-compose.yaml).
/// `ecds_dir` is where `gatewarden apply` writes; paths are relative to the repository root.
pub fn compose(policy: &LoadedPolicy, ecds_dir: &str, modules_dir: &str) -> Result<String, String> {
    let filter = policy.filter;
    let mut services = serde_json::json!({
        "envoy": {
            "image": "envoyproxy/envoy:v1.40.0",
            "working_dir": "/gatewarden",
            "entrypoint": ["/bin/sh", "/gatewarden/envoy-config/docker/entrypoint.sh"],
            "command": ["--concurrency", "2", "-l", "info", "--component-log-level", "wasm:info"],
            "environment": {
                "FILTER": filter.name(),
                "UPSTREAM_HOST": "upstream",
                "UPSTREAM_PORT": "8080",
                "GEO_DB_HOST": "geo-db",
                "GEO_DB_PORT": "80",
            },
            "volumes": [
                "./envoy-config/envoy.yaml:/gatewarden/envoy-config/envoy.yaml:ro",
                "./envoy-config/docker/entrypoint.sh:/gatewarden/envoy-config/docker/entrypoint.sh:ro",
                format!("./{}:/gatewarden/envoy-config/ecds:ro", ecds_dir.trim_start_matches("./")),
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

struct Options {
    target: Option<String>,
    policy: Option<String>,
    filter: Option<Filter>,
    module: Option<String>,
    modules: Option<String>,
    vm_id: Option<String>,
    out: Option<String>,
    url: Option<String>,
    sha256: Option<String>,
    namespace: String,
    service: Option<String>,
    ecds_dir: String,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        target: None,
        policy: None,
        filter: None,
        module: None,
        modules: None,
        vm_id: None,
        out: None,
        url: None,
        sha256: None,
        namespace: "istio-system".into(),
        service: None,
        ecds_dir: "envoy-config/ecds".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--target" => o.target = Some(value()?),
            "--filter" => {
                let name = value()?;
                o.filter = Some(Filter::parse(&name)?);
            }
            "--module" => o.module = Some(value()?),
            "--modules" => o.modules = Some(value()?),
            "--vm-id" => o.vm_id = Some(value()?),
            "--out" => o.out = Some(value()?),
            "--url" => o.url = Some(value()?),
            "--sha256" => o.sha256 = Some(value()?),
            "--namespace" => o.namespace = value()?,
            "--service" => o.service = Some(value()?),
            "--ecds-dir" => o.ecds_dir = value()?,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ if o.policy.is_none() => o.policy = Some(a.clone()),
            _ => return Err("render takes one policy file".into()),
        }
    }
    Ok(o)
}

/// `gatewarden render`.
pub fn main(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_args(args)?;
    let target = o.target.clone().ok_or("render needs --target envoy|istio|kong|compose")?;
    let file = o.policy.clone().ok_or("render needs a policy file")?;
    let policy = match load(&file, o.filter) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{file}: {e}");
            return Ok(ExitCode::from(if e.is_invalid() { 1 } else { 2 }));
        }
    };
    let mut settings = ModuleSettings::resolve(o.module.as_deref(), o.modules.as_deref(), policy.filter);
    settings.vm_id = o.vm_id.clone();
    let text = match target.as_str() {
        "envoy" => ecds_resource(policy.filter, &policy.json, &policy.policy_version, &settings),
        "istio" => {
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
        "kong" => {
            let (chain, meta) = kong(&policy, o.service.as_deref())?;
            if let Some(dir) = &o.out {
                let dir = PathBuf::from(dir);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let meta_path = dir.join(format!("{}.meta.json", policy.filter.root_id()));
                let chain_path = dir.join("filter_chains.yaml");
                write_atomic(&meta_path, meta.as_bytes()).map_err(|e| format!("{}: {e}", meta_path.display()))?;
                write_atomic(&chain_path, chain.as_bytes()).map_err(|e| format!("{}: {e}", chain_path.display()))?;
                println!("{}\n{}", chain_path.display(), meta_path.display());
                return Ok(ExitCode::SUCCESS);
            }
            chain
        }
        "compose" => {
            let dir = o.modules.clone().unwrap_or_else(|| crate::modules::DEFAULT_DIR.to_string());
            compose(&policy, &o.ecds_dir, &dir)?
        }
        other => return Err(format!("unknown target {other:?}: envoy, istio, kong or compose")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ModuleSettings {
        ModuleSettings { module: "target/wasm32-wasip1/release/gatewarden_ip_geo.wasm".into(), vm_id: None, vm_configuration: None }
    }

    #[test]
    fn ecds_resource_matches_the_shipped_file_of_ecds_py() {
        // envoy-config/ecds/ip_geo.json was written by scripts/ecds.py from envoy-config/policies/ip_geo.json.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let shipped = std::fs::read_to_string(root.join("envoy-config/ecds/ip_geo.json")).unwrap_or_default();
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
