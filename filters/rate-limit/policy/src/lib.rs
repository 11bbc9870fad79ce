//! The rate-limit filter's policy: several limits per rule, each a GCRA bucket per key.
//!
//! Per request:
//! 1. The rule is selected (the shared rule list; `default` when none matches). A rule without
//!    `limits` lets every request through.
//! 2. The key is built from the rule's `key` parts ([`key`]). A part that is missing (no such
//!    header, no resolvable client address) follows `on_missing_key`: `deny` (the default) denies
//!    (`key_missing`, 403), `allow` lets the request through unlimited, `shared` puts every
//!    request missing that part into one bucket.
//! 3. The cost is fixed or read from a header (`cost_invalid`, 400, when the header is not a
//!    number or is above its `max`).
//! 4. All limits of the rule are checked at once ([`gcra::admit_all`]): if any would deny, the
//!    request is denied (`limited`, 429) and **no** limit is charged; otherwise every limit is
//!    charged. A cost above a limit's `burst` can never be admitted (`cost_over_burst`, 429,
//!    no `Retry-After`).
//! 5. State lives in a fixed-size key table ([`table`]); when every candidate slot of a new key
//!    holds a limited bucket, the key cannot be tracked and `failure_mode` decides
//!    (`table_full` on deny).
//!
//! Time is always a parameter (µs since the Unix epoch, [`gcra`]), never read here.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::type_complexity))]

pub mod adapter;
mod config;
pub mod fleet;
pub mod gcra;
pub mod key;
mod policy;
pub mod response;
pub mod rls;
pub mod table;

pub use config::{
    CostHeaderSpec, CostSpec, FleetFailureMode, FleetProtocol, FleetServiceSpec, FleetSpec, HeaderStyle, KeyPartSpec, LeaseSpec, LimitSpec,
    OnMissingKey, Period, RateLimitDocument, RateLimitRule, Scope,
};
pub use gcra::{Admit, Limit};
pub use key::{BucketKey, KeyOutcome};
pub use policy::{Buckets, FleetLimit, RateLimitOutcome, RateLimitPolicy, RateLimitReason, DEFAULT_MAX_KEYS, MAX_LIMITS_PER_RULE};
pub use table::{charge, KeyState, MemoryTable, Slot, TableFull, TableShape};
