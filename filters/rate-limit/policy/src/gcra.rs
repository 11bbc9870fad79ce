//! GCRA, the generic cell rate algorithm: a token bucket kept as one `u64` per key and limit.
//!
//! **The state word** is the bucket's *theoretical arrival time* (TAT): microseconds since the
//! Unix epoch (the time both hosts' `proxy_get_current_time_nanoseconds` give, divided by
//! 1,000). `0` is a fresh key (a full bucket). A u64 of µs lasts until the year 586,000.
//!
//! A limit of `rate` units per `period` with `burst` has an emission interval
//! `T = ceil(period / rate)` µs per unit and a tolerance `τ = burst × T`. A request costing `c`
//! at time `now` is admitted when `max(tat, now) + c×T − τ ≤ now`, and then the state becomes
//! `max(tat, now) + c×T`. A full bucket admits `burst` units at once, then one unit per `T`.
//! `T` is rounded up, so rounding can only admit less, by at most 1 µs per unit.
//!
//! Properties (each tested):
//! - A denied request leaves the state unchanged.
//! - The state never decreases, so a clock that goes backwards never grants extra units: it
//!   only makes a request wait longer.
//! - `cost > burst` is never admitted, whatever the state (`retry_after` is `None`).
//! - `cost == 0` is admitted when one unit could be, and charges nothing.
//! - All arithmetic saturates: a huge cost, rate or time cannot overflow or panic.
//! - Several limits at once ([`admit_all`]): the request is admitted only if every limit admits
//!   it; if any denies, **no** state changes (no limit is charged for a denied request).

/// One compiled limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Units per period, as configured.
    pub rate: u64,
    /// The period in seconds, as configured.
    pub period_seconds: u64,
    /// Units admitted at once from a full bucket.
    pub burst: u64,
    /// µs per unit (`T`), at least 1.
    pub emission_us: u64,
    /// `burst × T` µs (`τ`).
    pub tolerance_us: u64,
}

/// Microseconds per second.
pub const US_PER_SECOND: u64 = 1_000_000;

impl Limit {
    /// A limit of `rate` units per `period_seconds`, `burst` at once. `None` when a value is 0 or
    /// the rate is above one unit per µs (the compiler refuses these with a field path).
    pub fn new(rate: u64, period_seconds: u64, burst: u64) -> Option<Self> {
        if rate == 0 || period_seconds == 0 || burst == 0 {
            return None;
        }
        let period_us = period_seconds.checked_mul(US_PER_SECOND)?;
        if rate > period_us {
            return None;
        }
        let emission_us = period_us.div_ceil(rate);
        Some(Self { rate, period_seconds, burst, emission_us, tolerance_us: burst.saturating_mul(emission_us) })
    }
}

/// One limit's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Admit,
    /// `retry_after_us`: when the same request would be admitted (from `now`), `None` when never
    /// (its cost is above the burst).
    Deny {
        retry_after_us: Option<u64>,
    },
}

/// Decides one request of `cost` units on one limit: the answer and the state to store (the
/// same state when denied).
pub fn admit(state: u64, now: u64, limit: &Limit, cost: u64) -> (Admit, u64) {
    if cost > limit.burst {
        return (Admit::Deny { retry_after_us: None }, state);
    }
    let tat = state.max(now);
    let new_tat = tat.saturating_add(cost.saturating_mul(limit.emission_us));
    // A cost of 0 is checked as one unit (denied while the bucket is exhausted), charged as none.
    let allow_at = tat.saturating_add(cost.max(1).saturating_mul(limit.emission_us)).saturating_sub(limit.tolerance_us);
    if allow_at > now {
        (Admit::Deny { retry_after_us: Some(allow_at - now) }, state)
    } else {
        (Admit::Admit, new_tat)
    }
}

/// Units that could be spent now (0 to `burst`).
pub fn remaining(state: u64, now: u64, limit: &Limit) -> u64 {
    let used = state.max(now) - now;
    limit.tolerance_us.saturating_sub(used).checked_div(limit.emission_us).unwrap_or(0).min(limit.burst)
}

/// µs until the bucket is full again (0 when it is full).
pub fn reset_us(state: u64, now: u64) -> u64 {
    state.saturating_sub(now)
}

/// The answer of several limits checked together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitAll {
    /// Indices of the limits that denied; empty when admitted.
    pub denied: Vec<usize>,
    /// When the request would be admitted by all the denying limits (the longest wait); `None`
    /// when admitted or when some limit can never admit it.
    pub retry_after_us: Option<u64>,
    /// Whether some denying limit can never admit this cost (cost above its burst).
    pub never: bool,
    /// The states to store: charged when admitted, unchanged when denied.
    pub states: Vec<u64>,
}

impl AdmitAll {
    pub fn admitted(&self) -> bool {
        self.denied.is_empty()
    }
}

/// Decides one request on several limits at once. `states[i]` belongs to `limits[i]` (a missing
/// state is a fresh bucket). Admitted only if every limit admits; then every limit is charged.
/// Denied if any limit denies; then no state changes.
pub fn admit_all(states: &[u64], now: u64, limits: &[Limit], cost: u64) -> AdmitAll {
    let mut charged = Vec::with_capacity(limits.len());
    let mut denied = Vec::new();
    let mut wait = 0u64;
    let mut never = false;
    for (i, limit) in limits.iter().enumerate() {
        let state = states.get(i).copied().unwrap_or(0);
        match admit(state, now, limit, cost) {
            (Admit::Admit, new) => charged.push(new),
            (Admit::Deny { retry_after_us }, old) => {
                charged.push(old);
                denied.push(i);
                match retry_after_us {
                    Some(us) => wait = wait.max(us),
                    None => never = true,
                }
            }
        }
    }
    if denied.is_empty() {
        AdmitAll { denied, retry_after_us: None, never, states: charged }
    } else {
        let unchanged = (0..limits.len()).map(|i| states.get(i).copied().unwrap_or(0)).collect();
        AdmitAll { denied, retry_after_us: (!never).then_some(wait), never, states: unchanged }
    }
}

/// Whether a bucket is currently limited: a request of one unit would be denied now.
pub fn is_limited(state: u64, now: u64, limit: &Limit) -> bool {
    limited_from(state, limit) > now
}

/// The time until which a bucket in `state` denies a one-unit request (`tat + T − τ`): the
/// bucket is limited while `now` is before it. Stored beside the states in the key table so
/// eviction can tell a limited bucket without knowing its limits.
pub fn limited_from(state: u64, limit: &Limit) -> u64 {
    state.saturating_add(limit.emission_us).saturating_sub(limit.tolerance_us)
}

#[cfg(test)]
#[path = "gcra_tests.rs"]
mod tests;
