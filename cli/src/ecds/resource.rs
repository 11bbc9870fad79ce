//! The ECDS resource Envoy watches for a filter: a `DiscoveryResponse` holding one
//! `TypedExtensionConfig` with the Wasm filter, its VM and the policy JSON. Byte for byte what
//! `scripts/ecds.py` writes for the same policy JSON (`render --target envoy` prints it, `apply`
//! writes it). Also reads back the trust settings a served resource carries.

use std::path::Path;

use serde::Serialize;

use crate::error::Refusal;
use crate::hosts::envoy_native::{self, ModuleSource};
use crate::modules::{module_dir, sha256_hex};
use crate::policy_file::{Filter, LoadedPolicy};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub(crate) const EXTENSION_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub(crate) const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Where the module is and how its VM is named, for the host configs.
#[derive(Debug, Clone)]
pub struct ModuleSettings {
    /// The module path as the proxy sees it.
    pub module: String,
    /// `vm_id` and `root_id`; default `gatewarden_<filter>`.
    pub vm_id: Option<String>,
    /// `vm_config.configuration`: the platform owner's trust settings of approvals, if any.
    pub vm_configuration: Option<String>,
    /// The native module instead of the Wasm filter (`--target envoy-native`): how Envoy finds
    /// `libgatewarden.so`. `module` and `vm_id` are then unused, and `vm_configuration` holds the
    /// trust settings written beside the resource for `GATEWARDEN_TRUST_FILE`.
    pub native: Option<ModuleSource>,
}

impl ModuleSettings {
    /// `--module PATH`, else `<--modules DIR | $GATEWARDEN_WASM_DIR | target/wasm32-wasip1/release>/gatewarden_<filter>.wasm`.
    pub fn resolve(module: Option<&str>, modules: Option<&str>, filter: Filter) -> Self {
        let module =
            module.map(str::to_string).unwrap_or_else(|| module_dir(modules).join(filter.module_file()).to_string_lossy().into_owned());
        ModuleSettings { module, vm_id: None, vm_configuration: None, native: None }
    }

    pub fn id(&self, filter: Filter) -> String {
        self.vm_id.clone().unwrap_or_else(|| filter.root_id())
    }

    /// The ECDS resource of `policy`: the Wasm filter's, or the native module's.
    pub fn resource(&self, policy: &LoadedPolicy) -> String {
        match &self.native {
            Some(source) => envoy_native::ecds_resource(policy.filter, &policy.json, &policy.policy_version, source),
            None => ecds_resource(policy.filter, &policy.json, &policy.policy_version, self),
        }
    }
}

/// The ECDS document: one `TypedExtensionConfig` whose `typed_config` is a filter's (the Wasm
/// filter's here, the native module's in `hosts::envoy_native`).
#[derive(Serialize)]
struct DiscoveryResponse<T> {
    version_info: String,
    resources: [Extension<T>; 1],
}

#[derive(Serialize)]
struct Extension<T> {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: String,
    typed_config: T,
}

/// The ECDS file's text for `filter` with `typed_config` (its filter configuration);
/// `version_info` is the policy version and the digest of `policy_json` (what it carries).
pub(crate) fn discovery_response<T: Serialize>(filter: Filter, policy_json: &str, policy_version: &str, typed_config: T) -> String {
    let digest = sha256_hex(policy_json.as_bytes());
    let version = if policy_version.is_empty() { "raw" } else { policy_version };
    let doc = DiscoveryResponse {
        version_info: format!("{version}-{}", digest.get(..12).unwrap_or(&digest)),
        resources: [Extension { kind: EXTENSION_TYPE, name: resource_name(filter), typed_config }],
    };
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    ascii_json(&text) + "\n"
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
pub(crate) struct Local<'a> {
    pub filename: &'a str,
}

#[derive(Serialize)]
pub(crate) struct StringValue<'a> {
    #[serde(rename = "@type")]
    pub kind: &'a str,
    pub value: &'a str,
}

/// The ECDS resource name; the HTTP filter in the bootstrap has the same name.
pub fn resource_name(filter: Filter) -> String {
    format!("gatewarden.{}", filter.name())
}

/// Python's `json.dumps(..., ensure_ascii=True)`: every non-ASCII character as `\uXXXX`
/// (surrogate pairs above the BMP). Only strings hold non-ASCII, so this is safe on JSON text.
pub(crate) fn ascii_json(text: &str) -> String {
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
    let id = settings.id(filter);
    let wasm = WasmFilter {
        kind: WASM_TYPE,
        config: PluginConfig {
            name: resource_name(filter),
            root_id: id.clone(),
            vm_config: VmConfig {
                vm_id: id,
                runtime: "envoy.wasm.runtime.v8",
                code: Code { local: Local { filename: &settings.module } },
                configuration: settings.vm_configuration.as_deref().map(|value| StringValue { kind: STRING_VALUE_TYPE, value }),
            },
            configuration: StringValue { kind: STRING_VALUE_TYPE, value: policy_json },
            failure_policy: "FAIL_CLOSED",
        },
    };
    discovery_response(filter, policy_json, policy_version, wasm)
}

/// The trust settings (`vm_config.configuration`) of the resource `dir` serves for `filter`, with
/// a label for messages; None when there is no resource or it has none.
pub fn serving_vm_config(dir: &Path, filter: Filter) -> Result<Option<(String, String)>, Refusal> {
    let path = dir.join(format!("{}.json", filter.name()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refusal::could_not_run(format!("{}: cannot read: {e}", path.display()))),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Refusal::could_not_run(format!("{}: not an ECDS resource: {e}", path.display())))?;
    let found = doc.pointer("/resources/0/typed_config/config/vm_config/configuration/value").and_then(|v| v.as_str());
    Ok(found.map(|v| (format!("{} (serving trust settings)", path.display()), v.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ModuleSettings {
        ModuleSettings {
            module: "target/wasm32-wasip1/release/gatewarden_ip_geo.wasm".into(),
            vm_id: None,
            vm_configuration: None,
            native: None,
        }
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
}
