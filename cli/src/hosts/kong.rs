//! Kong: a `filter_chains` entry for Kong's declarative config, and `<module>.meta.json` (the JSON
//! Schema Kong validates `config` with).

use super::to_yaml;
use crate::error::CliError;
use crate::policy_file::LoadedPolicy;

/// Kong: the `filter_chains` entry (YAML) and the `meta.json` text.
pub fn kong(policy: &LoadedPolicy, service: Option<&str>) -> Result<(String, String), CliError> {
    let filter = policy.filter;
    let config: serde_json::Value = serde_json::from_str(&policy.json).map_err(|e| CliError::could_not_run(e.to_string()))?;
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
         # wasm_filters_path must hold {} and {}.meta.json. On Kong, callouts go to host:port.\n\
         {}",
        policy.policy_version,
        filter.module_file(),
        filter.root_id(),
        super::body::kong_note(policy),
    );
    let meta = gatewarden_policy::schema::kong_meta(filter.schema());
    let meta = serde_json::to_string_pretty(&meta).map_err(|e| CliError::could_not_run(e.to_string()))? + "\n";
    Ok((head + &to_yaml(&doc)?, meta))
}
