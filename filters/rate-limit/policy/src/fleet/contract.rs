//! A rate limit service that follows the contract, in memory, for tests of the fleet path
//! (this crate's and the Wasm-host tests of the built module; feature `testing`).
//!
//! GCRA per descriptor, limits found by the descriptor's first entry (`gatewarden_limit`),
//! deny-if-any across the request's descriptors, nothing charged on a denial — what
//! `gatewarden-ratelimit` does against Redis, without Redis.

use std::collections::HashMap;

use crate::fleet::LIMIT_ENTRY;
use crate::gcra::{self, Admit, Limit, US_PER_SECOND};
use crate::policy::RateLimitPolicy;
use crate::rls::{Code, DescriptorStatus, Duration as PbDuration, RateLimit, RateLimitRequest, RateLimitResponse, Unit};

/// A descriptor's entries: the service's key for its state.
type DescriptorKey = Vec<(String, String)>;

/// The in-memory contract service (see the module docs).
#[derive(Debug, Default)]
pub struct ContractService {
    limits: HashMap<String, Limit>,
    state: HashMap<DescriptorKey, u64>,
    /// Calls answered.
    pub calls: usize,
    /// Units granted over all calls.
    pub granted: u64,
}

impl ContractService {
    /// A service holding `policy`'s fleet limits.
    pub fn new(policy: &RateLimitPolicy) -> Self {
        Self { limits: policy.fleet_limits().into_iter().map(|l| (l.name, l.limit)).collect(), ..Self::default() }
    }

    /// Answers `request` at `now_us` (µs since the Unix epoch), charging its descriptors if all admit it.
    pub fn answer(&mut self, request: &RateLimitRequest, now_us: u64) -> RateLimitResponse {
        self.calls += 1;
        let hits = u64::from(request.hits_addend.max(1));
        let plan: Vec<(DescriptorKey, Option<Limit>)> = request
            .descriptors
            .iter()
            .map(|d| {
                let key = d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
                let limit = d.entries.first().filter(|e| e.key == LIMIT_ENTRY).and_then(|e| self.limits.get(&e.value)).copied();
                (key, limit)
            })
            .collect();
        let results: Vec<Option<(Admit, u64)>> =
            plan.iter().map(|(k, l)| l.map(|l| gcra::admit(self.state.get(k).copied().unwrap_or(0), now_us, &l, hits))).collect();
        let ok = results.iter().all(|r| !matches!(r, Some((Admit::Deny { .. }, _))));
        let mut statuses = Vec::with_capacity(plan.len());
        for ((key, limit), result) in plan.iter().zip(&results) {
            let (Some(limit), Some((admit, new))) = (limit, result) else {
                statuses.push(DescriptorStatus { code: Code::Ok as i32, ..DescriptorStatus::default() });
                continue;
            };
            let state = if ok { *new } else { self.state.get(key).copied().unwrap_or(0) };
            if ok {
                self.state.insert(key.clone(), state);
            }
            let code = if matches!(admit, Admit::Admit) { Code::Ok } else { Code::OverLimit };
            statuses.push(DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: u32::try_from(limit.rate).unwrap_or(u32::MAX),
                    unit: Unit::Second as i32,
                }),
                limit_remaining: u32::try_from(gcra::remaining(state, now_us, limit)).unwrap_or(u32::MAX),
                duration_until_reset: Some(PbDuration {
                    seconds: i64::try_from(gcra::reset_us(state, now_us) / US_PER_SECOND).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                quota: None,
            });
        }
        if ok {
            self.granted += hits;
        }
        RateLimitResponse { overall_code: if ok { Code::Ok } else { Code::OverLimit } as i32, statuses, ..RateLimitResponse::default() }
    }
}
