"""End-to-end tests of the glue's request pipeline (shared/glue: pipeline.rs, waiting.rs) in a real
Envoy and in Kong's engine, through the test-only module wasm-host/test-modules/pipeline (filter
"test_pipeline"; its rules are in its lib.rs): a rule may wait for the request body, then ask an
HTTP service, then a gRPC service (Envoy), and decides from what they answer.

What each case proves on the real hosts (the Wasm-host tests, wasm-host/tests/pipeline.rs, cover
the same ground on the simulated profiles):
- body: Envoy's chunks are buffered and the body is decided on whole; Kong's one call carries
  it; a chunked body is read on Envoy and unavailable on Kong (failure_mode decides: the engine
  calls no body callback for an empty one, which would pass undecided); a decision after the body changes no header (the headers went on so the body could come); past max_bytes the filter answers 413 itself; a body nginx spilled to a temp file (over
  client_body_buffer_size) cannot be read on Kong and fails by failure_mode (503), while Envoy
  reads the same body.
- HTTP callout: the request waits (paused) and resumes on the answer, on both hosts: the answer
  allows (the request reaches the upstream with its body) or denies; a service slower than the
  callout's timeout fails by failure_mode. On Kong this also proves the token routing: the engine
  delivers the answer on the root context.
- gRPC callout (Envoy): a real gRPC server (grpcio, raw bytes) answers; its message is echoed
  upstream; a PERMISSION_DENIED status and a deadline fail by failure_mode.
- a client that goes away while its request waits for a callout: the parked request is dropped
  and counted (waiting_abandoned), and the next requests still work.
- Kong: a policy with a gRPC step is refused at configure time (the engine has no gRPC): the
  filter's requests get 503 no_policy, nothing traps, and the refusal names the field path.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from typing import Any

import pytest

import harness
from harness import BaseGateway, Response

# The test-only module is a .wasm (the glue's pipeline on the Proxy-Wasm ABI); the native module has
# no such filter. The native runtime's body and callouts run in the validation, JWT, geo database
# and fleet rate-limit cases instead.
pytestmark = pytest.mark.wasm_only("the test-only pipeline filter is a .wasm module "
                                   "(wasm-host/test-modules/pipeline); the native module has none")

FILTER = "test_pipeline"
FORBIDDEN = b'{"error":"forbidden","message":"access denied by policy"}'
TOO_LARGE = b'{"error":"payload_too_large","message":"request body too large"}'
UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'
CALLOUT_TIMEOUT_MS = 500
SLOW_SECONDS = 2.0  # what the services wait on "slow": well past the callout timeout
MAX_BODY = 64
BIG_BODY = 100_000  # over nginx's client_body_buffer_size (16k): spilled to a temp file on Kong
# On ngx_wasm_module 3bed278 a local response sent where a callout with a body got an answer
# without one (it failed: timed out; or the service answered with an empty body) aborts the worker
# (the engine empties the response's body buffer after the callback, then asserts in
# ngx_http_wasm_wev_handler). The glue works around it (shared/glue/src/waiting.rs, `guard`):
# these cases prove no worker aborts (a client would get no answer) and the answers are right.


# --------------------------------------------------------------------------------------------
# The services the module calls


class _AuthzHandler(harness._QuietHandler):
    """POST /check: "deny" in the body answers 200 "deny"; "forbid" 403; "empty" 403 with no body;
    "slow" waits SLOW_SECONDS; "error" 500; anything else 200 "ok". Every body is recorded."""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = self._read_body()
        self.server.seen.append(body)  # type: ignore[attr-defined]
        if b"slow" in body:
            time.sleep(SLOW_SECONDS)
        if b"forbid" in body:
            self._send(403, b"no", "text/plain")
        elif b"empty" in body:
            self._send(403, b"", "text/plain")
        elif b"error" in body:
            self._send(500, b"oops", "text/plain")
        elif b"deny" in body:
            self._send(200, b"deny", "text/plain")
        else:
            self._send(200, b"ok", "text/plain")


class AuthzServer(harness._Server):
    def __init__(self) -> None:
        super().__init__(_AuthzHandler)
        self.httpd.seen = []  # type: ignore[attr-defined]

    @property
    def seen(self) -> list[bytes]:
        return self.httpd.seen  # type: ignore[attr-defined]


class GrpcServer:
    """A unary gRPC service test.Authz/Check on raw bytes: "deny" answers "deny"; "fail" aborts
    with PERMISSION_DENIED; "slow" waits SLOW_SECONDS; else answers b"echo:" + the message."""

    def __init__(self) -> None:
        import grpc  # scripts/setup.sh installs grpcio into the venv

        def check(request: bytes, context: Any) -> bytes:
            self.seen.append(request)
            if b"slow" in request:
                time.sleep(SLOW_SECONDS)
            if b"fail" in request:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
            if b"deny" in request:
                return b"deny"
            return b"echo:" + request

        self.seen: list[bytes] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        method = grpc.unary_unary_rpc_method_handler(check)  # no (de)serializers: raw bytes
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Authz", {"Check": method}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


def policy(host: str, authz_port: int, grpc: bool) -> dict[str, Any]:
    """Rules: /body (body up to MAX_BODY), /big (body up to 1 MB), /http (body, then HTTP callout),
    /call (HTTP callout on the headers), /plain (decides on the headers), /grpc (gRPC callout,
    when `grpc`)."""
    http_target = "pipeline_authz" if harness.engine(host) == "envoy" else f"127.0.0.1:{authz_port}"
    http = {"upstream": http_target, "authority": "authz", "path": "/check", "timeout_ms": CALLOUT_TIMEOUT_MS}
    rules: list[dict[str, Any]] = [
        {"name": "body", "match": {"path_prefix": "/body"}, "body": {"max_bytes": MAX_BODY}},
        {"name": "big", "match": {"path_prefix": "/big"}, "body": {"max_bytes": 1_000_000}},
        {"name": "http", "match": {"path_prefix": "/http"}, "body": {"max_bytes": MAX_BODY}, "http": http},
        # An HTTP callout on the headers (no body step): the path is what the service gets.
        {"name": "call", "match": {"path_prefix": "/call"}, "http": http},
        {"name": "plain", "match": {"path_prefix": "/plain"}},
    ]
    if grpc:
        # No body step: the message is the request path, and the answer is echoed in a header
        # (a decision made after the body could change no header).
        rules.append({"name": "grpc", "match": {"path_prefix": "/grpc"},
                      "grpc": {"upstream": "pipeline_grpc", "service": "test.Authz", "method": "Check",
                               "timeout_ms": CALLOUT_TIMEOUT_MS}})
    return {"policy_version": "pipe-1", "failure_mode": "deny", "rules": rules}


class Setup:
    def __init__(self, gw: BaseGateway, authz: AuthzServer, grpc: GrpcServer | None) -> None:
        self.gw, self.authz, self.grpc = gw, authz, grpc


@pytest.fixture(scope="module")
def setup(start_module_gateway, host: str):
    module = harness.pipeline_module()
    authz = AuthzServer()
    grpc_server = GrpcServer() if harness.engine(host) == "envoy" else None
    clusters = {"pipeline_authz": ("127.0.0.1", authz.port, False)}
    if grpc_server is not None:
        clusters["pipeline_grpc"] = ("127.0.0.1", grpc_server.port, True)
    try:
        gw = start_module_gateway({FILTER: policy(host, authz.port, grpc_server is not None)},
                                  modules={FILTER: module}, clusters=clusters)
        yield Setup(gw, authz, grpc_server)
    finally:
        authz.stop()
        if grpc_server is not None:
            grpc_server.stop()


def post(gw: BaseGateway, path: str, body: bytes, timeout: float = 5.0) -> Response:
    return gw.get(path, method="POST", body=body, headers={"content-type": "application/octet-stream"},
                  timeout=timeout)


def assert_local(r: Response, status: int, body: bytes) -> None:
    assert r.status == status, (r.status, r.text)
    assert r.is_local_body(body), r.body


def assert_reached_upstream(r: Response, body: bytes) -> dict[str, str]:
    assert r.status == 200, (r.status, r.text)
    data = r.json()
    assert data["body_len"] == len(body), data
    return data["headers"]


def assert_allowed_after_body(r: Response, body: bytes) -> None:
    """Allowed with its whole body, and no header changed: the headers went on before the body."""
    upstream = assert_reached_upstream(r, body)
    assert "x-pipeline" not in upstream and "x-gatewarden-test-pipeline" not in upstream, upstream


# --------------------------------------------------------------------------------------------
# Bodies


def test_body_is_decided_on_whole_and_forwarded(setup: Setup) -> None:
    gw = setup.gw
    mark = gw.log_mark()
    assert_allowed_after_body(post(gw, "/body", b"hello"), b"hello")
    assert_local(post(gw, "/body", b"please deny this"), 403, FORBIDDEN)
    gw.wait_decision(mark, reason="body_denied", rule="body", policy_version="pipe-1")
    # A request without a body is decided on its headers (Kong: from content-length).
    r = gw.get("/body")
    assert r.status == 200, r.text
    assert r.upstream_headers["x-pipeline"] == "body=0;http=-;grpc=-", r.upstream_headers
    assert r.upstream_headers["x-gatewarden-test-pipeline"] == "allow; rule=body; version=pipe-1"


def test_body_past_max_bytes_is_refused_with_413(setup: Setup) -> None:
    gw = setup.gw
    before = harness.counter_snapshot(gw, FILTER)
    assert_local(post(gw, "/body", b"x" * (MAX_BODY + 1)), 413, TOO_LARGE)
    assert_allowed_after_body(post(gw, "/body", b"x" * MAX_BODY), b"x" * MAX_BODY)
    changes = harness.counter_changes(before, harness.counter_snapshot(gw, FILTER))
    assert changes.get("denied_body_too_large") == 1 and changes.get("body_too_large") == 1, changes


def test_a_body_nginx_spilled_to_a_file_fails_closed_on_kong_only(setup: Setup, host: str) -> None:
    gw = setup.gw
    body = b"y" * BIG_BODY
    r = post(gw, "/big", body)
    if harness.engine(host) == "envoy":
        assert_allowed_after_body(r, body)
    else:
        assert_local(r, 503, UNAVAILABLE)
        gw.wait_for_counter(FILTER, "body_unavailable", 1)


def chunked_post(gw: BaseGateway, path: str, chunks: list[bytes]) -> Response:
    """A POST whose body is sent chunked (no content-length), as raw HTTP/1.1."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    conn = harness.http.client.HTTPConnection(gw.host_address, gw.port, timeout=5)
    try:
        conn.putrequest("POST", path)
        conn.putheader("transfer-encoding", "chunked")
        conn.endheaders(body)
        resp = conn.getresponse()
        r = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), gw.host)
    finally:
        conn.close()
        gw._count_requests(1)
    return r


