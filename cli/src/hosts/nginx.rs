//! `gatewarden render --target nginx`: the ngx_wasm_module configuration (the Proxy-Wasm engine
//! inside Kong) for users who run the module on plain nginx or OpenResty, and the checks every
//! policy rendered for Kong or nginx passes first.
//!
//! Two parts: a `wasm{}` block for nginx.conf's main context (the `module` line, whose optional
//! third argument is the VM configuration: the approval trust settings; the `shm_kv` zones), and
//! the `proxy_wasm <module> '<policy JSON>';` line for each protected `location{}`, under a note that
//! the location's `proxy_pass` needs a URI part ([`PROXY_PASS_NOTE`]).
//!
//! nginx.conf quoting: inside a single-quoted parameter nginx's parser turns `\'`, `\"` and `\\`
//! into the character and `\t`, `\r`, `\n` into control characters; every other byte is kept.
//! So the JSON is written with each `\` doubled and each `'` escaped: the filter receives the
//! JSON text byte for byte (a JSON escape such as `\n` in a string stays two characters).
//! nginx refuses a parameter longer than [`NGINX_MAX_PARAMETER`] bytes (as written, between the
//! quotes): measured on nginx 1.27.4 (`too long parameter, probably missing terminating "'"
//! character`), whatever the parameter's place in the file.

use std::path::Path;

use gatewarden_policy::error::quote;

use crate::error::Refusal;
use crate::policy_file::LoadedPolicy;

/// The longest parameter nginx's configuration parser accepts, as written between the quotes.
pub const NGINX_MAX_PARAMETER: usize = 4094;

/// ngx_wasm_module's rule for a module name (`module <name> <path>`): not empty, no space, tab
/// or colon. We also keep out what would need quoting in nginx.conf.
pub fn check_module_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("module name: empty".into());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        Some(c) => Err(format!(
            "module name {name:?}: character {c:?} not allowed (ngx_wasm_module refuses spaces, tabs and colons; use letters, digits, '_', '-', '.')"
        )),
        None => Ok(()),
    }
}

/// `text` as one single-quoted nginx.conf parameter (see the module docs).
pub fn nginx_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// [`nginx_quote`], refused when nginx would not read it back (too long, or a raw newline,
/// which compact JSON never has). `what` names the value in the message.
fn quoted_parameter(text: &str, what: &str) -> Result<String, Refusal> {
    let quoted = nginx_quote(text);
    let inner = quoted.len().saturating_sub(2);
    if inner > NGINX_MAX_PARAMETER {
        return Err(Refusal::invalid(format!(
            "{what} is {inner} bytes as an nginx.conf parameter; nginx refuses a parameter longer than {NGINX_MAX_PARAMETER} bytes \
             (\"too long parameter\"): make it smaller (e.g. remote_jwks instead of a large local_jwks)"
        )));
    }
    Ok(quoted)
}

/// Every callout target of a policy document: `(field path, value)` of each `cluster` of a
/// `geo_database` (IP/geo), a `remote_jwks` (JWT) or an `openapi.source` (validation), wherever
/// it is (rollout candidates too).
pub fn callout_targets(doc: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    let remote_source = matches!(k.as_str(), "geo_database" | "remote_jwks")
                        || (k == "source" && (path == "openapi" || path.ends_with(".openapi")));
                    if remote_source {
                        if let Some(c) = child.get("cluster").and_then(|c| c.as_str()) {
                            out.push((format!("{p}.cluster"), c.to_string()));
                        }
                    }
                    walk(child, &p, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out);
    out
}

/// Whether ngx_wasm_module can connect to `target` as written: `host:port` (an IP, `[IPv6]`, or
/// a name nginx resolves), or `unix:/path`. The module would take a bare name as port 80, but a
/// bare name in a policy is an Envoy cluster name far more often than a web server: we ask for
/// the port to be written.
pub fn is_kong_target(target: &str) -> bool {
    if let Some(path) = target.strip_prefix("unix:") {
        return path.starts_with('/');
    }
    let Some((host, port)) = target.rsplit_once(':') else { return false };
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    port_ok && host_ok
}

