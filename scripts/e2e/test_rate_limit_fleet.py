"""End-to-end tests of the rate-limit filter's fleet limits: two Envoys (--concurrency 2, our filter calling
`gatewarden-ratelimit` over gRPC) and the Kong engine (2 nginx workers, the same filter calling its
`POST /json` over HTTP/1.1) share one Redis-backed limit through the real service (services.py).

1. Per-call mode: a limit of N per hour under concurrent requests spread over the three gateways admits exactly
   N across all (GCRA in Redis, deny-if-any; the period is long enough that no unit refills during the run).
2. Failures: Redis stopped mid-run: each gateway applies its `fleet.failure_mode` (Envoy A deny: 503
   `fleet_unavailable`; Envoy B allow; Kong local: its own local limit), promptly (each request bounded by the
   client's 5 s); Redis back: the fleet limit is enforced again. Then the service itself stopped: the same
   failure modes, no hang.
3. Lease mode (K = 10 units per call, 10 s leases): calls per request under the limit, and accuracy and calls
   under overload (never more than the limit; a refused key is denied without a call for a while; figures
   reported).
The test starts both hosts itself: it runs once (marked envoy) and needs the Kong engine too.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from services import RateLimitService, RedisServer

pytestmark = pytest.mark.hosts("envoy")

FILTER = "rate_limit"
CLUSTER = "gatewarden_rls"
EXACT = 30      # rule "exact": 30 per hour (a unit refills every 120 s: none during the run)
RECOVER = 5     # rule "recover": 5 per hour, for the limit after Redis is back
LEASED = 100    # rule "leased": 100 per hour
LOCAL = 1000    # rule "fail": a limit the failure tests never reach
K = 10


def rules() -> list[dict[str, Any]]:
    def rule(name: str, rate: int) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": f"/{name}"}, "key": [{"header": "x-client"}],
                "limits": [{"name": "shared", "rate": rate, "per": "1h", "scope": "fleet"}]}
    return [rule("exact", EXACT), rule("recover", RECOVER), rule("leased", LEASED), rule("fail", LOCAL)]


def policy(address: str, version: str, *, failure_mode: str = "deny", lease: bool = False) -> dict[str, Any]:
    """One document for both proxies: Envoy calls the cluster, Kong the address."""
    fleet: dict[str, Any] = {"service": {"cluster": CLUSTER, "address": address, "timeout_ms": 1000},
                             "failure_mode": failure_mode}
    chosen = rules()
    if lease:
        fleet["lease"] = {"units": K, "lease_ms": 10_000}
        # A lease larger than a limit's burst could never be granted (refused at configure time).
        chosen = [r for r in chosen if r["limits"][0]["rate"] >= K]
    return {"policy_version": version, "fleet": fleet, "rules": chosen}


@pytest.fixture
def rls(tmp_path: Path, redis: RedisServer) -> Iterator[RateLimitService]:
    # The service reads the limits from the same policy file (its own address is not in it yet: unused there).
    # 500 ms: a loaded machine cannot trip it on a healthy Redis, and it stays within the gateways' 1 s
    # fleet timeout, so a Redis that is down reaches them as the service's UNAVAILABLE answer.
    with RateLimitService(tmp_path / "rls", policy("127.0.0.1:1", "fleet-e2e"), redis.url, redis_timeout_ms=500) as s:
        yield s


@pytest.fixture
def kong_engine() -> None:
    why = harness.engine_missing("kong")
    if why:
        pytest.skip(f"the fleet test needs the Kong engine too: {why}")  # a failure under CI=true


@contextlib.contextmanager
def fleet(tmp_path: Path, rls: RateLimitService, policies: list[tuple[str, dict[str, Any]]]) -> Iterator[list[harness.BaseGateway]]:
    """Gateways of the given hosts ("envoy" / "envoy-native" / "kong") with these policies, all on the
    one service. The Envoys are of the test's host: Envoy with the .wasm module or with the native one."""
    started: list[harness.BaseGateway] = []
    try:
        for i, (host, doc) in enumerate(policies):
            kwargs: dict[str, Any] = {"concurrency": 2}
            if harness.engine(host) == "envoy":
                kwargs["clusters"] = {CLUSTER: rls.cluster()}
            gw = harness.GATEWAYS[host](tmp_path / f"{host}-{i}", {FILTER: doc}, **kwargs)
            started.append(gw)
            gw.start()
        yield started
    except BaseException:
        for gw in started:
            print(f"---- {gw.host} log ({gw.log_path}), last 80 lines\n{gw.log_tail(80)}")
        print(f"---- gatewarden-ratelimit log\n{rls.log_tail(80)}")
        raise
    finally:
        for gw in started:
            gw.stop()