def test_chunked_body_is_read_on_envoy_and_unavailable_on_kong(setup: Setup, host: str) -> None:
    """Kong's engine calls no body callback for a chunked request whose body is empty (seen: such
    a request reached the upstream undecided while the filter waited), so there any chunked
    body counts as unreadable and failure_mode decides; Envoy ends every body and reads it."""
    gw = setup.gw
    empty, denied = chunked_post(gw, "/body", []), chunked_post(gw, "/body", [b"please ", b"deny"])
    if harness.engine(host) == "envoy":
        assert_allowed_after_body(empty, b"")
        assert_local(denied, 403, FORBIDDEN)
    else:
        assert_local(empty, 503, UNAVAILABLE)
        assert_local(denied, 503, UNAVAILABLE)
    assert gw.settled_counters(FILTER).get("waiting_abandoned", 0) == 0, "no request passed undecided"


# --------------------------------------------------------------------------------------------
# HTTP callouts


def test_http_callout_answer_allows_or_denies(setup: Setup) -> None:
    gw, authz = setup.gw, setup.authz
    seen = len(authz.seen)
    assert_allowed_after_body(post(gw, "/http", b"fine"), b"fine")
    assert authz.seen[seen:] == [b"fine"], "the service got the request body"
    assert_local(post(gw, "/http", b"deny"), 403, FORBIDDEN)
    assert_local(post(gw, "/http", b"forbid"), 403, FORBIDDEN)
    assert_local(post(gw, "/http", b"error"), 503, UNAVAILABLE)


