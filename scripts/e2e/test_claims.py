"""Claims the docs make that no other test pinned (issue 12, "every claim pinned"), each on the real
hosts; the test fails if the claim is false.

- Path normalisation (docs/ip-geo.md): `/a/../admin`, `//admin`, `%2e%2e`, `%2F`, `/./admin` … cannot
  dodge a `path_prefix: /admin` rule, on Envoy (the shipped bootstrap's normalize_path,
  merge_slashes, UNESCAPE_AND_FORWARD) and on Kong's engine (the filter is given nginx's normalised
  URI); the upstream receives the path the filter judged on both (nginx: `proxy_pass` with a URI
  part). A prefix is a plain, case-sensitive string: `/ADMIN` is another path.
- `%RESPONSE_CODE_DETAILS%` in Envoy's access log is `gatewarden_<filter>_<reason>` for a denial
  (`via_upstream` when allowed), and `%REQ(x-gatewarden-ip-geo)%` logs the decision header.
- A request in flight keeps the policy it started with: its headers were decided under v1, v2 is
  pushed while the upstream holds it, it completes with v1's decision while a new request gets v2's.
- A refused policy at first start: what each host answers (Envoy 1.40: its own 500, empty body,
  response flag NFCF; Kong: the filter's 503 `no_policy` with the fixed body).
- JWKS fetch `timeout_ms`: the host ends a callout the JWKS server does not answer in time (Envoy
  with a 504 of its own, Kong's engine with no response); the fetch fails, requests follow
  `failure_mode`.
- Dry run inside a rollout (canary and shadow): what is sent upstream, logged and counted.
- `gatewarden rollback` to a history entry today's code refuses: refused, nothing written.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import conftest
import harness
from harness import BaseGateway, EchoUpstream
from jwtkit import SigningKey, exp_in, jwks_bytes

HEADER = "x-gatewarden-ip-geo"
FORBIDDEN = b'{"error":"forbidden","message":"access denied by policy"}'
UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'
ONE_HOP = {"xff_num_trusted_hops": 1}


def decision_header(r: harness.Response) -> str | None:
    assert r.upstream_headers is not None, (r.status, r.text)
    return r.upstream_headers.get(HEADER)


# --------------------------------------------------------------------------------------------
# 1. Path normalisation cannot dodge a prefix rule

ADMIN_DENIED = {
    "policy_version": "paths-1",
    "rules": [
        {"name": "admin", "match": {"path_prefix": "/admin"}, "deny": ["0.0.0.0/0", "::/0"]},
        {"name": "pub", "match": {"path_exact": "/pub"}},
    ],
    "default": {},
}

# Every spelling of /admin… a client could try. Each is denied by the filter (403, the fixed
# body), except the two that climb above the root, which nginx itself refuses (400) on Kong.
DODGES = [
    "/admin", "/admin/", "/admin/x", "/admin?x=1", "/admin;x",
    "/a/../admin", "/a/../admin/x", "/a/b/../../admin", "/a/./../admin", "/./admin", "/public/..//admin",
    "//admin", "///admin/x",
    "/a/%2e%2e/admin", "/a/%2E%2E/admin", "/%61dmin",
    "/admin%2fx", "/a/..%2fadmin", "/x%2f..%2fadmin", "/a%2F..%2Fadmin",
    "/../admin", "/%2e%2e/admin",
]
ABOVE_ROOT = {"/../admin", "/%2e%2e/admin"}


@pytest.fixture(scope="module")
def paths_gw(start_module_gateway) -> BaseGateway:
    return start_module_gateway({"ip_geo": ADMIN_DENIED}, ipv6=False)


@pytest.mark.parametrize("path", DODGES)
def test_no_spelling_of_a_prefix_dodges_the_rule(paths_gw: BaseGateway, path: str):
    gw = paths_gw
    before = gw.upstream.count if gw.upstream else 0
    r = gw.get(path)
    if gw.host == "kong" and path in ABOVE_ROOT:
        # nginx refuses a path above the root before any filter runs.
        assert r.status == 400, (path, r.status, r.text)
    else:
        assert (r.status, r.is_local_body(FORBIDDEN)) == (403, True), (path, r.status, r.text)
    assert gw.upstream is not None and gw.upstream.count == before, f"{path} reached the upstream"


def test_a_prefix_is_case_sensitive(paths_gw: BaseGateway):
    """`path_prefix` is a plain string prefix (Envoy's semantics): /ADMIN is another path, on
    both hosts; protect case-insensitive upstreams with a `path_regex` such as `(?i)/admin.*`."""
    for path in ("/ADMIN", "/Admin/x"):
        r = paths_gw.get(path)
        assert r.status == 200, (path, r.status, r.text)
        assert decision_header(r) == "allow; rule=default; version=paths-1", r.upstream_headers


@pytest.mark.parametrize("path", ["/a/../pub", "//pub", "/%70ub", "/x/..%2fpub", "/admin/../pub", "/admin/..%2Fpub",
                                  "/admin/../pub?q=a%20b&x=%2F..%2Fadmin"])
def test_rules_match_the_normalised_path_and_the_upstream_gets_it(paths_gw: BaseGateway, path: str):
    """The filter sees the normalised path on both hosts (`path_exact: /pub` matches), and the
    upstream receives that same path, so filter and upstream judge the same request: Envoy forwards
    the path it normalised; on Kong's engine the rendered `proxy_pass` has a URI part
    (scripts/nginxconf.py), so nginx forwards its normalised URI instead of the client's
    (`/admin/../pub` would otherwise reach the upstream as sent, and an upstream that routes on the
    raw path would take it for /admin). The query string is forwarded as sent, on both hosts."""
    gw = paths_gw
    r = gw.get(path)
    assert r.status == 200, (path, r.status, r.text)
    assert decision_header(r) == "allow; rule=pub; version=paths-1", (path, r.upstream_headers)
    query = path.partition("?")[2]
    assert r.json()["path"] == "/pub" + (f"?{query}" if query else ""), (path, r.json()["path"])


# --------------------------------------------------------------------------------------------
# 2. %RESPONSE_CODE_DETAILS% carries the denial reason (Envoy)

ACCESS_LOG = """\
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{path}"
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %REQ(:PATH)% [%REQ(X-GATEWARDEN-IP-GEO)%]\\n"
"""
ANCHOR = "          stat_prefix: ingress\n"


@pytest.fixture
def envoy_access_log(monkeypatch: pytest.MonkeyPatch):
    """Envoys started in this test write an access log (<workdir>/access.log: status, response
    code details, response flags, path, [the ip_geo decision header]). The shipped bootstrap has none: the harness's rendering is wrapped to add
    one to the HTTP connection manager."""
    original = harness.envoyconf.render

    def render(values: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> str:
        text = original(values, *args, **kwargs)
        assert text.count(ANCHOR) == 1, "deploy/envoy/envoy.yaml: no single `stat_prefix: ingress` line"
        path = Path(str((values or {})["ECDS_DIR"])).parent / "access.log"
        return text.replace(ANCHOR, ANCHOR + ACCESS_LOG.format(path=path))

    monkeypatch.setattr(harness.envoyconf, "render", render)


def access_log_lines(gw: BaseGateway, n: int) -> list[str]:
    """The first `n` access log lines (Envoy writes them asynchronously: polled)."""
    path = gw.workdir / "access.log"

    def lines() -> list[str] | None:
        got = path.read_text().splitlines() if path.exists() else []
        return got[:n] if len(got) >= n else None
    return harness.poll(f"{n} access log lines in {path}", lines, 10)


HS = SigningKey.generate("HS256", "hs-1")
ISSUER = "https://idp.claims.test"
JWT_POLICY = {
    "policy_version": "details-1",
    "providers": {"idp": {"issuer": ISSUER, "audiences": ["api"],
                          "local_jwks": json.loads(jwks_bytes([HS]))}},
    "rules": [{"name": "api", "match": {"path_prefix": "/api"}, "requires": {"provider": "idp"},
               "scopes": ["orders:read"]}],
    "default": {},
}
IP_POLICY = {"policy_version": "details-1", "client_address": ONE_HOP,
             "rules": [{"name": "block", "match": {"path_prefix": "/"}, "deny": ["192.0.2.0/24"]}], "default": {}}


@pytest.mark.hosts("envoy")
def test_response_code_details_carry_the_denial_reason(envoy_access_log, start_gateway):
    gw = start_gateway({"ip_geo": IP_POLICY, "jwt": JWT_POLICY}, ipv6=False)
    token = HS.sign({"iss": ISSUER, "aud": "api", "sub": "u1", "exp": exp_in(300), "scope": "orders:write"})
    sent = [
        (gw.get("/x", headers={"x-forwarded-for": "192.0.2.7"}), 403),                   # ip_geo: ip_denied
        (gw.get("/api/a", headers={"x-forwarded-for": "203.0.113.1"}), 401),              # jwt: missing
        (gw.get("/api/b", headers={"x-forwarded-for": "203.0.113.1",
                                   "authorization": f"Bearer {token}"}), 403),            # jwt: scope
        (gw.get("/open", headers={"x-forwarded-for": "203.0.113.1"}), 200),               # allowed
    ]
    assert [r.status for r, _ in sent] == [want for _, want in sent], [(r.status, r.text) for r, _ in sent]
    # The decision header the filter set is in Envoy's own access log too (%REQ(...)%), also on
    # a request a later filter (jwt) denied.
    allow = "allow; rule=block; version=details-1"
    assert access_log_lines(gw, 4) == [
        "403 gatewarden_ip_geo_ip_denied - /x [-]",
        f"401 gatewarden_jwt_missing - /api/a [{allow}]",
        f"403 gatewarden_jwt_scope - /api/b [{allow}]",
        f"200 via_upstream - /open [{allow}]",
    ]


# --------------------------------------------------------------------------------------------
# 3. A request in flight keeps the policy it started with

class HoldingUpstream(EchoUpstream):
    """The echo upstream, except that a request for /hold… is answered only once `release` is
    set (at most 60 s); `arrived` is set when one has come in, with the headers it came with."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.held_headers: dict[str, str] = {}
        super().__init__(host)
        outer = self
        base = self.httpd.RequestHandlerClass

        class Handler(base):  # type: ignore[misc, valid-type]
            def _echo(self) -> None:
                if self.path.startswith("/hold"):
                    outer.held_headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.arrived.set()
                    outer.release.wait(60)
                super()._echo()

            do_GET = _echo

        self.httpd.RequestHandlerClass = Handler

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def prepared_gateway(host: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Factory: prepared_gateway(prepare, filters, **kwargs) -> a gateway of `host` on which
    `prepare(gw)` has run after its fixture servers started and before the proxy starts (e.g. to
    swap the upstream or slow the JWKS server down before the first fetch); stopped after the test."""
    started: list[BaseGateway] = []
    request.node.stash.setdefault(conftest.GATEWAYS, []).append(started)  # logs on failure

    def start(prepare: Callable[[BaseGateway], None], filters: dict[str, Any], **kwargs: Any) -> BaseGateway:
        class Prepared(harness.GATEWAYS[host]):  # type: ignore[misc, valid-type]
            def _start_servers(self) -> None:
                super()._start_servers()
                prepare(self)

        gw = Prepared(tmp_path / f"{host}-{len(started)}", filters, **kwargs)
        started.append(gw)
        gw.start()
        return gw
    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


def hold_upstream(gw: BaseGateway) -> None:
    assert gw.upstream is not None
    gw.upstream.stop()
    gw.upstream = HoldingUpstream()


def test_a_request_in_flight_keeps_the_policy_it_started_with(prepared_gateway):
    """A request decided under v1 (its headers passed the filter) is held by the upstream while v2
    is pushed (Envoy: ECDS; Kong: a reload, whose old worker keeps the request); new requests get
    v2 while it waits; released, it completes (not reset, not failed) with v1's decision. The
    filters decide on the request headers only, so this pins that an update neither re-decides
    nor breaks a request in flight; a filter that waits (body, callout) needs its own case."""
    v1 = {"policy_version": "flight-1", "client_address": ONE_HOP, "default": {"deny": ["192.0.2.0/24"]}}
    v2 = {"policy_version": "flight-2", "client_address": ONE_HOP, "default": {"deny": ["198.51.100.0/24"]}}
    gw = prepared_gateway(hold_upstream, {"ip_geo": v1}, ipv6=False)
    upstream: HoldingUpstream = gw.upstream  # type: ignore[assignment]
    held: dict[str, Any] = {}

    def send() -> None:
        try:
            held["response"] = gw.get("/hold", headers={"x-forwarded-for": "198.51.100.7"}, timeout=90)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            held["error"] = e

    client = threading.Thread(target=send, name="held-request")
    client.start()
    try:
        harness.poll("the held request reached the upstream", upstream.arrived.is_set, 10)
        # Decided under v1: allowed (v2 would deny this client).
        assert upstream.held_headers.get(HEADER) == "allow; rule=default; version=flight-1", upstream.held_headers
        assert gw.push_policy("ip_geo", v2) == "success"
        # A new request is decided by v2.
        r = gw.get("/now", headers={"x-forwarded-for": "192.0.2.7"})
        assert r.status == 200 and decision_header(r) == "allow; rule=default; version=flight-2", (r.status, r.text)
        r = gw.get("/now", headers={"x-forwarded-for": "198.51.100.7"})
        assert r.status == 403, (r.status, r.text)
        assert client.is_alive(), f"the held request ended before it was released: {held}"
    finally:
        upstream.release.set()
        client.join(90)
    assert "error" not in held, held
    r = held["response"]
    # The request that started under v1 completes, with v1's decision, after v2 took over.
    assert r.status == 200, (r.status, r.text)
    assert decision_header(r) == "allow; rule=default; version=flight-1", r.upstream_headers


# --------------------------------------------------------------------------------------------
# 4. A refused policy at first start

REFUSED = {"policy_version": "bad-1", "default": {"deny": ["10.0.0.0/33"]}}


def test_refused_policy_at_first_start_fails_closed(start_gateway):
    """Envoy 1.40: the plugin's first configuration is refused (ECDS warming fails: the filter
    has no config and `apply_default_config_without_warming: false`), and Envoy itself answers
    every request of the listener with 500, an empty body, empty response code details and the
    response flag NFCF (no filter config found). Kong's engine:
    the filter keeps its VM and answers its own routes 503 with the fixed body (`no_policy`)."""
    gw = start_gateway({"ip_geo": REFUSED}, ipv6=False)
    r = gw.get("/x", source="127.0.0.2")
    assert gw.upstream is not None and gw.upstream.count == 0, "nothing reaches the upstream"
    if gw.engine == "envoy":
        assert r.status == 500, (r.status, r.headers, r.text)
        assert gw.ecds_counts("ip_geo").get("update_rejected", 0) >= 1, gw.ecds_counts("ip_geo")
    else:
        assert (r.status, r.is_local_body(UNAVAILABLE)) == (503, True), (r.status, r.body)
        assert gw.settled_counters("ip_geo").get("no_policy") == 1


@pytest.mark.hosts("envoy")
def test_refused_policy_at_first_start_details_on_envoy(envoy_access_log, start_gateway):
    gw = start_gateway({"ip_geo": REFUSED}, ipv6=False)
    r = gw.get("/x")
    assert r.status == 500, (r.status, r.text)
    # Empty details; response flag NFCF ("no filter config found"): Envoy answers before any
    # Wasm code runs, so the filter's own counters and body are not involved.
    assert access_log_lines(gw, 1) == ["500  NFCF /x [-]"]
    assert r.body == b"", r.body


# --------------------------------------------------------------------------------------------
# 5. JWKS fetch timeout_ms: the host times the callout out

@pytest.mark.parametrize("failure_mode,status", [("deny", 401), ("allow", 200)])
def test_jwks_fetch_times_out_after_timeout_ms(prepared_gateway, failure_mode: str, status: int):
    """The JWKS server answers only after 30 s; with `timeout_ms: 300` the host ends the callout
    (a response would have made it a success: fetch_succeeded stays 0), the fetch counts as failed,
    and requests follow failure_mode meanwhile."""
    key = SigningKey.generate("ES256", "ec-1")
    policy = {
        "policy_version": f"timeout-{failure_mode}",
        "failure_mode": failure_mode,
        "providers": {"idp": {"issuer": ISSUER, "remote_jwks": {
            "cluster": harness.upstream("jwks"), "path": "/slow.json", "timeout_ms": 300, "retry_seconds": 60}}},
        "default": {"requires": {"provider": "idp"}},
    }

    def slow_jwks(gw: BaseGateway) -> None:
        assert gw.jwks is not None
        gw.jwks.delay_seconds = 30.0

    gw = prepared_gateway(slow_jwks, {"jwt": policy}, jwks_files={"slow.json": jwks_bytes([key])}, ipv6=False)
    # How the host reports the timeout: Envoy's HTTP async client answers 504 itself; Kong's engine
    # calls back without a response.
    why = r"status 504" if gw.engine == "envoy" else r"no response \(connection failure or timeout\)"
    gw.wait_for_log(rf"gatewarden jwt: fetching jwks from \S+ failed: {why}", timeout=20)
    c = gw.settled_counters("jwt")
    assert c.get("jwks_fetch_failed", 0) >= 1 and c.get("jwks_fetch_succeeded", 0) == 0, c
    token = key.sign({"iss": ISSUER, "sub": "u1", "exp": exp_in(300)})
    r = gw.get("/api", headers={"authorization": f"Bearer {token}"})
    assert r.status == status, (r.status, r.text)


# --------------------------------------------------------------------------------------------
# 6. Dry run inside a rollout

def client(i: int) -> str:
    return f"100.64.{i // 256}.{i % 256}"


def from_client(gw: BaseGateway, ip: str, path: str = "/") -> harness.Response:
    return gw.get(path, headers={"x-forwarded-for": ip})


def shadow_lines(gw: BaseGateway, since: int = 0) -> list[dict[str, Any]]:
    return harness.json_records(gw.log(since), "shadow_disagreement")


def test_dry_run_candidate_under_canary_is_logged_as_the_candidate(start_gateway):
    """Canary at 100 % with a dry-run candidate that denies everyone: every request passes with the
    candidate's would-be denial upstream, one decision line per request names the candidate's
    version and `"rollout": "candidate"`, and the counts are the candidate's dry-run denials."""
    policy = {"policy_version": "v1", "client_address": ONE_HOP, "default": {},
              "rollout": {"percent": 100, "candidate": {
                  "policy_version": "v2", "mode": "dry_run", "client_address": ONE_HOP,
                  "rules": [{"name": "all", "deny": ["0.0.0.0/0"]}], "default": {}}}}
    gw = start_gateway({"ip_geo": policy}, ipv6=False)
    before = gw.settled_counters("ip_geo")
    mark = gw.log_mark()
    r = from_client(gw, "203.0.113.5")
    assert r.status == 200, (r.status, r.text)
    assert decision_header(r) == "dry_run_deny; reason=ip_denied; rule=all; version=v2"
    line = gw.wait_decision(mark, decision="dry_run_deny")
    assert (line["policy_version"], line.get("rollout"), line["reason"], line["rule"], line["client"]) == (
        "v2", "candidate", "ip_denied", "all", "203.0.113.5"), line
    got = harness.counter_changes(before, gw.settled_counters("ip_geo"))
    assert got == {"candidate_dry_run_denied": 1, "dry_run_denied": 1, "dry_run_denied_ip_denied": 1,
                   "rollout_candidate": 1}, got


def test_enforced_candidate_beside_a_dry_run_active_policy(start_gateway):
    """The active policy in dry run, the candidate enforcing, canary at 100 %: the candidate's
    denials are enforced (403) and counted as the candidate's; at 0 % the same request passes
    with the active policy's dry-run verdict."""
    def doc(percent: int) -> dict[str, Any]:
        return {"policy_version": "v1", "mode": "dry_run", "client_address": ONE_HOP,
                "default": {"deny": ["192.0.2.0/24"]},
                "rollout": {"percent": percent, "candidate": {
                    "policy_version": "v2", "client_address": ONE_HOP, "default": {"deny": ["192.0.2.0/24"]}}}}
    gw = start_gateway({"ip_geo": doc(100)}, ipv6=False)
    before = gw.settled_counters("ip_geo")
    mark = gw.log_mark()
    r = from_client(gw, "192.0.2.9")
    assert (r.status, r.is_local_body(FORBIDDEN)) == (403, True), (r.status, r.text)
    line = gw.wait_decision(mark, decision="deny")
    assert (line["policy_version"], line.get("rollout")) == ("v2", "candidate"), line
    got = harness.counter_changes(before, gw.settled_counters("ip_geo"))
    assert got == {"candidate_denied": 1, "denied": 1, "denied_ip_denied": 1, "rollout_candidate": 1}, got

    assert gw.push_policy("ip_geo", doc(0)) == "success"
    before = gw.settled_counters("ip_geo")
    mark = gw.log_mark()
    r = from_client(gw, "192.0.2.9")
    assert r.status == 200, (r.status, r.text)
    assert decision_header(r) == "dry_run_deny; reason=ip_denied; rule=default; version=v1"
    line = gw.wait_decision(mark, decision="dry_run_deny")
    assert (line["policy_version"], line.get("rollout")) == ("v1", "active"), line
    got = harness.counter_changes(before, gw.settled_counters("ip_geo"))
    assert got == {"dry_run_denied": 1, "dry_run_denied_ip_denied": 1, "rollout_active": 1}, got


def test_dry_run_candidate_under_shadow_is_compared_by_its_verdict(start_gateway):
    """Shadow with a dry-run candidate: modes are not compared, so a candidate that would deny
    where the active policy allows is a disagreement (logged, counted); nothing of the candidate
    reaches the upstream or the decision counters (no dry-run denial, no decision line of its own)."""
    policy = {"policy_version": "v1", "client_address": ONE_HOP, "default": {},
              "rollout": {"shadow": True, "candidate": {
                  "policy_version": "v2", "mode": "dry_run", "client_address": ONE_HOP,
                  "default": {"deny": ["198.51.100.0/24"]}}}}
    gw = start_gateway({"ip_geo": policy}, ipv6=False)
    before = gw.settled_counters("ip_geo")
    mark = gw.log_mark()
    r = from_client(gw, "198.51.100.7")
    assert r.status == 200, (r.status, r.text)
    assert decision_header(r) == "allow; rule=default; version=v1"
    assert from_client(gw, "203.0.113.1").status == 200
    got = harness.counter_changes(before, gw.settled_counters("ip_geo"))
    assert got == {"allowed": 2, "shadow_agreed": 1, "shadow_disagreed": 1}, got
    line = harness.poll("shadow disagreement line", lambda: shadow_lines(gw, mark), 5)[0]
    assert (line["active"], line["candidate"], line["candidate_version"]) == ("allow", "deny:ip_denied:403", "v2"), line
    assert gw.decisions(mark) == [], "no decision line for allowed requests or the shadow's verdict"


# --------------------------------------------------------------------------------------------
# 7. Rollback to a version today's code refuses

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    path = harness.cli_path()
    if not path.exists():
        pytest.skip(f"{path} missing (cargo build -p gatewarden)")
    return subprocess.run([str(path), *args], cwd=harness.ROOT, capture_output=True, text=True, timeout=60)


def blocklist(version: str, deny: str) -> str:
    return (f'filter: ip_geo\npolicy_version: "{version}"\nrules:\n  - name: blocklist\n'
            f'    match: {{ path_prefix: / }}\n    deny: ["{deny}/32"]\n')


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def updates(gw: harness.Gateway) -> dict[str, int]:
    """The filter's ECDS update attempts and outcomes (not the timing gauges Envoy sets after them)."""
    counts = gw.ecds_counts("ip_geo")
    return {k: counts.get(k, 0) for k in ("update_attempt", "update_success", "update_rejected", "update_failure")}


@pytest.mark.hosts("envoy")
@pytest.mark.parametrize("how", ["--version 1", "previous"])
def test_rollback_to_a_version_that_no_longer_validates_is_refused(start_gateway, tmp_path: Path, how: str):
    """History entry 1 holds a policy today's code refuses (as if written by an older version
    that accepted a field since removed; its sha256 matches, so only validation can refuse it).
    Rolling back to it is refused with the field path, nothing is written, Envoy sees no update
    and keeps enforcing the current version."""
    gw = start_gateway({"ip_geo": {"policy_version": "boot", "rules": []}}, ipv6=False)
    for version, deny in (("r.1", "127.0.0.5"), ("r.2", "127.0.0.6")):
        f = tmp_path / f"{version}.yaml"
        f.write_text(blocklist(version, deny))
        before = gw.ecds_counts("ip_geo")
        r = cli("apply", str(f), "--to", str(gw.ecds_dir), *gw.cli_target_args("ip_geo"), "--author", "ann")
        assert r.returncode == 0, r.stderr
        harness.poll("ECDS update", lambda: gw.ecds_counts("ip_geo").get("update_success", 0)
                     > before.get("update_success", 0), 10)
    entry_path = gw.ecds_dir / ".gatewarden" / "history" / "000001.json"
    entry = json.loads(entry_path.read_text())
    doc = json.loads(entry["policy_json"])
    doc["rules"][0]["legacy_weight"] = 3
    entry["policy_json"] = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    entry["sha256"] = hashlib.sha256(entry["policy_json"].encode()).hexdigest()
    entry_path.write_text(json.dumps(entry, indent=2))

    files = snapshot(gw.ecds_dir)
    before = updates(gw)
    args = ["rollback", "--to", str(gw.ecds_dir), "--author", "carol"] + (how.split() if how != "previous" else [])
    r = cli(*args)
    assert "rollback refused, nothing changed: version 1 no longer validates: rules[0].legacy_weight: " \
           "unknown field `legacy_weight`" in r.stderr, r.stderr
    assert r.stdout == "", r.stdout
    assert snapshot(gw.ecds_dir) == files, "nothing written (policy, history)"
    # Envoy takes a written file within ~5 ms: a write would have been counted in this window.
    harness.hold("no ECDS update after a refused rollback", lambda: updates(gw) == before, 0.3)
    r2 = gw.get("/", source="127.0.0.6")
    assert r2.status == 403, "r.2 still enforced"
    # docs/cli.md: exit 1 for a policy the filter refuses ("invalid"), 2 for "could not run".
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"


# --------------------------------------------------------------------------------------------
# `gatewarden geo-lookup` (docs/filters/ip-geo.md)

def test_geo_lookup_prints_the_country_of_each_address(mmdb, geo_db: Path):
    """`gatewarden geo-lookup DB.mmdb IP...`: one `address<TAB>country` line per address
    (`unknown` when the database has none; IPv4-mapped IPv6 counts as IPv4), with a test database
    and the free default one; an unreadable database or a non-address exits 2."""
    db = mmdb("lookup", "203.0.113.0/24=KP", "2001:db8::/32=IR")
    r = cli("geo-lookup", str(db), "203.0.113.9", "::ffff:203.0.113.9", "2001:db8::1", "198.51.100.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["203.0.113.9\tKP", "::ffff:203.0.113.9\tKP", "2001:db8::1\tIR",
                                     "198.51.100.1\tunknown"], r.stdout
    r = cli("geo-lookup", str(geo_db), "1.1.1.1", "8.8.8.8", "10.0.0.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1.1.1.1\tAU", "8.8.8.8\tUS", "10.0.0.1\tunknown"], r.stdout
    r = cli("geo-lookup", str(db), "not-an-address")
    assert r.returncode == 2 and 'not an address: "not-an-address"' in r.stderr, (r.returncode, r.stderr)
    r = cli("geo-lookup", str(db.with_name("missing.mmdb")), "1.1.1.1")
    assert r.returncode == 2 and "cannot read" in r.stderr, (r.returncode, r.stderr)