def spread(gateways: list[harness.BaseGateway], path: str, client: str, n: int, threads: int = 8) -> list[tuple[int, int]]:
    """n requests of `client` spread over the gateways from `threads` threads at once: (gateway index, status)."""
    def one(i: int) -> tuple[int, int]:
        g = i % len(gateways)
        return g, gateways[g].get(path, headers={"x-client": client}).status
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_two_envoys_and_kong_share_one_limit_of_n(host, tmp_path, rls, kong_engine, report):
    doc = policy(rls.http_address, "fleet-exact")
    with fleet(tmp_path, rls, [(host, doc), (host, doc), ("kong", doc)]) as gateways:
        got = spread(gateways, "/exact", "c-exact", 4 * EXACT)
        statuses = [s for _, s in got]
        per_gw = [sum(1 for g, s in got if g == i and s == 200) for i in range(3)]
        assert statuses.count(200) == EXACT and statuses.count(429) == 3 * EXACT, \
            f"{statuses.count(200)} passed, {statuses.count(429)} limited, others {sorted(set(statuses) - {200, 429})}"
        assert all(n > 0 for n in per_gw), f"every gateway admitted some: {per_gw}"
        calls = [gw.settled_counters(FILTER).get("fleet_calls", 0) for gw in gateways]
        assert sum(calls) == 4 * EXACT, f"per-call mode: one call per request ({calls})"
        limited = [gw.settled_counters(FILTER).get("denied_fleet_limited", 0) for gw in gateways]
        assert sum(limited) == 3 * EXACT, limited
        report(f"fleet per-call: {statuses.count(200)} of {len(statuses)} concurrent requests admitted for a shared "
               f"limit of {EXACT}/h across 2 Envoys + Kong ({per_gw[0]} + {per_gw[1]} + {per_gw[2]}), "
               f"{sum(calls)} calls")


def timed(gw: harness.BaseGateway, path: str, client: str) -> tuple[int, float]:
    start = time.monotonic()
    status = gw.get(path, headers={"x-client": client}).status
    return status, time.monotonic() - start