def test_http_callout_on_the_headers_sets_headers(setup: Setup) -> None:
    gw, authz = setup.gw, setup.authz
    r = post(gw, "/call/fine", b"some body")
    upstream = assert_reached_upstream(r, b"some body")
    assert upstream["x-pipeline"] == "body=-;http=200;grpc=-", upstream
    assert upstream["x-gatewarden-test-pipeline"] == "allow; rule=call; version=pipe-1", upstream
    assert authz.seen[-1] == b"/call/fine", "without a body step the service gets the path"
    assert_local(post(gw, "/call/forbid", b""), 403, FORBIDDEN)


def test_http_callout_timeout_fails_by_failure_mode(setup: Setup) -> None:
    gw = setup.gw
    before = harness.counter_snapshot(gw, FILTER)
    mark = gw.log_mark()
    assert_local(gw.get("/call/slow"), 503, UNAVAILABLE)
    gw.wait_decision(mark, reason="callout_failed", rule="call")
    changes = harness.counter_changes(before, harness.counter_snapshot(gw, FILTER))
    assert changes.get("denied_callout_failed") == 1, changes
    # Envoy and Kong both report a timed-out callout as an answer without headers; the glue
    # calls it a timeout when the deadline has passed by the host clock.
    assert changes.get("callout_timeout") == 1, changes
    # The service's late answer changes nothing: the next request works.
    assert_allowed_after_body(post(gw, "/http", b"fine"), b"fine")


