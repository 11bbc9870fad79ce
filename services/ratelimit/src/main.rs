//! `gatewarden-ratelimit --policy rate_limit.json --redis redis://127.0.0.1:6379`: serves
//! `ShouldRateLimit` over gRPC and `POST /json`, `GET /healthcheck`, `GET /metrics` over HTTP/1.1.
//!
//! Once both listeners are bound it prints one line to stdout, `listening grpc=<addr> http=<addr>` (so a port
//! 0 can be used and read back). Logs go to stderr (`RUST_LOG`, default `info`). SIGHUP re-reads the policy
//! file: a refused file is logged and the limits in force are kept. SIGTERM or SIGINT stops the service.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gatewarden_ratelimit::grpc::RateLimitServer;
use gatewarden_ratelimit::limits::LimitBook;
use gatewarden_ratelimit::service::RateLimiter;
use gatewarden_ratelimit::store::RedisStore;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// The domain when neither `--domain` nor the policy's `fleet.domain` gives one.
const DEFAULT_DOMAIN: &str = "gatewarden";
/// How long a stop waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "gatewarden-ratelimit",
    version,
    about = "Rate limit service: limits from a Gatewarden rate-limit policy, GCRA counters in Redis"
)]
struct Args {
    /// The rate-limit policy file (JSON), the same the filter uses.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// gRPC listen address (`envoy.service.ratelimit.v3.RateLimitService`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    grpc_addr: SocketAddr,
    /// HTTP/1.1 listen address (`POST /json`, `GET /healthcheck`, `GET /metrics`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Redis URL.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Bound on each Redis call, connecting included (1 to 60,000); past it the check answers UNAVAILABLE / 500.
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    redis_timeout_ms: u64,
    /// The rate limit domain served (default: the policy's `fleet.domain`, else `gatewarden`). Requests for
    /// another domain get OK with no limit.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
}

fn load(path: &PathBuf) -> Result<LimitBook, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    LimitBook::from_policy(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let book = load(&args.policy)?;
    let domain = args.domain.clone().or_else(|| book.domain.clone()).unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
    if domain.is_empty() {
        return Err("--domain: must not be empty".into());
    }
    log::info!("policy {} ({}): {} limits {:?}, domain {domain:?}", args.policy.display(), book.policy_version, book.len(), book.names());
    let store = RedisStore::new(&args.redis, Duration::from_millis(args.redis_timeout_ms)).map_err(|e| format!("--redis: {e}"))?;
    let limiter = Arc::new(RateLimiter::new(book, domain, store));

    let grpc_listener = TcpListener::bind(args.grpc_addr).await.map_err(|e| format!("--grpc-addr {}: {e}", args.grpc_addr))?;
    let http_listener = TcpListener::bind(args.http_addr).await.map_err(|e| format!("--http-addr {}: {e}", args.http_addr))?;
    let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc = tonic::transport::Server::builder()
        .add_service(RateLimitServer(Arc::clone(&limiter)))
        .serve_with_incoming_shutdown(tokio_stream_of(grpc_listener), stopped(stop_rx.clone()));
    let http =
        axum::serve(http_listener, gatewarden_ratelimit::http::router(Arc::clone(&limiter))).with_graceful_shutdown(stopped(stop_rx));
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(async move { http.await });

    // Handlers first: a supervisor may signal as soon as it has read the line below.
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    println!("listening grpc={grpc_addr} http={http_addr}");
    let _ = std::io::stdout().flush();
    log::info!("serving gRPC on {grpc_addr}, HTTP on {http_addr}");

    loop {
        tokio::select! {
            _ = hangup.recv() => match load(&args.policy) {
                Ok(book) => {
                    log::info!("reloaded {} ({}): {} limits", args.policy.display(), book.policy_version, book.len());
                    limiter.replace_limits(book);
                }
                Err(message) => {
                    limiter.counters.reload_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::error!("reload refused, the limits in force are kept: {message}");
                }
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    log::info!("stopping");
    let _ = stop_tx.send(true);
    // In-flight checks finish; connections a client keeps open do not hold the exit past the grace period.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    if drained.is_err() {
        log::warn!("connections still open after {} s: exiting", SHUTDOWN_GRACE.as_secs());
    }
    Ok(())
}

/// The accepted connections of a listener, as tonic's `serve_with_incoming` takes them.
fn tokio_stream_of(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}
