//! The IP/geo filter's decision as any host acts on it (the Proxy-Wasm module and the native
//! Envoy module call this).

use gatewarden_policy::outcome::Outcome;
use gatewarden_policy::Verdict;

use crate::IpGeoOutcome;

/// The host's outcome of a decision: the country in the detail of a denial's log line (no
/// formatting on the allow path).
pub fn to_outcome(out: IpGeoOutcome) -> Outcome {
    let detail = match (&out.decision.verdict, out.country) {
        (Verdict::Deny(_), Some(cc)) => format!("country={cc}"),
        _ => String::new(),
    };
    Outcome::new(out.decision, out.client, detail)
}
