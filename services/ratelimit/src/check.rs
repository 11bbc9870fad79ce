//! One `ShouldRateLimit` check: request → plan (which descriptors name a known limit, their Redis keys) →
//! one Lua script in Redis → response.
//!
//! ```text
//! RateLimitRequest ─ plan(book, domain) ─▶ Plan { cost, buckets: [(descriptor i, limit, "gw:rl:<domain>:<hash>")] }
//!                  ─ Redis EVALSHA GCRA_SCRIPT (keys, cost, T/τ/burst per key) ─▶ ScriptOutcome { now, admitted, states }
//!                  ─ respond(plan, outcome) ─▶ RateLimitResponse (one status per descriptor, in order)
//! ```
//!
//! The algorithm is `gatewarden_rate_limit_policy::gcra` (TAT in µs, deny-if-any, a denied request charges
//! nothing, a cost above the burst never admits); the Lua below is its transcription and
//! `tests/service.rs` checks it against `gcra::admit_all` on the states and time Redis reports.

use std::sync::Arc;

use gatewarden_rate_limit_policy::gcra::{self, Limit};
use gatewarden_rate_limit_policy::rls::{
    Code, DescriptorStatus, Duration, RateLimit, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, Unit,
};
use sha2::{Digest, Sha256};

use crate::limits::{LimitBook, LIMIT_ENTRY_KEY};

/// Descriptors accepted in one request (a bound on the work one call can ask for).
pub const MAX_DESCRIPTORS: usize = 64;
/// Bytes of all entries of one request.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// The GCRA check of several buckets at once, atomically.
///
/// KEYS: the buckets; ARGV[1]: the cost; then per key i: emission interval T (µs), tolerance τ (µs), burst.
/// Time is Redis' `TIME`, so every instance of the service shares one clock. A key holds the bucket's TAT
/// (µs, decimal) and expires when the bucket is full again, so only active buckets use memory. A key named
/// twice is charged twice (the second check sees the first's charge). Returns
/// `{admitted (0|1), now_us, state_1 .. state_n}`: the states after the charge, or as stored when denied.
pub const GCRA_SCRIPT: &str = r"
local cost = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored, work, out = {}, {}, {}
local admitted = 1
for i, key in ipairs(KEYS) do
  local T, tau, burst = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  if stored[key] == nil then
    stored[key] = tonumber(redis.call('GET', key) or '0') or 0
    work[key] = stored[key]
  end
  local tat = math.max(work[key], now)
  if cost > burst or tat + math.max(cost, 1) * T - tau > now then
    admitted = 0
  else
    work[key] = tat + cost * T
  end
  out[i] = work[key]
end
if admitted == 1 then
  for key, tat in pairs(work) do
    if tat > now and tat ~= stored[key] then
      redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
    end
  end
else
  for i, key in ipairs(KEYS) do out[i] = stored[key] end
end
local reply = {admitted, now}
for i = 1, #out do reply[i + 2] = out[i] end
return reply
";

/// One descriptor that names a known limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The descriptor's index in the request.
    pub descriptor: usize,
    pub name: Arc<str>,
    pub limit: Limit,
    /// `gw:rl:<domain>:<hash>`.
    pub key: String,
}

/// What one request asks of Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `hits_addend`, 0 read as 1.
    pub cost: u64,
    pub descriptors: usize,
    pub buckets: Vec<Bucket>,
}

/// What the script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    pub admitted: bool,
    pub now_us: u64,
    /// One per bucket of the plan, in order.
    pub states: Vec<u64>,
}

/// Why a request cannot be checked (gRPC `INVALID_ARGUMENT`, HTTP 400). The text is for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Which descriptors name a limit of `book` and the Redis key of each. A request for another domain than
/// `domain` has no known limit (envoyproxy/ratelimit answers an unknown domain the same way).
pub fn plan(request: &RateLimitRequest, book: &LimitBook, domain: &str) -> Result<Plan, BadRequest> {
    if request.domain.is_empty() {
        return Err(BadRequest("rate limit domain must not be empty".into()));
    }
    if request.descriptors.is_empty() {
        return Err(BadRequest("rate limit descriptor list must not be empty".into()));
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(BadRequest(format!("at most {MAX_DESCRIPTORS} descriptors, got {}", request.descriptors.len())));
    }
    let bytes: usize = request.descriptors.iter().flat_map(|d| &d.entries).map(|e| e.key.len() + e.value.len()).sum();
    if bytes > MAX_ENTRY_BYTES {
        return Err(BadRequest(format!("descriptor entries of {bytes} bytes, at most {MAX_ENTRY_BYTES}")));
    }
    let cost = u64::from(request.hits_addend.max(1));
    let mut buckets = Vec::new();
    if request.domain == domain {
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            let Some(entry) = descriptor.entries.iter().find(|e| e.key == LIMIT_ENTRY_KEY) else { continue };
            let Some(known) = book.get(&entry.value) else { continue };
            buckets.push(Bucket {
                descriptor: i,
                name: Arc::clone(&known.name),
                limit: known.limit,
                key: bucket_key(domain, descriptor, &known.limit),
            });
        }
    }
    Ok(Plan { cost, descriptors: request.descriptors.len(), buckets })
}

