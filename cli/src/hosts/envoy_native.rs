//! Envoy with the native module (`libgatewarden.so`, one shared object for the four filters): the
//! ECDS resource of a filter, `render --target envoy-native`. The same `DiscoveryResponse` as the
//! Wasm resource (`crate::ecds::resource`), with the same resource name and `version_info`, so the
//! bootstrap's filter slot `gatewarden.<filter>` and `gatewarden apply`'s directory layout stay the
//! same; only the typed config differs:
//!
//! ```text
//! typed_config: DynamicModuleFilter
//!   dynamic_module_config: { name: gatewarden, do_not_close: true }   # or module.local.filename
//!   filter_name: ip_geo | jwt | rate_limit | validate
//!   filter_config: StringValue { value: <the policy JSON, what the Wasm filter gets> }
//! ```
//!
//! Module settings, chosen against Envoy 1.40's `DynamicModuleConfig`:
//! - `name: gatewarden` by default: Envoy loads `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH/libgatewarden.so`,
//!   so one resource serves every install (the directory is the process's, like a library path).
//!   `--module PATH` (or `--modules DIR`: `DIR/libgatewarden.so`) writes `module.local.filename`
//!   instead, the file as Envoy sees it.
//! - `do_not_close: true`: the module keeps process-wide state (the rate limiter's key table shared
//!   by every worker, the trust settings read once at load); without it, Envoy `dlclose`s the module
//!   when the last configuration naming it goes (a filter removed, a listener drained) and a later
//!   one would start from empty buckets.
//! - `load_globally` left false (`RTLD_LOCAL`): the module exports only the ABI's entry points and
//!   loads no library that needs its symbols. `metrics_namespace` left unset: counters are
//!   `dynamicmodulescustom.gatewarden_<filter>_<outcome>`.
//!
//! Trust settings (approvals) are not part of a filter configuration natively: the module reads
//! the file named by `GATEWARDEN_TRUST_FILE` in Envoy's environment once, when Envoy loads it.

use std::path::Path;

use serde::Serialize;

use crate::ecds::resource::{discovery_response, Local, StringValue, STRING_VALUE_TYPE};
use crate::error::Refusal;
use crate::policy_file::Filter;
use crate::trust::check_trust;

const DYNAMIC_MODULE_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// The module's name: Envoy looks for `lib<name>.so` in `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const MODULE_NAME: &str = "gatewarden";
/// The module's file name.
pub const MODULE_FILE: &str = "libgatewarden.so";
/// The environment variable naming the trust settings file (read by the module at load).
pub const TRUST_FILE_ENV: &str = "GATEWARDEN_TRUST_FILE";
/// The file `render --out` and `apply` write the trust settings to, beside the resource.
pub const TRUST_FILE_NAME: &str = "gatewarden-trust.json";
/// The `--target` value, also recorded in the apply history.
pub const TARGET: &str = "envoy-native";

/// How Envoy finds the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// By name through `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    SearchPath,
    /// This file, as Envoy sees it.
    File(String),
}

impl ModuleSource {
    /// `--module PATH`, else `--modules DIR` (`DIR/libgatewarden.so`), else the search path. A
    /// `.wasm` file is refused: it is the other artifact.
    pub fn resolve(module: Option<&str>, modules: Option<&str>) -> Result<Self, String> {
        match (module, modules) {
            (Some(m), _) if m.ends_with(".wasm") => Err(format!(
                "--module {m:?}: --target envoy-native loads the native module {MODULE_FILE}, not a .wasm file (or leave --module out: \
                 Envoy then finds it in $ENVOY_DYNAMIC_MODULES_SEARCH_PATH)"
            )),
            (Some(m), _) => Ok(ModuleSource::File(m.to_string())),
            (None, Some(dir)) => Ok(ModuleSource::File(Path::new(dir).join(MODULE_FILE).to_string_lossy().into_owned())),
            (None, None) => Ok(ModuleSource::SearchPath),
        }
    }

    /// What an apply history entry's `module` records (`ecds::write`): the file, or empty for the
    /// search path.
    pub fn recorded(module: &str) -> Self {
        if module.is_empty() {
            ModuleSource::SearchPath
        } else {
            ModuleSource::File(module.to_string())
        }
    }
}

/// The trust settings an apply or rollback checks the policy against and writes beside the
/// resources: `--vm-config FILE` when given, else `DIR/gatewarden-trust.json` when there is one
/// (what an Envoy started as documented reads; an apply never drops approvals by omission).
pub fn approved_trust(flag: Option<&str>, dir: &Path, policy: &crate::policy_file::LoadedPolicy) -> Result<Option<String>, Refusal> {
    let beside = dir.join(TRUST_FILE_NAME);
    let (label, text) = match flag {
        Some(path) => (path.to_string(), read_trust(Path::new(path))?),
        None if beside.exists() => (format!("{} (the trust settings beside the resources)", beside.display()), read_trust(&beside)?),
        None => return Ok(None),
    };
    check_trust(&label, &text, policy)?;
    Ok(Some(text))
}

fn read_trust(path: &Path) -> Result<String, Refusal> {
    std::fs::read_to_string(path).map_err(|e| Refusal::could_not_run(format!("{}: cannot read: {e}", path.display())))
}

