//! Redis: one connection manager (multiplexed, reconnects after a drop), every call bounded by the timeout.
//!
//! The manager is created on first use, not at start, so the service starts (and answers `UNAVAILABLE`,
//! health 500) while Redis is down, and connects when it comes up. A call that has not answered within
//! `timeout` is abandoned with [`StoreError`]: the caller answers `UNAVAILABLE` / 500 and the client applies
//! its failure mode. The check script is sent with `EVALSHA`; on `NOSCRIPT` (a restarted or flushed Redis)
//! redis-rs loads it with `SCRIPT LOAD` and sends `EVALSHA` again.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::sync::OnceCell;

use crate::check::{script_args, Plan, ScriptOutcome, GCRA_SCRIPT};

/// Redis could not answer in time (down, slow, or an error reply).
#[derive(Debug)]
pub struct StoreError(String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

pub struct RedisStore {
    client: Client,
    manager: OnceCell<ConnectionManager>,
    timeout: Duration,
    script: Script,
}

impl RedisStore {
    /// A store for `url` (`redis://host:port[/db]`); nothing is connected yet.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = Client::open(url).map_err(|e| StoreError(format!("invalid url: {e}")))?;
        Ok(RedisStore { client, manager: OnceCell::new(), timeout, script: Script::new(GCRA_SCRIPT) })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            // Reconnect attempts after a drop: a few quick tries; a call still failing answers UNAVAILABLE and
            // the next call starts another attempt.
            .set_number_of_retries(2)
            .set_factor(10)
            .set_max_delay(200);
        let manager = self
            .manager
            .get_or_try_init(|| async {
                let mut manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
                // Loaded up front so the first check is one EVALSHA; a failure here is retried by that check.
                let _ = self.script.prepare_invoke().load_async(&mut manager).await;
                Ok::<_, redis::RedisError>(manager)
            })
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(manager.clone())
    }

    /// Runs `f` on a connection, bounded by the timeout (connecting included).
    async fn bounded<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let connection = self.connection().await?;
            f(connection).await.map_err(|e| StoreError(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// Runs the GCRA script over the plan's buckets (the plan has at least one).
    pub async fn check(&self, plan: &Plan) -> Result<ScriptOutcome, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in &plan.buckets {
            invocation.key(&bucket.key);
        }
        for arg in script_args(plan) {
            invocation.arg(arg);
        }
        let reply: Vec<i64> = self.bounded(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        let (admitted, now, states) = match reply.as_slice() {
            [admitted, now, states @ ..] if states.len() == plan.buckets.len() => (*admitted, *now, states),
            _ => return Err(StoreError(format!("unexpected script reply of {} values", reply.len()))),
        };
        let unsigned = |v: i64| u64::try_from(v).map_err(|_| StoreError(format!("negative value {v} in the script reply")));
        Ok(ScriptOutcome {
            admitted: admitted == 1,
            now_us: unsigned(now)?,
            states: states.iter().map(|s| unsigned(*s)).collect::<Result<_, _>>()?,
        })
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.bounded(|mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError(format!("PING answered {pong:?}")))
        }
    }
}