/// Refuses a policy whose callout targets cannot be `host:port` (Kong and nginx connect to
/// `host:port`; Envoy to a cluster name). The message names the field and quotes the value.
pub fn check_kong_targets(policy: &LoadedPolicy) -> Result<(), Refusal> {
    let doc: serde_json::Value = serde_json::from_str(&policy.json).map_err(|e| Refusal::could_not_run(format!("policy JSON: {e}")))?;
    for (path, target) in callout_targets(&doc) {
        if !is_kong_target(&target) {
            return Err(Refusal::invalid(format!(
                "{path}: {} is not host:port: on Kong and nginx (ngx_wasm_module) a callout goes to host:port \
                 (an IP, or a name nginx resolves: resolver_add <ip> <name>; in http{{}}), not to an Envoy cluster; \
                 write e.g. \"127.0.0.1:8080\"",
                quote(&target)
            )));
        }
    }
    Ok(())
}

/// The host names (not IPs) among a policy's callout targets, with their field paths: each needs
/// `resolver_add` (or a `resolver`) on nginx.
fn named_targets(policy: &LoadedPolicy) -> Vec<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(&policy.json).unwrap_or_default();
    callout_targets(&doc)
        .into_iter()
        .filter_map(|(path, target)| {
            let (host, _) = target.rsplit_once(':')?;
            if target.starts_with("unix:") || host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
                None
            } else {
                Some((path, host.to_string()))
            }
        })
        .collect()
}

/// The comment above the `proxy_wasm` line on how to write the location's `proxy_pass`. The
/// filter judges nginx's normalised URI (`/admin/../pub` is /pub); `proxy_pass` without a URI part
/// forwards the URI as the client sent it, so an upstream that routes on the raw path would serve
/// what the filter did not judge. With a URI part nginx forwards its normalised URI (the part that
/// matched the location replaced by the URI part, the query string appended as sent); the
/// location's own path as URI part keeps the path unchanged. Pinned on the engine by
/// cli/tests/render_kong_nginx.rs and scripts/e2e/test_claims.py.
pub const PROXY_PASS_NOTE: &str = "\
# The filter judges nginx's normalised URI (/admin/../pub is /pub). Give the proxy_pass of each\n\
# location it covers a URI part, the location's own path, so the upstream receives that same URI:\n\
#     location /api/ { include <this file>; proxy_pass http://backend/api/; }\n\
# (location / takes `proxy_pass http://backend/;`). Without a URI part nginx forwards the URI as\n\
# the client sent it (/admin/../pub), which an upstream routing on the raw path takes for /admin.\n\
# A regex or named location cannot take a URI part: keep the filter in a prefix or exact location.\n";

/// What `render --target nginx` needs beyond the policy.
pub struct NginxOptions<'a> {
    /// The module name (`module <name> <path>`, `proxy_wasm <name>`).
    pub name: &'a str,
    /// The module file; made absolute (nginx opens it from its own working directory).
    pub module: &'a str,
    /// The VM configuration (trust settings JSON), if any.
    pub vm_configuration: Option<&'a str>,
    /// Size of the `gatewarden` shm_kv zone (`64m`).
    pub shm_size: &'a str,
}

/// The two parts of the nginx configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    /// The `wasm{}` block, for the main context.
    pub wasm_block: String,
    /// The `proxy_wasm` line (with comments), for a `location{}`.
    pub location: String,
}

/// An nginx size (`64m`, `512k`, `1g`, bytes): digits and an optional unit.
pub fn check_size(size: &str) -> Result<(), String> {
    let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    let unit_len = size.len() - digits.len();
    if digits.is_empty() || unit_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("--shm-size: {size:?} is not an nginx size like \"64m\""));
    }
    Ok(())
}

fn absolute(path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        return path.to_string();
    }
    match std::env::current_dir() {
        Ok(dir) => dir.join(p).to_string_lossy().into_owned(),
        Err(_) => path.to_string(),
    }
}

