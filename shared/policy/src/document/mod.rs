//! The policy document every filter shares: a common header (`policy_version`, `mode`,
//! `failure_mode`, `client_address`, `decision_header`), an ordered `rules` list (first match
//! wins) and a `default`, plus the filter's own top-level fields.
//!
//! ```json
//! {"policy_version": "2026-11-22.3", "mode": "enforce", "failure_mode": "deny",
//!  "rules": [{"name": "admin", "match": {"path_prefix": "/admin"}, "allow": ["10.0.0.0/8"]}],
//!  "default": {}}
//! ```
//!
//! Each filter declares its document with [`policy_document!`], which adds the common fields to
//! the filter's own, so every document is one flat, `deny_unknown_fields` struct whose serde
//! errors carry exact field paths and whose JSON Schema is generated from the same type.
//!
//! The envelope in rooms, each using only the ones before it (checked by a test below):
//! [`approvals`] (signatures) → [`rollout_spec`] → [`spec`] (the document as written) →
//! [`header`] (compiled common header) → [`filter`] ([`FilterPolicy`]) → [`rules`] →
//! [`rollout`] (compiled canary/shadow) → [`compile`] (bytes to a [`PolicySet`]).

pub mod approvals;
pub mod compile;
pub mod filter;
pub mod header;
pub mod rollout;
pub mod rollout_spec;
pub mod rules;
pub mod spec;

pub use crate::codec::parse_json as parse_document;
pub use compile::{compile, compile_set};
pub use filter::FilterPolicy;
pub use header::Header;
pub use rollout::PolicySet;
pub use spec::{DecisionHeader, FailureMode, Mode, PolicyDocument};

#[cfg(test)]
mod layering {
    /// The rooms of the envelope in order: each may use only rooms before it.
    const ROOMS: [(&str, &str); 8] = [
        ("approvals", include_str!("approvals.rs")),
        ("rollout_spec", include_str!("rollout_spec.rs")),
        ("spec", include_str!("spec.rs")),
        ("header", include_str!("header.rs")),
        ("filter", include_str!("filter.rs")),
        ("rules", include_str!("rules.rs")),
        ("rollout", include_str!("rollout.rs")),
        ("compile", include_str!("compile.rs")),
    ];

    fn uses(text: &str, room: &str) -> bool {
        [format!("super::{room}::"), format!("crate::document::{room}::"), format!("super::{room};")]
            .iter()
            .any(|p| text.contains(p.as_str()))
    }

    #[test]
    fn no_envelope_room_uses_a_later_one() {
        for (i, (name, text)) in ROOMS.iter().enumerate() {
            for (later, _) in &ROOMS[i..] {
                assert!(
                    !uses(text, later) || later == name,
                    "document::{name} uses document::{later}, which comes after it: a cycle in the making"
                );
            }
        }
    }

    #[test]
    fn the_check_sees_a_use() {
        assert!(uses("use super::spec::Mode;", "spec"));
        assert!(!uses("use super::spec_x::Mode;", "spec"));
    }
}