#[derive(Serialize)]
struct DynamicModuleFilter<'a> {
    #[serde(rename = "@type")]
    kind: &'a str,
    dynamic_module_config: DynamicModuleConfig<'a>,
    filter_name: &'a str,
    filter_config: StringValue<'a>,
}

#[derive(Serialize)]
struct DynamicModuleConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<AsyncDataSource<'a>>,
    do_not_close: bool,
}

#[derive(Serialize)]
struct AsyncDataSource<'a> {
    local: Local<'a>,
}

/// The ECDS file's text for `filter` on the native module: `policy_json` (the compact JSON the
/// filter receives) as the `filter_config` string; `version_info` as the Wasm resource has it.
pub fn ecds_resource(filter: Filter, policy_json: &str, policy_version: &str, source: &ModuleSource) -> String {
    let (name, module) = match source {
        ModuleSource::SearchPath => (Some(MODULE_NAME), None),
        ModuleSource::File(path) => (None, Some(AsyncDataSource { local: Local { filename: path } })),
    };
    let native = DynamicModuleFilter {
        kind: DYNAMIC_MODULE_FILTER_TYPE,
        dynamic_module_config: DynamicModuleConfig { name, module, do_not_close: true },
        filter_name: filter.name(),
        filter_config: StringValue { kind: STRING_VALUE_TYPE, value: policy_json },
    };
    discovery_response(filter, policy_json, policy_version, native)
}

/// What `render` says on stderr about the trust settings: where they are and how Envoy gets them.
/// `written` is the file render wrote them to (with `--out`), else the `--vm-config` file.
pub fn trust_note(trust_file: &Path, written: bool) -> String {
    let path = std::path::absolute(trust_file).unwrap_or_else(|_| trust_file.to_path_buf());
    format!(
        "gatewarden: note: the native module takes the trust settings from the file in {TRUST_FILE_ENV}, read once when Envoy loads \
         the module (a filter configuration cannot carry them){}: start Envoy with {TRUST_FILE_ENV}={}",
        if written { "; written beside the resource" } else { "" },
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_default()
    }

    #[test]
    fn resource_names_the_module_and_carries_the_policy_string() {
        let text = ecds_resource(Filter::RateLimit, r#"{"policy_version":"v1"}"#, "v1", &ModuleSource::SearchPath);
        let v = doc(&text);
        let r = &v["resources"][0];
        assert_eq!(r["name"], "gatewarden.rate_limit");
        assert_eq!(r["typed_config"]["@type"], DYNAMIC_MODULE_FILTER_TYPE);
        assert_eq!(r["typed_config"]["dynamic_module_config"], serde_json::json!({"name": "gatewarden", "do_not_close": true}));
        assert_eq!(r["typed_config"]["filter_name"], "rate_limit");
        assert_eq!(r["typed_config"]["filter_config"]["value"], r#"{"policy_version":"v1"}"#);
        assert!(v["version_info"].as_str().unwrap_or("").starts_with("v1-"), "{text}");
    }

    #[test]
    fn version_info_equals_the_wasm_resources() {
        let json = r#"{"policy_version":"2026-12-03.1"}"#;
        let settings = crate::ecds::ModuleSettings { module: "m.wasm".into(), vm_id: None, vm_configuration: None, native: None };
        let wasm = doc(&crate::ecds::ecds_resource(Filter::Jwt, json, "2026-12-03.1", &settings));
        let native = doc(&ecds_resource(Filter::Jwt, json, "2026-12-03.1", &ModuleSource::SearchPath));
        assert_eq!(native["version_info"], wasm["version_info"]);
        assert_eq!(native["resources"][0]["name"], wasm["resources"][0]["name"]);
    }

    #[test]
    fn module_file_replaces_the_name() {
        let text = ecds_resource(Filter::IpGeo, "{}", "", &ModuleSource::File("/opt/gw/libgatewarden.so".into()));
        let v = doc(&text);
        assert_eq!(
            v["resources"][0]["typed_config"]["dynamic_module_config"],
            serde_json::json!({"module": {"local": {"filename": "/opt/gw/libgatewarden.so"}}, "do_not_close": true})
        );
        assert!(v["version_info"].as_str().unwrap_or("").starts_with("raw-"));
    }

    #[test]
    fn module_flags_resolve_to_a_source() {
        assert_eq!(ModuleSource::resolve(None, None), Ok(ModuleSource::SearchPath));
        assert_eq!(ModuleSource::resolve(None, Some("/opt/gw")), Ok(ModuleSource::File("/opt/gw/libgatewarden.so".into())));
        assert_eq!(ModuleSource::resolve(Some("/x/libgatewarden.so"), None), Ok(ModuleSource::File("/x/libgatewarden.so".into())));
        let err = ModuleSource::resolve(Some("target/gatewarden_jwt.wasm"), None).err().unwrap_or_default();
        assert!(err.starts_with("--module \"target/gatewarden_jwt.wasm\": --target envoy-native loads"), "{err}");
    }

    #[test]
    fn non_ascii_policy_text_is_escaped_like_the_wasm_resource() {
        let text = ecds_resource(Filter::Jwt, r#"{"realm":"é"}"#, "", &ModuleSource::SearchPath);
        assert!(text.contains(r#"\"realm\":\"\u00e9\""#), "{text}");
    }
}