/// Renders the nginx configuration of `policy`; refuses what nginx or ngx_wasm_module would not
/// take (callout targets that are not host:port, parameters too long for nginx).
pub fn render(policy: &LoadedPolicy, o: &NginxOptions<'_>) -> Result<NginxConfig, Refusal> {
    check_module_name(o.name).map_err(|e| Refusal::could_not_run(format!("--vm-id: {e}")))?;
    check_kong_targets(policy)?;
    let filter = policy.filter;
    let policy_arg = quoted_parameter(&policy.json, "the policy JSON").map_err(|mut r| {
        if filter == crate::policy_file::Filter::Validate {
            r.message.push_str("; a validation policy can fetch its OpenAPI document instead (openapi.source)");
        }
        r
    })?;
    let module_path = absolute(o.module);
    let mut module_line = format!("    module {} {}", o.name, nginx_quote(&module_path));
    if let Some(vm) = o.vm_configuration {
        let compact = match serde_json::from_str::<serde_json::Value>(vm) {
            Ok(v) => serde_json::to_string(&v).unwrap_or_else(|_| vm.trim().to_string()),
            Err(_) => vm.trim().to_string(),
        };
        module_line.push(' ');
        module_line.push_str(&quoted_parameter(&compact, "the VM configuration (trust settings)")?);
    }
    module_line.push(';');
    let trust_note = if o.vm_configuration.is_some() {
        "# The third argument of `module` is the VM configuration the filter reads in on_vm_start:\n\
         # the approval trust settings. Every proxy_wasm of this module needs signed policies.\n"
    } else {
        ""
    };
    let mut wasm_block = format!(
        "# Gatewarden {} filter on nginx + ngx_wasm_module (Kong's Proxy-Wasm engine), rendered by\n\
         # `gatewarden render --target nginx` from policy_version {}.\n\
         # Main context of nginx.conf (beside http{{}}). nginx takes one wasm{{}} block: with several\n\
         # filters, put each `module` line in the same block and declare each shm_kv zone once.\n\
         # Set worker_processes explicitly: without it, ngx_wasm_module (3bed278) crashes at start.\n",
        filter.name(),
        quote(&policy.policy_version),
    );
    wasm_block.push_str(trust_note);
    wasm_block.push_str("wasm {\n");
    wasm_block.push_str(&module_line);
    wasm_block.push_str("\n    # shared data of keys without a zone prefix (gatewarden's keys all have one)\n    shm_kv * 1m;\n");
    wasm_block.push_str(
        "    # gatewarden/... keys, shared by all workers: the fetched geo database or JWKS and the\n    \
         # fetch leases, the rate limiter's key table (max_keys x ~101 bytes); at least the size of\n    \
         # the largest database the policy may fetch\n",
    );
    wasm_block.push_str(&format!("    shm_kv gatewarden {};\n}}\n", o.shm_size));
    let mut resolver = String::new();
    for (path, host) in named_targets(policy) {
        resolver.push_str(&format!(
            "# {path} names host {}: nginx must resolve it, e.g. `resolver_add <ip> {host};` in http{{}}\n\
             # (or a `resolver` in wasm{{}}).\n",
            quote(&host)
        ));
    }
    let location = format!(
        "# Gatewarden {} policy {} for a location{{}} (or server{{}}, http{{}}): the plugin\n\
         # configuration, passed to on_configure. Callouts (geo database, JWKS) go to host:port over\n\
         # HTTP/1.1. To change the policy, render again and `nginx -s reload`; render refuses a policy\n\
         # the filter would refuse, which on this engine would stop the new workers.\n\
         {PROXY_PASS_NOTE}\
         {resolver}\
         {body}\
         proxy_wasm {} {policy_arg};\n",
        filter.name(),
        quote(&policy.policy_version),
        o.name,
        body = super::body::nginx_directives(policy),
    );
    Ok(NginxConfig { wasm_block, location })
}

/// The file names `render --target nginx --out DIR` writes: `<name>.wasm.conf` (main context)
/// and `<name>.location.conf` (inside a location).
pub fn out_files(name: &str) -> (String, String) {
    (format!("{name}.wasm.conf"), format!("{name}.location.conf"))
}

