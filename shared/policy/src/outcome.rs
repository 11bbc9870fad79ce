//! What a filter decided for one request, as any host acts on it: the decision, the log line's
//! client and detail, and the header changes. Plain Rust: the Proxy-Wasm glue and the native
//! Envoy module act on the same value (each filter's policy crate builds it, see its `adapter`).

use std::net::IpAddr;

use crate::decision::Decision;

/// What a filter decided for one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    /// The client address the decision was about, for the log line.
    pub client: Option<IpAddr>,
    /// Extra safe detail for the log line of a denial (e.g. `country=KP`); may be empty.
    pub detail: String,
    /// Request headers to remove on allow and dry-run (before `set_headers`), e.g. headers the
    /// filter sets itself and a client must not forge. Empty Vecs do not allocate.
    pub remove_headers: Vec<String>,
    /// Request headers to set (replacing any value) on allow and dry-run.
    pub set_headers: Vec<(String, String)>,
    /// Extra headers of the local response of a denial (e.g. `www-authenticate`). A
    /// `content-type` here replaces the glue's `application/json`.
    pub response_headers: Vec<(String, String)>,
    /// The denial's body for this request, instead of the [`Denial`]'s fixed one (e.g. a 429
    /// naming the violated limits). Built from the policy only, never from client input.
    ///
    /// [`Denial`]: crate::decision::Denial
    pub body: Option<String>,
    /// Headers added to the upstream's response of an allowed (or dry-run) request, e.g. the
    /// rate-limit `RateLimit` headers; set in `on_response_headers`, replacing the upstream's.
    pub allowed_response_headers: Vec<(String, String)>,
}

impl Outcome {
    /// A decision without header changes.
    pub fn new(decision: Decision, client: Option<IpAddr>, detail: String) -> Self {
        Self {
            decision,
            client,
            detail,
            remove_headers: Vec::new(),
            set_headers: Vec::new(),
            response_headers: Vec::new(),
            body: None,
            allowed_response_headers: Vec::new(),
        }
    }
}

impl Outcome {
    /// The local response of a denial: the outcome's response headers, led by `content-type:
    /// application/json` unless they name one, and the outcome's own body, else the denial's fixed
    /// one. Both hosts answer with this.
    pub fn local_response<'a>(&'a self, denial: &'a crate::decision::Denial) -> (Vec<(&'a str, &'a str)>, &'a str) {
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(1 + self.response_headers.len());
        if !self.response_headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            headers.push(("content-type", "application/json"));
        }
        headers.extend(self.response_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        (headers, self.body.as_deref().unwrap_or(denial.body))
    }

    /// The decision log line of a denial (`dry_run`: a dry-run denial) of this outcome.
    /// `rollout`: which policy of a canary decided (`active`/`candidate`), empty without one.
    #[allow(clippy::too_many_arguments)]
    pub fn denial_record<'a>(
        &'a self,
        filter: &'a str,
        denial: &'a crate::decision::Denial,
        policy_version: &'a str,
        dry_run: bool,
        request_id: &'a str,
        client: &'a str,
        rollout: &'a str,
    ) -> crate::decision_log::DecisionRecord<'a> {
        crate::decision_log::DecisionRecord {
            filter,
            decision: if dry_run { "dry_run_deny" } else { "deny" },
            reason: denial.reason,
            rule: &self.decision.rule,
            policy_version,
            request_id,
            client,
            detail: &self.detail,
            rollout,
        }
    }
}

/// The decision header of a dry-run denial: `dry_run_deny; reason=…; rule=…; version=…`.
pub fn dry_run_header_value(reason: &str, rule: &str, version: &str) -> String {
    format!("dry_run_deny; reason={reason}; rule={rule}; version={version}")
}

/// What a filter's adapter reports to its host beside an [`Outcome`]: counters and log lines
/// (the Wasm glue tallies and logs through Proxy-Wasm, the native module through Envoy's ABI).
pub trait Report {
    /// Counts `gatewarden_<filter>_<name>`: one of the filter's own counters (its
    /// `extra_counters`); an unknown name is not counted.
    fn count(&self, name: &'static str);
    /// Logs a line at `level`.
    fn log(&self, level: ReportLevel, message: std::fmt::Arguments<'_>);
}

/// The levels an adapter logs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportLevel {
    Info,
    Warn,
}

/// A [`Report`] that keeps nothing (tests, the CLI's offline evaluation).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReport;

impl Report for NoReport {
    fn count(&self, _name: &'static str) {}
    fn log(&self, _level: ReportLevel, _message: std::fmt::Arguments<'_>) {}
}