def test_http_callout_timeout_with_failure_mode_allow_lets_it_through(start_gateway, host: str) -> None:
    """A timed-out callout with failure_mode allow: the request goes on, marked, and the timeout
    is counted as one. A header sent twice takes the glue's other way around the Kong defect
    (see the top): still allowed; and if it is the decision header, Kong refuses it (503: that
    host would forward the client's copy), Envoy replaces it."""
    authz = AuthzServer()
    try:
        open_policy = {**policy(host, authz.port, grpc=False), "failure_mode": "allow"}
        gw = start_gateway({FILTER: open_policy}, modules={FILTER: harness.pipeline_module()},
                           clusters={"pipeline_authz": ("127.0.0.1", authz.port, False)})
        upstream = assert_reached_upstream(gw.get("/call/slow"), b"")
        assert upstream["x-pipeline-failure"] == "callout_failed", upstream
        assert upstream["x-gatewarden-test-pipeline"] == "allow; rule=call; version=pipe-1", upstream
        counters = gw.settled_counters(FILTER)
        assert counters.get("callout_timeout") == 1 and counters.get("allowed") == 1, counters
        r = raw_get(gw, "/call/slow", [("x-twice", "1"), ("x-twice", "2")])
        assert r.status == 200, (r.status, r.text)
        assert r.upstream_headers["x-gatewarden-test-pipeline"] == "allow; rule=call; version=pipe-1"
        forged = "allow; rule=forged"
        r = raw_get(gw, "/call/slow", [("x-gatewarden-test-pipeline", forged),
                                       ("x-gatewarden-test-pipeline", forged)])
        if host == "kong":
            assert_local(r, 503, UNAVAILABLE)
        else:
            assert r.status == 200, (r.status, r.text)
            assert r.upstream_headers["x-gatewarden-test-pipeline"] == "allow; rule=call; version=pipe-1"
    finally:
        authz.stop()


def test_http_callout_after_the_body_times_out_by_failure_mode(setup: Setup) -> None:
    gw = setup.gw
    assert_local(post(gw, "/http", b"slow"), 503, UNAVAILABLE)
    assert_allowed_after_body(post(gw, "/http", b"fine"), b"fine")


