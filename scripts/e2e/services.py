"""Services the e2e tests run beside the gateways: a throwaway Redis and `gatewarden-ratelimit`, plus the
config of Envoy's native `envoy.filters.http.ratelimit` filter that points at it. Stdlib only.

    from services import RedisServer, RateLimitService, native_ratelimit_filter, rls_actions
    with RedisServer(workdir) as redis, RateLimitService(workdir, policy, redis.url) as rls:
        gw = start_gateway({}, clusters={"gatewarden_rls": rls.cluster()},
                           native_filters=[native_ratelimit_filter("gatewarden_rls", [rls_actions("api/per_ip", "remote_address")])])
        redis.stop()      # Redis down: checks answer UNAVAILABLE / 500 within --redis-timeout-ms
        redis.restart()   # same port; the service reconnects
        redis.pause()     # SIGSTOP: a Redis that accepts but never answers; resume() answers again

- RedisServer: Debian's `redis-server` on a free loopback port (Redis refuses port 0; a port someone else took
  first is detected and another one tried), no persistence, its log in <workdir>/redis-<port>.log.
- RateLimitService: the service binary ($GATEWARDEN_RATELIMIT, else target/debug/gatewarden-ratelimit, built
  by cargo when out of date) with the policy given as a dict, text or path; listeners on port 0, read back
  from the one line it prints; its log in <workdir>/ratelimit.log. `check_json`, `health`, `metrics`,
  `reload(policy)` (SIGHUP).
Both stop on stop()/__exit__, at exit (harness' atexit) and when the test process dies (PR_SET_PDEATHSIG).
`redis_missing()` says why Redis cannot run here (the tests skip, which fails under CI=true).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import harness

RATELIMIT_BIN_DEFAULT = harness.ROOT / "target" / "debug" / "gatewarden-ratelimit"
_BUILT = False


def redis_missing() -> str | None:
    """Why `redis-server` cannot run here (None: it can)."""
    return None if shutil.which("redis-server") else "redis-server is not installed (scripts/setup.sh installs it)"


def ratelimit_binary() -> Path:
    """$GATEWARDEN_RATELIMIT, else the debug build (cargo build once per test process: a no-op when fresh)."""
    global _BUILT
    if os.environ.get("GATEWARDEN_RATELIMIT"):
        return Path(os.environ["GATEWARDEN_RATELIMIT"])
    if not _BUILT:
        subprocess.run(["cargo", "build", "--quiet", "-p", "gatewarden-ratelimit"], cwd=harness.ROOT, check=True, timeout=1200)
        _BUILT = True
    return RATELIMIT_BIN_DEFAULT


class RedisServer(harness._Stoppable):
    """A `redis-server` without persistence on 127.0.0.1 (started by the constructor)."""

    def __init__(self, workdir: str | os.PathLike[str], *, ready_timeout: float = 20.0) -> None:
        why = redis_missing()
        if why:
            raise RuntimeError(why)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        for _ in range(5):
            self.port = harness.free_port()
            if self._try_start():
                harness._live.add(self)
                return
        raise RuntimeError("redis-server did not start on any of 5 free ports")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def _try_start(self) -> bool:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--logfile", str(self.log_path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=harness._die_with_parent)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # the port was taken
            if self.ping():
                time.sleep(0.05)  # ours answered, unless ours is exiting because the port was taken
                return self.proc.poll() is None
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {self.ready_timeout}s")

    def ping(self) -> bool:
        """True when something on the port answers PING with PONG."""
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        """SIGKILL (as abrupt as a crash) and wait for the exit."""
        if self.proc is not None:
            if self.paused:
                self.resume()
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        harness._live.discard(self)

    def restart(self) -> None:
        """Starts again on the same port (empty: no persistence)."""
        self.stop()
        if not self._try_start():
            raise RuntimeError(f"redis-server could not start again on port {self.port}")
        harness._live.add(self)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted, nothing is answered (a Redis that is slow without bound)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def __enter__(self) -> "RedisServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RateLimitService(harness._Stoppable):
    """`gatewarden-ratelimit --policy <policy> --redis <redis_url>` on loopback port 0 (started by the
    constructor). policy: a dict (written as JSON), text, or a path."""

    def __init__(self, workdir: str | os.PathLike[str], policy: Any, redis_url: str, *, domain: str | None = None,
                 redis_timeout_ms: int = 100, extra_args: Sequence[str] = (), ready_timeout: float = 30.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy_path = self.workdir / "ratelimit-policy.json"
        self._write_policy(policy)
        self.log_path = self.workdir / "ratelimit.log"
        cmd = [str(ratelimit_binary()), "--policy", str(self.policy_path), "--grpc-addr", "127.0.0.1:0",
               "--http-addr", "127.0.0.1:0", "--redis", redis_url, "--redis-timeout-ms", str(redis_timeout_ms),
               *(["--domain", domain] if domain else []), *extra_args]
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                         env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
                                         preexec_fn=harness._die_with_parent)
        harness._live.add(self)
        line = self._first_line(ready_timeout)
        words = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        self.grpc_port = int(words["grpc"].rsplit(":", 1)[1])
        self.http_port = int(words["http"].rsplit(":", 1)[1])

    def _write_policy(self, policy: Any) -> None:
        if isinstance(policy, dict):
            self.policy_path.write_text(json.dumps(policy))
        elif isinstance(policy, Path):
            self.policy_path.write_bytes(policy.read_bytes())
        else:
            self.policy_path.write_text(policy)

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.stop()
            raise RuntimeError(f"gatewarden-ratelimit printed nothing in {timeout}s; log:\n{self.log_tail()}")
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"gatewarden-ratelimit did not start ({line!r}); log:\n{self.log_tail()}")
        return line

    def cluster(self) -> tuple[str, int, bool]:
        """The gRPC listener as a harness cluster: `clusters={"gatewarden_rls": rls.cluster()}`."""
        return ("127.0.0.1", self.grpc_port, True)

    @property
    def http_address(self) -> str:
        """`host:port` of the HTTP listener (what a Kong policy names)."""
        return f"127.0.0.1:{self.http_port}"

    def _http(self, method: str, path: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                     headers={"content-type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def check_json(self, request: dict[str, Any]) -> tuple[int, Any]:
        """POST /json: (status, parsed JSON body, or the text when it is not JSON)."""
        status, body = self._http("POST", "/json", json.dumps(request).encode())
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def health(self) -> tuple[int, str]:
        status, body = self._http("GET", "/healthcheck")
        return status, body.decode(errors="replace")

    def metrics(self) -> dict[str, int]:
        """GET /metrics as {name{labels}: value}."""
        _, body = self._http("GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = int(value)
        return out

    def reload(self, policy: Any) -> None:
        """Writes a new policy and sends SIGHUP (a refused one is logged; the limits in force stay)."""
        self._write_policy(policy)
        self.proc.send_signal(signal.SIGHUP)

    def log_tail(self, lines: int = 100) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        harness._live.discard(self)

    def __enter__(self) -> "RateLimitService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rls_actions(limit: str, *parts: str | tuple[str, str]) -> dict[str, Any]:
    """One route rate limit (one descriptor) in the fleet contract's order: the `gatewarden_limit` entry naming
    `"<rule>/<limit>"`, then one action per key part: "remote_address", or (header_name, descriptor_key) for a
    request header."""
    actions: list[dict[str, Any]] = [{"generic_key": {"descriptor_key": "gatewarden_limit", "descriptor_value": limit}}]
    for part in parts:
        if part == "remote_address":
            actions.append({"remote_address": {}})
        elif isinstance(part, tuple):
            actions.append({"request_headers": {"header_name": part[0], "descriptor_key": part[1]}})
        else:
            raise ValueError(f"unknown key part {part!r}")
    return {"actions": actions}


def native_ratelimit_filter(cluster: str, rate_limits: Sequence[dict[str, Any]], *, domain: str = "gatewarden",
                            failure_mode_deny: bool = True, timeout: str = "1s") -> dict[str, Any]:
    """Envoy's own `envoy.filters.http.ratelimit`, calling the RLS at `cluster` over gRPC, with its descriptors
    set on the filter (`rate_limits`, applied to every route): a harness `native_filters` item.
    failure_mode_deny: the answer when the service fails or times out (true: 500; false: let through)."""
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "failure_mode_deny": failure_mode_deny,
            "timeout": timeout,
            "rate_limits": list(rate_limits),
            "rate_limit_service": {"transport_api_version": "V3",
                                   "grpc_service": {"envoy_grpc": {"cluster_name": cluster}}},
        },
    }
