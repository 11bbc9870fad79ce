"""`gatewarden-ratelimit` as the rate limit service of Envoy's own `envoy.filters.http.ratelimit` filter: a
real third-party client of the gRPC `ShouldRateLimit` we serve, with descriptors from Envoy's native
`rate_limits` actions in the fleet contract's shape (generic_key `gatewarden_limit` = "<rule>/<limit>", then
`remote_address`). Counters in a throwaway Redis (services.RedisServer).

1. A limit of N per minute per client address: exactly N of many concurrent requests pass (Envoy with two
   workers), the rest get Envoy's 429; another client address has its own N.
2. Two Envoys sharing one Redis-backed limit of N: N pass across both.
3. Redis stopped: each Envoy applies its failure mode (failure_mode_deny: 500; allow: through), promptly
   (every request has the client's 5 s bound; the service answers UNAVAILABLE after --redis-timeout-ms 500,
   inside Envoy's 2 s);
   Redis paused (accepts, never answers): the same; Redis back: the limit is enforced again.
Envoy only: the Kong engine has no native rate limit filter (our filter's fleet mode over HTTP is tested in
test_rate_limit_fleet.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import harness
from services import RateLimitService, RedisServer, native_ratelimit_filter, rls_actions

# No Gatewarden filter in these chains (Envoy's own ratelimit filter and the service): nothing of
# the native module to run.
pytestmark = [pytest.mark.hosts("envoy"),
              pytest.mark.wasm_only("no Gatewarden filter: Envoy's own ratelimit filter and the service")]

PER_IP = 20
SHARED = 30
POLICY = {
    "policy_version": "e2e-rls-1",
    "rules": [
        {"name": "api", "match": {"path_prefix": "/"}, "key": ["client_address"],
         "limits": [{"name": "per_ip", "rate": PER_IP, "per": "1m"}]},
    ],
    "default": {"key": [], "limits": [{"name": "all", "rate": SHARED, "per": "1m"}]},
}
CLUSTER = "gatewarden_rls"


@pytest.fixture
def rls(tmp_path: Path, redis: RedisServer):
    # 500 ms: a loaded machine must not time out a healthy Redis; still well inside Envoy's 2 s timeout.
    with RateLimitService(tmp_path / "rls", POLICY, redis.url, redis_timeout_ms=500) as service:
        yield service


def envoy(start_gateway, rls: RateLimitService, rate_limit: dict, *, failure_mode_deny: bool = True) -> harness.BaseGateway:
    return start_gateway({}, concurrency=2, clusters={CLUSTER: rls.cluster()},
                         native_filters=[native_ratelimit_filter(CLUSTER, [rate_limit], failure_mode_deny=failure_mode_deny,
                                                                 timeout="2s")])


def statuses(gateways: list[harness.BaseGateway], n: int, source: str, threads: int = 8) -> list[int]:
    """n requests spread over the gateways from `threads` threads at once."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: gateways[i % len(gateways)].get("/x", source=source).status, range(n)))


def test_native_filter_admits_exactly_n_of_concurrent_requests(start_gateway, rls, report):
    gw = envoy(start_gateway, rls, rls_actions("api/per_ip", "remote_address"))
    got = statuses([gw], 5 * PER_IP, "127.0.0.21")
    assert (got.count(200), got.count(429)) == (PER_IP, 4 * PER_IP), f"statuses: {sorted(set(got))}"
    report(f"native ratelimit filter + gatewarden-ratelimit: {got.count(200)} of {len(got)} concurrent requests "
           f"admitted for a limit of {PER_IP}/min (Envoy --concurrency 2, 8 threads)")
    assert gw.get("/x", source="127.0.0.22").status == 200, "another client address has its own bucket"
    # Envoy's own count (the filter's stats are rooted at the route's cluster) and the service's.
    assert gw.stat("cluster.upstream.ratelimit.over_limit") == 4 * PER_IP
    assert rls.metrics()['gatewarden_ratelimit_checks_total{result="over_limit"}'] == 4 * PER_IP


def test_two_envoys_share_one_limit(start_gateway, rls, report):
    shared = rls_actions("default/all")
    gateways = [envoy(start_gateway, rls, shared), envoy(start_gateway, rls, shared)]
    got = statuses(gateways, 4 * SHARED, "127.0.0.31")
    assert got.count(200) == SHARED and got.count(429) == 3 * SHARED, f"{got.count(200)} passed, {got.count(429)} limited"
    per_gw = [sum(1 for i, s in enumerate(got) if i % 2 == g and s == 200) for g in (0, 1)]
    assert all(n > 0 for n in per_gw), f"both Envoys admitted some: {per_gw}"
    report(f"two Envoys on one gatewarden-ratelimit (Redis): {got.count(200)} of {len(got)} admitted for a "
           f"shared limit of {SHARED}/min ({per_gw[0]} + {per_gw[1]})")


def test_redis_down_or_paused_gives_the_failure_mode_then_recovers(start_gateway, rls, redis):
    per_ip = rls_actions("api/per_ip", "remote_address")
    deny = envoy(start_gateway, rls, per_ip, failure_mode_deny=True)
    allow = envoy(start_gateway, rls, per_ip, failure_mode_deny=False)
    assert deny.get("/x", source="127.0.0.41").status == 200
    assert allow.get("/x", source="127.0.0.42").status == 200

    redis.stop()
    # Each request is bounded by the client's 5 s timeout: a hang would raise, not pass.
    assert [deny.get("/x", source="127.0.0.41").status for _ in range(3)] == [500] * 3
    assert [allow.get("/x", source="127.0.0.42").status for _ in range(3)] == [200] * 3
    assert rls.health()[0] == 500
    assert deny.stat("cluster.upstream.ratelimit.error") == 3
    assert allow.stat("cluster.upstream.ratelimit.failure_mode_allowed") == 3

    redis.restart()
    harness.poll("the service reconnects to Redis", lambda: rls.health() == (200, "OK"), timeout=20)
    harness.poll("the deny Envoy admits again", lambda: deny.get("/x", source="127.0.0.41").status == 200, timeout=20)
    got = statuses([deny], PER_IP + 5, "127.0.0.43")
    assert got.count(200) == PER_IP, "the limit is enforced again after the restart"

    redis.pause()
    try:
        assert deny.get("/x", source="127.0.0.44").status == 500, "a Redis that never answers: the deny failure mode"
        assert allow.get("/x", source="127.0.0.44").status == 200, "and the allow failure mode"
    finally:
        redis.resume()
    harness.poll("checks succeed again once Redis answers", lambda: deny.get("/x", source="127.0.0.45").status == 200,
                 timeout=20)