def test_http_callout_answer_without_a_body_denies(setup: Setup) -> None:
    """A 403 with an empty body denies, on the headers and after the body (on Kong: no worker
    aborts; the service got the request, so the callout's body was sent)."""
    gw, authz = setup.gw, setup.authz
    seen = len(authz.seen)
    assert_local(gw.get("/call/empty"), 403, FORBIDDEN)
    assert_local(post(gw, "/http", b"empty"), 403, FORBIDDEN)
    assert authz.seen[seen:] == [b"/call/empty", b"empty"], authz.seen[seen:]
    assert_allowed_after_body(post(gw, "/http", b"fine"), b"fine")


def raw_get(gw: BaseGateway, path: str, headers: list[tuple[str, str]]) -> Response:
    """A GET with `headers` as given (a name may repeat), as raw HTTP/1.1."""
    conn = harness.http.client.HTTPConnection(gw.host_address, gw.port, timeout=5)
    try:
        conn.putrequest("GET", path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        r = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), gw.host)
    finally:
        conn.close()
        gw._count_requests(1)
    return r


# --------------------------------------------------------------------------------------------
# gRPC callouts


@pytest.mark.hosts("envoy")
def test_grpc_callout_message_is_echoed(setup: Setup) -> None:
    gw, grpc_server = setup.gw, setup.grpc
    assert grpc_server is not None
    upstream = assert_reached_upstream(post(gw, "/grpc/hi", b"body"), b"body")
    assert upstream["x-pipeline-grpc"] == "echo:/grpc/hi", upstream
    assert upstream["x-pipeline"] == "body=-;http=-;grpc=13", upstream
    assert upstream["x-gatewarden-test-pipeline"] == "allow; rule=grpc; version=pipe-1", upstream
    assert grpc_server.seen[-1] == b"/grpc/hi"
    assert_local(post(gw, "/grpc/deny", b""), 403, FORBIDDEN)


@pytest.mark.hosts("envoy")
def test_grpc_error_status_and_deadline_fail_by_failure_mode(setup: Setup) -> None:
    gw = setup.gw
    before = harness.counter_snapshot(gw, FILTER)
    assert_local(post(gw, "/grpc/fail", b""), 503, UNAVAILABLE)
    assert_local(post(gw, "/grpc/slow", b""), 503, UNAVAILABLE)
    changes = harness.counter_changes(before, harness.counter_snapshot(gw, FILTER))
    assert changes.get("denied_grpc_failed") == 2, changes
    assert changes.get("callout_timeout") == 1, changes


@pytest.mark.hosts("kong")
def test_kong_refuses_a_grpc_policy_at_configure_time(start_gateway) -> None:
    authz = AuthzServer()
    try:
        gw = start_gateway({FILTER: policy("kong", authz.port, grpc=True)}, modules={FILTER: harness.pipeline_module()})
        gw.wait_for_log(r"policy refused: rules\[5\]\.grpc: gRPC callouts are not available on ngx_wasm_module")
        r = gw.get("/plain")
        assert_local(r, 503, UNAVAILABLE)
        gw.wait_for_counter(FILTER, "no_policy", 1)
        assert "trap" not in gw.log(), "nothing traps"
    finally:
        authz.stop()


# --------------------------------------------------------------------------------------------
# A client that goes away while its request waits


@pytest.mark.hosts("envoy")  # nginx does not notice a client gone while a dispatch waits: the
def test_client_gone_while_a_callout_waits(setup: Setup) -> None:  # request is decided as usual
    gw, authz = setup.gw, setup.authz
    before = harness.counter_snapshot(gw, FILTER)
    seen = len(authz.seen)
    body = b"slow"
    sock = socket.create_connection((gw.host_address, gw.port), timeout=5)
    try:
        sock.sendall(b"POST /call/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        # The request waits once its callout reached the service.
        harness.poll("the callout to reach the service", lambda: len(authz.seen) > seen, 5.0)
    finally:
        sock.close()
    gw.wait_for_counter(FILTER, "waiting_abandoned", before.get("waiting_abandoned", 0) + 1)
    # The next requests still work, and their callouts reach their own requests.
    results: list[Response] = []
    threads = [threading.Thread(target=lambda b=b: results.append(post(gw, "/http", b))) for b in (b"fine", b"deny")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == [200, 403], [(r.status, r.text) for r in results]
