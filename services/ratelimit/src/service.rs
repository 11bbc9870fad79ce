//! The check both protocols share, its counters and the policy reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gatewarden_rate_limit_policy::rls::{Code, RateLimitRequest, RateLimitResponse};

use crate::check::{plan, respond, BadRequest};
use crate::limits::LimitBook;
use crate::store::{RedisStore, StoreError};

/// Why a check has no answer.
#[derive(Debug)]
pub enum CheckError {
    /// The request is malformed (gRPC `INVALID_ARGUMENT`, HTTP 400).
    BadRequest(BadRequest),
    /// Redis did not answer in time (gRPC `UNAVAILABLE`, HTTP 500): the client applies its failure mode.
    Unavailable(StoreError),
}

/// Answers counted by outcome (`GET /metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    pub invalid: AtomicU64,
    pub unavailable: AtomicU64,
    pub unknown_domain: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_refused: AtomicU64,
}

impl Counters {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::from("# TYPE gatewarden_ratelimit_checks_total counter\n");
        for (result, counter) in
            [("ok", &self.ok), ("over_limit", &self.over_limit), ("invalid", &self.invalid), ("unavailable", &self.unavailable)]
        {
            out.push_str(&format!("gatewarden_ratelimit_checks_total{{result=\"{result}\"}} {}\n", get(counter)));
        }
        out.push_str(&format!(
            "# TYPE gatewarden_ratelimit_unknown_domain_total counter\ngatewarden_ratelimit_unknown_domain_total {}\n",
            get(&self.unknown_domain)
        ));
        out.push_str(&format!(
            "# TYPE gatewarden_ratelimit_reloads_total counter\ngatewarden_ratelimit_reloads_total {}\n",
            get(&self.reloads)
        ));
        out.push_str(&format!(
            "# TYPE gatewarden_ratelimit_reload_refused_total counter\ngatewarden_ratelimit_reload_refused_total {}\n",
            get(&self.reload_refused)
        ));
        out
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The service: the limits, the domain, Redis.
pub struct RateLimiter {
    book: RwLock<Arc<LimitBook>>,
    domain: String,
    store: RedisStore,
    pub counters: Counters,
}

impl RateLimiter {
    pub fn new(book: LimitBook, domain: String, store: RedisStore) -> RateLimiter {
        RateLimiter { book: RwLock::new(Arc::new(book)), domain, store, counters: Counters::default() }
    }

    fn book(&self) -> Arc<LimitBook> {
        match self.book.read() {
            Ok(book) => Arc::clone(&book),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the limits (a reload). A limit whose definition did not change keeps its buckets: the Redis
    /// key hashes the definition.
    pub fn replace_limits(&self, book: LimitBook) {
        let book = Arc::new(book);
        match self.book.write() {
            Ok(mut current) => *current = book,
            Err(poisoned) => *poisoned.into_inner() = book,
        }
        bump(&self.counters.reloads);
    }

    /// One `ShouldRateLimit`.
    pub async fn should_rate_limit(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, CheckError> {
        let book = self.book();
        let plan = match plan(request, &book, &self.domain) {
            Ok(plan) => plan,
            Err(bad) => {
                bump(&self.counters.invalid);
                log::warn!("invalid request: {}", bad.0);
                return Err(CheckError::BadRequest(bad));
            }
        };
        if request.domain != self.domain {
            bump(&self.counters.unknown_domain);
        }
        let outcome = if plan.buckets.is_empty() {
            None
        } else {
            match self.store.check(&plan).await {
                Ok(outcome) => Some(outcome),
                Err(error) => {
                    bump(&self.counters.unavailable);
                    log::warn!("check unavailable: {error}");
                    return Err(CheckError::Unavailable(error));
                }
            }
        };
        let response = respond(&plan, outcome.as_ref());
        if response.overall_code == Code::OverLimit as i32 {
            bump(&self.counters.over_limit);
            let limits: Vec<&str> = response
                .statuses
                .iter()
                .filter(|s| s.code == Code::OverLimit as i32)
                .filter_map(|s| s.current_limit.as_ref().map(|l| l.name.as_str()))
                .collect();
            log::info!(
                "{}",
                serde_json::json!({"decision": "over_limit", "limits": limits, "domain": request.domain,
                    "hits_addend": plan.cost, "policy_version": book.policy_version})
            );
        } else {
            bump(&self.counters.ok);
        }
        Ok(response)
    }

    /// Whether Redis answers a `PING` now.
    pub async fn healthy(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
