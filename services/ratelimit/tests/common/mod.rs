//! Fixtures of the service's integration tests: a throwaway `redis-server` on a free loopback port, the
//! service binary on port-0 listeners, a tonic client over the policy crate's prost messages, and a tiny
//! HTTP/1.1 client for `/json` and `/healthcheck`. Every process started here is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatewarden_rate_limit_policy::rls::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse, GRPC_METHOD, GRPC_SERVICE};
use tonic::transport::Channel;

/// Bounds every wait of these tests (a hang guard, never an assertion about speed).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `None` (and a message) when `redis-server` is not installed, so local runs skip; under `CI=true` a
/// missing `redis-server` fails the test (scripts/setup.sh installs it).
pub fn redis_server_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "redis-server is not installed (scripts/setup.sh installs it)");
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server, or scripts/setup.sh)");
    }
    found
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("gw-rls-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now (Redis refuses `--port 0`), never the same twice in this
/// process (the kernel may hand a just-closed port out again to a parallel test).
pub fn free_port() -> u16 {
    static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut issued = ISSUED.lock().unwrap();
        if !issued.contains(&port) {
            issued.push(port);
            return port;
        }
    }
}

/// A `redis-server` without persistence on a free loopback port.
pub struct Redis {
    binary: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts on a free port; another free port if someone else took that one first.
    pub fn start(binary: &Path, dir: &Path) -> Redis {
        for _ in 0..5 {
            let mut redis = Redis { binary: binary.to_owned(), dir: dir.to_owned(), port: free_port(), child: None };
            if redis.try_start() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts again on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server did not start again on port {}", self.port);
    }

    /// Starts and waits until it answers PING; false when our process exited (the port was taken: the
    /// PING answered is then someone else's).
    fn try_start(&mut self) -> bool {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().unwrap().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if self.pings() {
                // Answered: ours, unless ours is exiting right now because the port was taken.
                std::thread::sleep(Duration::from_millis(50));
                return self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none());
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL: as abrupt as a crash) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts connections but never answers (slow), then answers again.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap();
        let status = Command::new("kill").arg(if paused { "-STOP" } else { "-CONT" }).arg(pid.to_string()).status().unwrap();
        assert!(status.success());
    }

    /// A redis-rs connection for inspecting keys.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
        }
        self.stop();
    }
}

/// The service binary, on port-0 listeners.
pub struct Service {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Service {
    pub fn start(policy: &Path, redis_url: &str, extra: &[&str]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatewarden-ratelimit"))
            .arg("--policy")
            .arg(policy)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--redis", redis_url])
            .args(if extra.contains(&"--redis-timeout-ms") { &[][..] } else { &["--redis-timeout-ms", "2000"][..] })
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = |name: &str| -> SocketAddr {
            let prefix = format!("{name}=");
            let word = line.split_whitespace().find_map(|w| w.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name}= in {line:?}"));
            word.parse().unwrap()
        };
        Service { grpc: addr("grpc"), http: addr("http"), child }
    }

    pub async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap();
        Client(tonic::client::Grpc::new(channel))
    }

    /// `(status, body)` of a `/json` call.
    pub fn json(&self, body: &str) -> (u16, String) {
        http(self.http, "POST", "/json", body)
    }

    pub fn health(&self) -> (u16, String) {
        http(self.http, "GET", "/healthcheck", "")
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the service did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `-HUP`) to the service.
    pub fn signal(&self, signal: &str) {
        assert!(Command::new("kill").arg(signal).arg(self.child.id().to_string()).status().unwrap().success());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC client of `ShouldRateLimit`.
#[derive(Clone)]
pub struct Client(tonic::client::Grpc<Channel>);

impl Client {
    pub async fn check(&mut self, request: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        self.0.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
        let path = format!("/{GRPC_SERVICE}/{GRPC_METHOD}").parse().unwrap();
        let codec = tonic_prost::ProstCodec::<RateLimitRequest, RateLimitResponse>::default();
        let call = self.0.unary(tonic::Request::new(request), path, codec);
        match tokio::time::timeout(PATIENCE, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => panic!("ShouldRateLimit did not answer within {PATIENCE:?}: the service hangs"),
        }
    }
}

/// A request of `domain` "gatewarden" with one descriptor per `(limit, entries)`.
pub fn request(hits: u32, descriptors: &[(&str, &[(&str, &str)])]) -> RateLimitRequest {
    RateLimitRequest {
        domain: "gatewarden".into(),
        hits_addend: hits,
        descriptors: descriptors
            .iter()
            .map(|(limit, entries)| {
                let mut all = vec![("gatewarden_limit", *limit)];
                all.extend(entries.iter().copied());
                RateLimitDescriptor::from_entries(all)
            })
            .collect(),
    }
}

/// One HTTP/1.1 exchange with `Connection: close`: `(status, body)`.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: rls\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
