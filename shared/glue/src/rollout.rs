//! Glue for safe rollout and approvals: the trust settings read from the VM configuration, the
//! counters, and the shadow-disagreement log line.
//!
//! Trust settings are per VM (a thread_local): `proxy_on_vm_start` reads the VM configuration
//! (Envoy `vm_config.configuration`), which only the platform owner sets, never the policy.
//! An invalid one makes `proxy_on_vm_start` return false, so the plugin fails closed rather
//! than run without the approvals it was meant to require.

use std::cell::RefCell;
use std::rc::Rc;

use gatewarden_policy::approvals::TrustConfig;
use gatewarden_policy::rollout::{verdict_label, Role};
use gatewarden_policy::Decision;

use crate::decision_log::json_line;
use crate::host::{self, Level};
use crate::metrics::{self, Counter};

/// Counters of rollouts and approvals, defined for every filter (`gatewarden_<filter>_<name>`).
pub const COUNTERS: &[Counter] = &[
    // Canary: which policy each request was assigned to.
    Counter::ROLLOUT_ACTIVE,
    Counter::ROLLOUT_CANDIDATE,
    // Decisions made by a canary candidate (also counted in allowed/denied/dry_run_denied).
    Counter::CANDIDATE_ALLOWED,
    Counter::CANDIDATE_DENIED,
    Counter::CANDIDATE_DRY_RUN_DENIED,
    // Shadow: the candidate's verdict compared with the active one's, per request.
    Counter::SHADOW_AGREED,
    Counter::SHADOW_DISAGREED,
    // Approvals: a policy refused for missing signatures (also counted in config_rejected).
    Counter::SIGNATURE_REJECTED,
    // The VM configuration's trust settings were invalid (proxy_on_vm_start returned false).
    Counter::TRUST_CONFIG_REJECTED,
];

thread_local! {
    static TRUST: RefCell<Rc<TrustConfig>> = RefCell::new(Rc::new(TrustConfig::default()));
    /// Why the VM configuration was refused, on a host where refusing the VM is not safe.
    static TRUST_REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Set when the trust settings were invalid on ngx_wasm_module: every policy is then refused
/// (the filter fails closed), since the approvals the platform owner asked for cannot be checked.
pub fn trust_refused() -> Option<String> {
    TRUST_REFUSED.with(|t| t.borrow().clone())
}

/// Refuses the VM: false on Envoy (the plugin fails closed); on ngx_wasm_module, where a false
/// `on_vm_start` stops the nginx workers, the VM starts and every policy is refused instead.
fn refuse_vm(filter: &str, why: String) -> bool {
    metrics::count(filter, Counter::TRUST_CONFIG_REJECTED);
    match host::host_kind() {
        host::HostKind::Envoy => {
            host::log(Level::Error, format_args!("gatewarden {filter}: {why}: refusing to start"));
            false
        }
        host::HostKind::NgxWasmModule => {
            host::log(Level::Error, format_args!("gatewarden {filter}: {why}: every policy will be refused"));
            TRUST_REFUSED.with(|t| *t.borrow_mut() = Some(why));
            true
        }
    }
}

/// The VM's trust settings (none required until `on_vm_start` read some).
pub fn trust() -> Rc<TrustConfig> {
    TRUST.with(|t| Rc::clone(&t.borrow()))
}

/// `proxy_on_vm_start`: reads the trust settings from the VM configuration.
pub fn on_vm_start(filter: &str) -> bool {
    let bytes = match host::vm_configuration() {
        Ok(b) => b,
        Err(e) => return refuse_vm(filter, format!("cannot read the VM configuration (status {})", e.0)),
    };
    match TrustConfig::parse(&bytes) {
        Ok(t) => {
            if t.required() > 0 {
                let ids: Vec<&str> = t.key_ids().collect();
                host::log(
                    Level::Info,
                    format_args!(
                        "gatewarden {filter}: policies need {} signature(s) from distinct trusted keys ({})",
                        t.required(),
                        ids.join(", ")
                    ),
                );
            }
            TRUST.with(|slot| *slot.borrow_mut() = Rc::new(t));
            true
        }
        Err(e) => refuse_vm(filter, format!("invalid trust settings in the VM configuration: {e}")),
    }
}

/// The counter of a canary assignment.
pub fn assignment_counter(role: Role) -> Counter {
    match role {
        Role::Active => Counter::ROLLOUT_ACTIVE,
        Role::Candidate => Counter::ROLLOUT_CANDIDATE,
    }
}

/// The fields of one shadow-disagreement log line.
pub struct ShadowRecord<'a> {
    pub filter: &'a str,
    pub active_version: &'a str,
    pub active: &'a Decision,
    pub candidate_version: &'a str,
    pub candidate: &'a Decision,
    pub request_id: &'a str,
    pub client: &'a str,
}

impl std::fmt::Display for ShadowRecord<'_> {
    /// The JSON line, built only when the log level lets it through (`host::log`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_line())
    }
}

impl ShadowRecord<'_> {
    /// `{"gatewarden":"shadow_disagreement","filter":…,"active_version":…,"active":"allow",
    /// "active_rule":…,"candidate_version":…,"candidate":"deny:ip_denied:403","candidate_rule":…,
    /// "request_id":…,"client":…}`
    pub fn to_line(&self) -> String {
        let active = verdict_label(self.active);
        let candidate = verdict_label(self.candidate);
        let fields = [
            ("gatewarden", "shadow_disagreement"),
            ("filter", self.filter),
            ("active_version", self.active_version),
            ("active", &active),
            ("active_rule", &self.active.rule),
            ("candidate_version", self.candidate_version),
            ("candidate", &candidate),
            ("candidate_rule", &self.candidate.rule),
            ("request_id", self.request_id),
            ("client", self.client),
        ];
        json_line(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_policy::Denial;
    use std::sync::Arc;

    #[test]
    fn shadow_line_is_json() {
        let r: Arc<str> = Arc::from("default");
        let allow = Decision::allow(&r);
        let deny = Decision::deny(&r, Denial { status: 403, body: "", reason: "ip_denied" });
        let line = ShadowRecord {
            filter: "ip_geo",
            active_version: "v1",
            active: &allow,
            candidate_version: "v2",
            candidate: &deny,
            request_id: "r\"1",
            client: "192.0.2.1",
        }
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["gatewarden"], "shadow_disagreement");
        assert_eq!(v["active"], "allow");
        assert_eq!(v["candidate"], "deny:ip_denied:403");
        assert_eq!(v["candidate_version"], "v2");
        assert_eq!(v["request_id"], "r\"1");
    }
}