def test_redis_or_service_down_gives_the_failure_mode_then_recovers(host, tmp_path, rls, redis, kong_engine, report):
    addr = rls.http_address
    hosts = [(host, policy(addr, "fleet-deny", failure_mode="deny")),
             (host, policy(addr, "fleet-allow", failure_mode="allow")),
             ("kong", policy(addr, "fleet-local", failure_mode="local"))]
    with fleet(tmp_path, rls, hosts) as (deny, allow, local):
        for gw in (deny, allow, local):
            assert gw.get("/fail", headers={"x-client": "up"}).status == 200

        redis.stop()
        # Each request is bounded by the client's 5 s timeout: a hang raises instead of passing.
        down = {name: [timed(gw, "/fail", "down") for _ in range(3)] for name, gw in
                (("deny", deny), ("allow", allow), ("local", local))}
        assert [s for s, _ in down["deny"]] == [503] * 3, down
        assert [s for s, _ in down["allow"]] == [200] * 3, down
        assert [s for s, _ in down["local"]] == [200] * 3, down
        assert deny.wait_for_counter(FILTER, "fleet_failure_deny", 3) == 3
        assert allow.wait_for_counter(FILTER, "fleet_failure_allow", 3) == 3
        assert local.wait_for_counter(FILTER, "fleet_failure_local", 3) == 3
        assert deny.wait_for_counter(FILTER, "denied_fleet_unavailable", 3) == 3
        slowest = max(t for results in down.values() for _, t in results)
        assert "rate limit service gave no usable answer" in deny.log() and "rate limit service gave no usable answer" in local.log()

        redis.restart()
        harness.poll("the service reconnects to Redis", lambda: rls.health() == (200, "OK"), timeout=20)
        harness.poll("the deny Envoy admits again", lambda: deny.get("/fail", headers={"x-client": "back"}).status == 200,
                     timeout=20)
        got = [s for _, s in spread([deny, allow, local], "/recover", "c-recover", 3 * RECOVER)]
        assert got.count(200) == RECOVER and got.count(429) == 2 * RECOVER, f"the limit is enforced again: {got}"

        rls.stop()
        stopped = {name: [timed(gw, "/fail", "gone") for _ in range(3)] for name, gw in
                   (("deny", deny), ("allow", allow), ("local", local))}
        assert [s for s, _ in stopped["deny"]] == [503] * 3, stopped
        assert [s for s, _ in stopped["allow"]] == [200] * 3, stopped
        assert [s for s, _ in stopped["local"]] == [200] * 3, stopped
        slowest_stopped = max(t for results in stopped.values() for _, t in results)
        report(f"fleet failure modes: Redis down → deny 503 / allow 200 / local 200, slowest answer "
               f"{slowest * 1000:.0f} ms (service's --redis-timeout-ms 500); limit enforced again after Redis is back; "
               f"service stopped → the same, slowest {slowest_stopped * 1000:.0f} ms")


def test_lease_mode_calls_per_request_and_accuracy(host, tmp_path, rls, kong_engine, report):
    doc = policy(rls.http_address, "fleet-lease", lease=True)
    with fleet(tmp_path, rls, [(host, doc), (host, doc), ("kong", doc)]) as gateways:
        # Under the limit, one request at a time round robin: each VM holds a lease of K.
        n = 60
        got = [gateways[i % 3].get("/leased", headers={"x-client": "c-lease"}).status for i in range(n)]
        assert got == [200] * n, got
        calls = sum(gw.settled_counters(FILTER).get("fleet_calls", 0) for gw in gateways)
        spent = sum(gw.settled_counters(FILTER).get("fleet_lease_spent", 0) for gw in gateways)
        assert calls + spent == n, (calls, spent)
        # 6 VMs (2 per gateway; Envoy's main thread serves no request) may each hold a lease.
        assert calls <= n // K + 6, f"{calls} calls for {n} requests with K={K}"
        # Then overload: 4 × the limit at once. Never more than the limit in all.
        more = [s for _, s in spread(gateways, "/leased", "c-lease", 4 * LEASED)]
        admitted = n + more.count(200)
        assert admitted <= LEASED, f"admitted {admitted} > {LEASED}"
        assert set(more) <= {200, 429}, sorted(set(more))
        calls_after = sum(gw.settled_counters(FILTER).get("fleet_calls", 0) for gw in gateways)
        refused = sum(gw.settled_counters(FILTER).get("fleet_lease_refused", 0) for gw in gateways)
        # A worker the service refused denies that key without a call for a while (here 10 s, the
        # lease; the limit's 36 s per unit is longer): an over-limit request mostly costs no call.
        assert refused > 0 and calls_after - calls <= len(more) // 4, (calls_after - calls, refused)
        report(f"fleet lease mode (K={K}): {calls} calls for {n} requests under the limit "
               f"({calls / n:.2f} per request, per-call mode 1.00); under overload {admitted} of {LEASED} admitted "
               f"(units left in leases are lost, never over), {calls_after - calls} calls for {len(more)} requests "
               f"({refused} refused without a call)")
