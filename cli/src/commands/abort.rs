//! `gatewarden abort POLICY`: `rollout` and `signatures` are removed; the active policy stays (`rollout::end`).

use crate::error::CmdResult;
use crate::rollout::{end, Ending};

/// The same arguments as `promote` (one policy file with a `rollout`).
pub use super::promote::Args;

/// `gatewarden abort`.
pub fn run(a: &Args) -> CmdResult {
    end(&a.policy, a.filter.filter, Ending::Abort)
}
