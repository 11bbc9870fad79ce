//! A docker compose file running stock Envoy with one filter, like
//! `deploy/compose/docker-compose.yaml`.

use super::to_yaml;
use crate::error::CliError;
use crate::policy_file::{Filter, LoadedPolicy};

/// `ecds_dir` is where `gatewarden apply` writes; paths are relative to the repository root.
pub fn compose(policy: &LoadedPolicy, ecds_dir: &str, modules_dir: &str) -> Result<String, CliError> {
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
