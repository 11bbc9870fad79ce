//! The JWT filter's decision as any host acts on it (the Proxy-Wasm module and the native Envoy
//! module call this).

use gatewarden_policy::cidr::parse_address;
use gatewarden_policy::outcome::Outcome;
use gatewarden_policy::{RequestFacts, Verdict};

use crate::JwtOutcome;

/// The host's outcome of a decision. The log's client (denials only): the policy's
/// `client_address` settings decide, as in the IP filter. When they cannot (a malformed
/// `x-forwarded-for`), the decision stands, the client is left empty and the detail says why,
/// with the peer.
pub fn to_outcome(out: JwtOutcome, facts: &RequestFacts<'_>) -> Outcome {
    let (client, detail) = match (&out.decision.verdict, out.client) {
        (Verdict::Deny(_), Some(Ok(ip))) => (Some(ip), String::new()),
        (Verdict::Deny(_), Some(Err(e))) => {
            let peer = facts.peer_address().and_then(parse_address).map(|ip| format!("; peer={ip}")).unwrap_or_default();
            (None, format!("client_address={}{peer}", e.as_str()))
        }
        _ => (None, String::new()),
    };
    let mut outcome = Outcome::new(out.decision, client, detail);
    outcome.remove_headers = out.remove_headers;
    outcome.set_headers = out.set_headers;
    outcome.response_headers = out.response_headers;
    outcome
}