/// The text printed without `--out`: both parts, each under a heading comment.
pub fn stdout_text(c: &NginxConfig) -> String {
    format!("# ---- main context of nginx.conf ----\n{}\n# ---- inside location {{ ... }} ----\n{}", c.wasm_block, c.location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_file::load_text;

    #[test]
    fn quoting_escapes_backslash_and_single_quote_only() {
        assert_eq!(nginx_quote(r#"{"a":"it's \"x\"\n"}"#), r#"'{"a":"it\'s \\"x\\"\\n"}'"#);
        assert_eq!(nginx_quote("plain $var {;}"), "'plain $var {;}'");
    }

    #[test]
    fn kong_targets() {
        for ok in ["127.0.0.1:8080", "geo-db:80", "gatewarden_geo_db:8081", "[::1]:9000", "unix:/run/geo.sock", "idp.example.com:443"] {
            assert!(is_kong_target(ok), "{ok}");
        }
        for bad in [
            "gatewarden_geo_db",
            "outbound|80||geo.svc.cluster.local",
            "geo:0",
            "geo:99999",
            ":80",
            "geo:",
            "[::1]",
            "a b:80",
            "geo:+80",
            "unix:rel",
        ] {
            assert!(!is_kong_target(bad), "{bad}");
        }
    }

    fn policy(yaml: &str) -> LoadedPolicy {
        match load_text("p.yaml", yaml, None) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    const IP_GEO: &str =
        "filter: ip_geo\npolicy_version: \"v1\"\ngeo_database: { cluster: gatewarden_geo_db, path: /c.mmdb }\ndefault: {}\n";

    #[test]
    fn a_cluster_name_is_refused_naming_the_field() {
        let p = policy(IP_GEO);
        let e = check_kong_targets(&p).err().map(|r| r.message).unwrap_or_default();
        assert_eq!(
            e,
            "geo_database.cluster: \"gatewarden_geo_db\" is not host:port: on Kong and nginx (ngx_wasm_module) a callout goes to host:port \
             (an IP, or a name nginx resolves: resolver_add <ip> <name>; in http{}), not to an Envoy cluster; write e.g. \"127.0.0.1:8080\""
        );
        let jwt = policy(
            "filter: jwt\npolicy_version: v1\nproviders:\n  idp:\n    issuer: https://i\n    remote_jwks: { cluster: idp_jwks, path: /j }\ndefault: { requires: { provider: idp } }\n",
        );
        let e = check_kong_targets(&jwt).err().map(|r| r.message).unwrap_or_default();
        assert!(e.starts_with("providers.idp.remote_jwks.cluster: \"idp_jwks\" is not host:port"), "{e}");
    }

    #[test]
    fn too_long_a_policy_is_refused() {
        let cidrs: Vec<String> = (0..300).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
        let long = format!("filter: ip_geo\npolicy_version: v1\ndefault: {{ deny: [{}] }}\n", cidrs.join(", "));
        let o = NginxOptions { name: "gatewarden_ip_geo", module: "/m.wasm", vm_configuration: None, shm_size: "64m" };
        let e = render(&policy(&long), &o).err().map(|r| r.message).unwrap_or_default();
        assert!(e.starts_with("the policy JSON is 4"), "{e}");
        assert!(e.contains("nginx refuses a parameter longer than 4094 bytes"), "{e}");
    }

    #[test]
    fn named_targets_need_a_resolver_note() {
        let p = policy(&IP_GEO.replace("gatewarden_geo_db", "geo-db:8081"));
        let o = NginxOptions { name: "gatewarden_ip_geo", module: "/m.wasm", vm_configuration: None, shm_size: "64m" };
        let c = render(&p, &o).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            c.location.contains(
                "# geo_database.cluster names host \"geo-db\": nginx must resolve it, e.g. `resolver_add <ip> geo-db;` in http{}"
            ),
            "{}",
            c.location
        );
        let p = policy(&IP_GEO.replace("gatewarden_geo_db", "127.0.0.1:8081"));
        let c = render(&p, &o).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!c.location.contains("resolver_add"), "{}", c.location);
    }

    #[test]
    fn sizes() {
        assert!(check_size("64m").is_ok());
        assert!(check_size("1048576").is_ok());
        assert_eq!(check_size("64mb"), Err("--shm-size: \"64mb\" is not an nginx size like \"64m\"".into()));
        assert!(check_size("m").is_err());
    }

    #[test]
    fn module_names_nginx_refuses_are_refused() {
        assert!(check_module_name("gatewarden_jwt").is_ok());
        assert_eq!(
            check_module_name("a:b"),
            Err("module name \"a:b\": character ':' not allowed (ngx_wasm_module refuses spaces, tabs and colons; use letters, digits, '_', '-', '.')".into())
        );
        assert_eq!(check_module_name(""), Err("module name: empty".into()));
    }
}