/// `gw:rl:<domain>:<32 hex digits>`: SHA-256 over the limit's T and τ, the entry count, then each entry's
/// key and value, each preceded by its length (u64 LE): no two different entry lists give the same bytes.
/// The limit's definition is hashed in so a changed limit starts with fresh buckets, as a live update does
/// in the filter, while an unchanged one keeps its state.
pub fn bucket_key(domain: &str, descriptor: &RateLimitDescriptor, limit: &Limit) -> String {
    let mut hash = Sha256::new();
    hash.update(b"gatewarden-rls-v1");
    hash.update(limit.emission_us.to_le_bytes());
    hash.update(limit.tolerance_us.to_le_bytes());
    hash.update((descriptor.entries.len() as u64).to_le_bytes());
    for entry in &descriptor.entries {
        for part in [&entry.key, &entry.value] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("gw:rl:{domain}:{hex}")
}

/// The script's arguments after the keys: the cost, then T, τ and burst of each bucket.
pub fn script_args(plan: &Plan) -> Vec<u64> {
    let mut args = Vec::with_capacity(1 + 3 * plan.buckets.len());
    args.push(plan.cost);
    for bucket in &plan.buckets {
        args.extend([bucket.limit.emission_us, bucket.limit.tolerance_us, bucket.limit.burst]);
    }
    args
}

/// The answer: one status per descriptor in order; a descriptor without a known limit is `OK` without a
/// `current_limit`. The overall code is `OVER_LIMIT` when the script denied.
pub fn respond(plan: &Plan, outcome: Option<&ScriptOutcome>) -> RateLimitResponse {
    let mut statuses = vec![DescriptorStatus { code: Code::Ok as i32, ..Default::default() }; plan.descriptors];
    let mut over = false;
    if let Some(outcome) = outcome {
        for (bucket, state) in plan.buckets.iter().zip(&outcome.states) {
            let now = outcome.now_us;
            let denies = !outcome.admitted && !matches!(gcra::admit(*state, now, &bucket.limit, plan.cost).0, gcra::Admit::Admit);
            over |= denies;
            if let Some(status) = statuses.get_mut(bucket.descriptor) {
                *status = DescriptorStatus {
                    code: if denies { Code::OverLimit } else { Code::Ok } as i32,
                    current_limit: Some(current_limit(&bucket.name, &bucket.limit)),
                    limit_remaining: u32::try_from(gcra::remaining(*state, now, &bucket.limit)).unwrap_or(u32::MAX),
                    duration_until_reset: Some(duration(gcra::reset_us(*state, now))),
                    quota: None,
                };
            }
        }
        // A key named twice can deny on its second use only: the statuses above see each stored state alone.
        over |= !outcome.admitted;
    }
    RateLimitResponse { overall_code: if over { Code::OverLimit } else { Code::Ok } as i32, statuses, ..Default::default() }
}

/// `requests_per_unit` and `unit`: the configured rate when the period is exactly one unit, else per second,
/// rounded up.
pub fn current_limit(name: &str, limit: &Limit) -> RateLimit {
    let (rate, unit) = match limit.period_seconds {
        1 => (limit.rate, Unit::Second),
        60 => (limit.rate, Unit::Minute),
        3_600 => (limit.rate, Unit::Hour),
        86_400 => (limit.rate, Unit::Day),
        seconds => (limit.rate.div_ceil(seconds.max(1)), Unit::Second),
    };
    RateLimit { name: name.to_owned(), requests_per_unit: u32::try_from(rate).unwrap_or(u32::MAX), unit: unit as i32 }
}

fn duration(us: u64) -> Duration {
    Duration { seconds: i64::try_from(us / 1_000_000).unwrap_or(i64::MAX), nanos: ((us % 1_000_000) * 1_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_rate_limit_policy::rls::Entry;

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor::from_entries(entries.iter().copied())
    }

    fn limit() -> Limit {
        Limit::new(10, 60, 10).unwrap()
    }

    #[test]
    fn bucket_keys_do_not_collide_by_concatenation() {
        let l = limit();
        let a = bucket_key("d", &descriptor(&[("ab", "c")]), &l);
        let b = bucket_key("d", &descriptor(&[("a", "bc")]), &l);
        let c = bucket_key("d", &descriptor(&[("a", "b"), ("c", "")]), &l);
        let d = bucket_key("d", &descriptor(&[("a", "b")]), &l);
        let keys = [&a, &b, &c, &d];
        for (i, x) in keys.iter().enumerate() {
            for y in keys.iter().skip(i + 1) {
                assert_ne!(x, y);
            }
        }
        assert!(a.starts_with("gw:rl:d:") && a.len() == "gw:rl:d:".len() + 32, "{a}");
        assert_eq!(a, bucket_key("d", &descriptor(&[("ab", "c")]), &l), "the key is stable");
        assert_ne!(a, bucket_key("d", &descriptor(&[("ab", "c")]), &Limit::new(11, 60, 10).unwrap()), "a changed limit is a new bucket");
    }

    #[test]
    fn current_limit_uses_whole_units_or_seconds_rounded_up() {
        let cases = [((5, 1), (5, Unit::Second)), ((100, 60), (100, Unit::Minute)), ((7, 3_600), (7, Unit::Hour))];
        for ((rate, period), (rpu, unit)) in cases {
            let l = current_limit("r/l", &Limit::new(rate, period, rate).unwrap());
            assert_eq!((l.requests_per_unit, l.unit, l.name.as_str()), (rpu, unit as i32, "r/l"));
        }
        assert_eq!(current_limit("x", &Limit::new(1, 86_400, 1).unwrap()).unit, Unit::Day as i32);
        let l = current_limit("x", &Limit::new(100, 10, 100).unwrap());
        assert_eq!((l.requests_per_unit, l.unit), (10, Unit::Second as i32));
        let l = current_limit("x", &Limit::new(1, 10, 1).unwrap());
        assert_eq!((l.requests_per_unit, l.unit), (1, Unit::Second as i32), "0.1/s rounds up to 1");
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let book = LimitBook::default();
        let empty_domain = RateLimitRequest { domain: String::new(), descriptors: vec![descriptor(&[("a", "b")])], hits_addend: 0 };
        assert_eq!(plan(&empty_domain, &book, "gw").unwrap_err().0, "rate limit domain must not be empty");
        let none = RateLimitRequest { domain: "gw".into(), descriptors: vec![], hits_addend: 0 };
        assert_eq!(plan(&none, &book, "gw").unwrap_err().0, "rate limit descriptor list must not be empty");
        let many = RateLimitRequest { domain: "gw".into(), descriptors: vec![descriptor(&[("a", "b")]); 65], hits_addend: 0 };
        assert_eq!(plan(&many, &book, "gw").unwrap_err().0, "at most 64 descriptors, got 65");
        let big = RateLimitRequest {
            domain: "gw".into(),
            descriptors: vec![RateLimitDescriptor { entries: vec![Entry { key: "k".into(), value: "v".repeat(70_000) }], limit: None }],
            hits_addend: 0,
        };
        assert!(plan(&big, &book, "gw").unwrap_err().0.starts_with("descriptor entries of 70001 bytes"));
    }

    #[test]
    fn unknown_limits_are_ok_without_current_limit() {
        let book = LimitBook::default();
        let request =
            RateLimitRequest { domain: "gw".into(), descriptors: vec![descriptor(&[("gatewarden_limit", "nope/x")])], hits_addend: 0 };
        let p = plan(&request, &book, "gw").unwrap();
        assert_eq!(p.cost, 1, "hits_addend 0 means 1");
        assert!(p.buckets.is_empty());
        let r = respond(&p, None);
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 1);
        assert_eq!(r.statuses[0].current_limit, None);
    }

    #[test]
    fn a_denied_check_reports_which_descriptor_denied_and_the_untouched_remaining() {
        let l = limit(); // 10 per 60 s: T = 6 s, τ = 60 s
        let p = Plan {
            cost: 1,
            descriptors: 3,
            buckets: vec![
                Bucket { descriptor: 0, name: "r/a".into(), limit: l, key: "k0".into() },
                Bucket { descriptor: 2, name: "r/b".into(), limit: l, key: "k2".into() },
            ],
        };
        let now = 1_000_000_000;
        // Bucket 0 full (state 0): admits; bucket 2 exhausted (TAT = now + τ).
        let outcome = ScriptOutcome { admitted: false, now_us: now, states: vec![0, now + 60_000_000] };
        let r = respond(&p, Some(&outcome));
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
        assert_eq!(codes, [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32]);
        assert_eq!(r.statuses[0].limit_remaining, 10);
        assert_eq!(r.statuses[2].limit_remaining, 0);
        assert_eq!(r.statuses[2].duration_until_reset, Some(Duration { seconds: 60, nanos: 0 }));
        assert_eq!(r.statuses[1].current_limit, None);
        assert_eq!(r.statuses[2].current_limit.as_ref().map(|c| c.name.as_str()), Some("r/b"));
    }
}
