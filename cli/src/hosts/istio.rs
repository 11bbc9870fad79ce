//! Istio: a `WasmPlugin` for the ingress gateway, with the module's sha256.

use super::to_yaml;
use crate::ecds::ModuleSettings;
use crate::error::CliError;
use crate::policy_file::{Filter, LoadedPolicy};

/// Where a filter runs among the gateway's plugins: `(phase, priority)`, as the shipped
/// deploy/istio files have it. Within a phase Istio runs plugins by descending priority: IP/geo
/// then JWT (AUTHN), then the rate limiter then validation (AUTHZ), so a request refused for its
/// network, its token or its rate never costs a quota unit or a body read.
pub fn phase(filter: Filter) -> (&'static str, u32) {
    match filter {
        Filter::IpGeo => ("AUTHN", 20),
        Filter::Jwt => ("AUTHN", 10),
        Filter::RateLimit => ("AUTHZ", 10),
        Filter::Validate => ("AUTHZ", 5),
    }
}

/// Istio `WasmPlugin` options.
pub struct IstioOptions {
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub namespace: String,
}

/// The Istio `WasmPlugin` (YAML). `module_sha256` is the module file's checksum.
pub fn istio(policy: &LoadedPolicy, settings: &ModuleSettings, o: &IstioOptions, module_sha256: &str) -> Result<String, CliError> {
    let filter = policy.filter;
    let (phase, priority) = phase(filter);
    let config: serde_json::Value = serde_json::from_str(&policy.json).map_err(|e| CliError::could_not_run(e.to_string()))?;
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
            "phase": phase,
            "priority": priority,
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
