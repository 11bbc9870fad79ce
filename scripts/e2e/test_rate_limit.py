"""End-to-end tests of the rate-limit filter's local limits (filters/rate-limit) in a real Envoy
(--concurrency 2) and in Kong's engine (2 nginx workers).

What is shown on each host: every worker decides on one state (the key table in Proxy-Wasm shared
data, updated by compare-and-swap), so a limit of 100 per 10 s under concurrent load from 8
threads admits what the limit allows across all workers, not 100 per worker; Envoy's own
`envoy.filters.http.local_ratelimit` with the same token bucket is measured in the same test and
its figure reported next to ours. A limited request gets 429 `application/problem+json` with the
violated limits, `retry-after` and the IETF (and legacy) headers; keys are per client address
behind a trusted proxy hop; `dry_run` lets through and counts; a refused update keeps the last good
policy and its state (Envoy) or fails the filter's routes closed (Kong, 503 no_policy); a live
update that changes one limit keeps the state of the other.

Admission under load is asserted against what the limit allows over the run: `burst` at once plus
`rate` per `period` as time passes (GCRA refills continuously), between the bounds the client's
clock gives (the first request's answer to the last one's sending, and the first sending to the
last answer), with 1 % slack. No timed assertion: the run's own length sets the bound.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

import harness
from harness import BaseGateway, Response

FILTER = "rate_limit"
HEADER = "x-gatewarden-rate-limit"
PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
FORBIDDEN = b'{"error":"forbidden","message":"access denied by policy"}'
UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'
# The test client plays the trusted proxy that appended the client's address.
ONE_HOP = {"xff_num_trusted_hops": 1}

snapshot_of = harness.counter_snapshot
changes = harness.counter_changes


def snapshot(gw: BaseGateway) -> dict[str, int]:
    return snapshot_of(gw, FILTER)


def xff(client: str) -> dict[str, str]:
    return {"x-forwarded-for": client}


def assert_limited(r: Response, violated: list[str]) -> None:
    """A 429 of the filter: problem+json naming the violated limits, and `retry-after`."""
    assert r.status == 429, (r.status, r.text)
    assert r.headers.get("content-type") == "application/problem+json", r.headers
    problem = {"type": PROBLEM_TYPE, "title": PROBLEM_TITLE, "status": 429, "violated-policies": violated}
    assert r.is_local_body(json.dumps(problem, sort_keys=True, separators=(",", ":")).encode()), r.body
    assert int(r.headers["retry-after"]) >= 1, r.headers


def assert_allowed(r: Response, rule: str, version: str) -> None:
    assert r.status == 200, (r.status, r.text)
    assert r.upstream_headers is not None, r.text
    assert r.upstream_headers.get(HEADER) == f"allow; rule={rule}; version={version}", r.upstream_headers


# --------------------------------------------------------------------------------------------
# 1: a limit of 100 per 10 s under concurrent load, ours on both hosts and Envoy's own

RATE, PERIOD = 100, 10.0
HUNDRED = {"name": "hundred", "rate": RATE, "per_seconds": int(PERIOD)}
# One bucket per path: each burst uses a path of its own (a fresh bucket, like Envoy's
# local_ratelimit without descriptors: one bucket for every request).
LOAD_POLICY = {"policy_version": "load-1", "default": {"limits": [HUNDRED], "key": ["path"]}}
# Bursts tried until one reached both workers (nginx hands connections to whichever worker the
# kernel wakes; one worker taking a whole burst proves nothing about sharing).
BURST_TRIES = 3
# Envoy's own local rate limit with the same token bucket, one bucket for the whole listener
# (not per connection); always enabled and enforced.
NATIVE_LIMIT = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "native_limit",
        "token_bucket": {"max_tokens": RATE, "tokens_per_fill": RATE, "fill_interval": f"{int(PERIOD)}s"},
        "filter_enabled": {"runtime_key": "native_limit_enabled",
                           "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": "native_limit_enforced",
                            "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "local_rate_limit_per_downstream_connection": False,
    },
}
LOAD_REQUESTS, LOAD_THREADS = 400, 8


@dataclass
class Burst:
    """What the client saw of a burst: each request's (sent, answered, status), monotonic seconds."""
    timings: list[tuple[float, float, int]]

    @property
    def admitted(self) -> int:
        return sum(1 for _, _, s in self.timings if s == 200)

    @property
    def limited(self) -> int:
        return sum(1 for _, _, s in self.timings if s == 429)

    def allowed_range(self, burst: int, per_second: float) -> tuple[int, int]:
        """What a limit of `burst` at once and `per_second` after admits over this run: the gateway
        saw the requests within [first sent, last answered] (the outer span) and over at least
        [first answered, last sent] (the inner span)."""
        sent = [t0 for t0, _, _ in self.timings]
        answered = [t1 for _, t1, _ in self.timings]
        outer = max(answered) - min(sent)
        inner = max(0.0, max(sent) - min(answered))
        return burst + math.floor(inner * per_second), burst + math.ceil(outer * per_second)

    @property
    def seconds(self) -> float:
        return max(t1 for _, t1, _ in self.timings) - min(t0 for t0, _, _ in self.timings)


def burst(gw: BaseGateway, path: str, total: int, threads: int, **kwargs: Any) -> Burst:
    """`total` requests from `threads` threads at once (each its own connection, so both workers
    get some), all started together."""
    go = threading.Barrier(threads)
    per_thread = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]

    def run(n: int) -> list[tuple[float, float, int]]:
        go.wait()
        out = []
        for _ in range(n):
            t0 = time.monotonic()
            status = gw.get(path, **kwargs).status
            out.append((t0, time.monotonic(), status))
        return out

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(run, per_thread))
    return Burst([t for r in results for t in r])


def test_limit_of_100_per_10s_holds_across_workers_under_concurrent_load(start_gateway, host, report,
                                                                          record_property):
    gw = start_gateway({FILTER: LOAD_POLICY}, concurrency=2, ipv6=False)
    before = snapshot(gw)
    admitted = limited = 0
    for attempt in range(BURST_TRIES):
        mark = gw.log_mark()
        ours = burst(gw, f"/load/{attempt}", LOAD_REQUESTS, LOAD_THREADS)
        admitted, limited = admitted + ours.admitted, limited + ours.limited
        # Which workers decided: each denial's log line names the thread / process that wrote it.
        deniers = {gw._log_vm(x) for x in gw.log(mark).splitlines() if '"reason":"limited"' in x} - {None}
        if len(deniers) == 2:
            break
    else:
        pytest.fail(f"{BURST_TRIES} bursts, each decided by one worker only: nothing shown about sharing")
    low, high = ours.allowed_range(RATE, RATE / PERIOD)
    line = (f"rate_limit 100 per 10 s on {host} ({gw.vms} VMs, {LOAD_THREADS} threads, burst {attempt + 1}): admitted "
            f"{ours.admitted} of {len(ours.timings)} in {ours.seconds:.2f} s; the limit allows {low}..{high} "
            f"over that run")
    report(line)
    record_property("ours", line)
    assert ours.admitted + ours.limited == LOAD_REQUESTS, ours.timings
    # 1 % of the limit's 100 as slack on both sides.
    assert low - 1 <= ours.admitted <= high + 1, line
    assert ours.admitted < 2 * RATE, f"per-worker buckets? {line}"
    got = changes(before, snapshot(gw))
    assert {k: got.get(k, 0) for k in ("allowed", "denied", "denied_limited", "host_error", "upstream_requests")} == {
        "allowed": admitted, "denied": limited, "denied_limited": limited, "host_error": 0,
        "upstream_requests": admitted}, got

    if harness.engine(host) != "envoy":
        return
    # Envoy's own local_ratelimit, same bucket, same load, same machine: measured, not assumed.
    native_gw = start_gateway({}, concurrency=2, ipv6=False, native_filters=[NATIVE_LIMIT])
    native = burst(native_gw, "/load", LOAD_REQUESTS, LOAD_THREADS)
    n_low, n_high = native.allowed_range(RATE, RATE / PERIOD)
    stats = native_gw.stats(r"http_local_rate_limit")
    # Connections per worker (Envoy's per-worker listener stats): did both workers take part?
    per_worker = sorted(v for k, v in native_gw.stats(r"^listener\..*\.worker_\d+\.downstream_cx_total$").items()
                        if isinstance(v, int))
    native_line = (f"envoy local_ratelimit 100 per 10 s (token bucket, not per connection, --concurrency 2, "
                   f"{LOAD_THREADS} threads, connections per worker {per_worker}): admitted {native.admitted} of "
                   f"{len(native.timings)} in {native.seconds:.2f} s (a shared, continuously refilled bucket "
                   f"allows {n_low}..{n_high}; one per worker about twice that); stats "
                   f"{ {k.rsplit('.', 1)[1]: v for k, v in stats.items()} }")
    report(native_line)
    record_property("native", native_line)
    assert native.admitted + native.limited == LOAD_REQUESTS, native.timings
    assert native.admitted >= 1
    assert len(per_worker) == 2 and min(per_worker) > 0, f"the load did not reach both workers: {per_worker}"


# --------------------------------------------------------------------------------------------
# 2: the 429 answer; keys per client behind a trusted hop

THREE = {"policy_version": "three-1", "client_address": ONE_HOP,
         "rules": [{"name": "api", "match": {"path_prefix": "/api"},
                    "limits": [{"name": "three", "rate": 3, "per": "1m"}],
                    "headers": "ietf_and_legacy"},
                   {"name": "quota", "match": {"path_prefix": "/quota"},
                    "limits": [{"name": "ten", "rate": 10, "per": "1m"}], "headers_on_allowed": True}],
         "default": {}}


@pytest.fixture(scope="module")
def three_gw(start_module_gateway) -> BaseGateway:
    return start_module_gateway({FILTER: THREE}, ipv6=False)


def test_limited_request_gets_429_problem_json_with_the_ratelimit_headers(three_gw: BaseGateway):
    gw = three_gw
    client = "198.51.100.1"
    before, mark = snapshot(gw), gw.log_mark()
    for _ in range(3):
        assert_allowed(gw.get("/api/x", headers=xff(client), source="127.0.0.2"), "api", "three-1")
    r = gw.get("/api/x", headers=xff(client), source="127.0.0.2")
    assert_limited(r, ["three"])
    assert r.headers["retry-after"] in ("19", "20"), r.headers  # one unit comes back every 60 s / 3
    assert r.headers["ratelimit-policy"] == '"three";q=3;w=60', r.headers
    assert re.fullmatch(r'"three";r=0;t=(59|60)', r.headers["ratelimit"]), r.headers
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("3", "0"), r.headers
    assert r.headers["x-ratelimit-reset"] in ("59", "60"), r.headers
    # A route without limits (the default rule here) is not limited, and says nothing of limits.
    r = gw.get("/other", headers=xff(client), source="127.0.0.2")
    assert_allowed(r, "default", "three-1")
    assert "ratelimit" not in r.headers and "retry-after" not in r.headers, r.headers
    # headers_on_allowed: an allowed response tells the client where it stands (IETF headers only).
    r = gw.get("/quota", headers=xff(client), source="127.0.0.2")
    assert_allowed(r, "quota", "three-1")
    assert r.headers.get("ratelimit-policy") == '"ten";q=10;w=60', r.headers
    assert re.fullmatch(r'"ten";r=9;t=[56]', r.headers.get("ratelimit", "")), r.headers
    assert "x-ratelimit-limit" not in r.headers and "retry-after" not in r.headers, r.headers
    assert changes(before, snapshot(gw)) == {
        "allowed": 5, "denied": 1, "denied_limited": 1, "rq_2xx": 5, "rq_4xx": 1, "upstream_requests": 5}
    line = gw.wait_decision(mark, reason="limited")
    assert {k: line[k] for k in ("filter", "decision", "reason", "rule", "policy_version")} == {
        "filter": "rate_limit", "decision": "deny", "reason": "limited", "rule": "api", "policy_version": "three-1"}
    assert re.fullmatch(r"key=[0-9a-f]{16} limits=three", line["detail"]), line  # the key's hash, never the key
    assert len(gw.decisions(mark)) == 1, "one line per denial, none for allowed requests"


def test_decision_line_names_the_client(three_gw: BaseGateway):
    gw = three_gw
    client = "198.51.100.31"
    mark = gw.log_mark()
    for _ in range(4):
        gw.get("/api/z", headers=xff(client), source="127.0.0.2")
    assert gw.wait_decision(mark, reason="limited")["client"] == client


def test_each_client_behind_the_trusted_hop_has_its_own_bucket(three_gw: BaseGateway):
    gw = three_gw
    a, b = "198.51.100.21", "198.51.100.22"
    for _ in range(3):
        assert gw.get("/api/y", headers=xff(a), source="127.0.0.2").status == 200
    assert_limited(gw.get("/api/y", headers=xff(a), source="127.0.0.2"), ["three"])
    # Another client through the same proxy (same peer): its own bucket, full.
    for _ in range(3):
        assert_allowed(gw.get("/api/y", headers=xff(b), source="127.0.0.2"), "api", "three-1")
    assert_limited(gw.get("/api/y", headers=xff(b), source="127.0.0.2"), ["three"])
    # A spoofed entry left of the trusted hop does not give `a` a new bucket ...
    assert_limited(gw.get("/api/y", headers=xff(f"203.0.113.7, {a}"), source="127.0.0.2"), ["three"])
    # ... nor does another proxy in front (peer): the client is what the trusted hop appended.
    assert_limited(gw.get("/api/y", headers=xff(a), source="127.0.0.3"), ["three"])
    # The bucket is the client's, not the path's: `a` is limited on every path of the rule.
    assert_limited(gw.get("/api/other", headers=xff(a), source="127.0.0.2"), ["three"])


# --------------------------------------------------------------------------------------------
# 3: dry run

def test_dry_run_lets_limited_requests_through_and_counts_them(start_gateway):
    policy = {"policy_version": "dry-1", "mode": "dry_run",
              "default": {"limits": [{"name": "two", "rate": 2, "per": "1m"}]}}
    gw = start_gateway({FILTER: policy}, ipv6=False)
    before, mark = snapshot(gw), gw.log_mark()
    for _ in range(2):
        assert_allowed(gw.get("/", source="127.0.0.5"), "default", "dry-1")
    for _ in range(2):
        r = gw.get("/", source="127.0.0.5")
        assert r.status == 200, r.text
        assert r.upstream_headers[HEADER] == "dry_run_deny; reason=limited; rule=default; version=dry-1", r.upstream_headers
    assert changes(before, snapshot(gw)) == {
        "allowed": 2, "dry_run_denied": 2, "dry_run_denied_limited": 2, "rq_2xx": 4, "upstream_requests": 4}
    line = gw.wait_decision(mark, reason="limited")
    assert (line["decision"], line["reason"], line["rule"], line["policy_version"]) == (
        "dry_run_deny", "limited", "default", "dry-1")


# --------------------------------------------------------------------------------------------
# 4: live updates: a changed limit starts full, an unchanged one keeps its state; refused updates

TWO_LIMITS_V1 = {"policy_version": "two-1",
                 "default": {"limits": [{"name": "minute", "rate": 3, "per": "1m"},
                                        {"name": "hour", "rate": 5, "per": "1h"}]}}
TWO_LIMITS_V2 = {"policy_version": "two-2",  # `minute` changes; `hour` does not
                 "default": {"limits": [{"name": "minute", "rate": 4, "per": "1m"},
                                        {"name": "hour", "rate": 5, "per": "1h"}]}}
BAD_UPDATE = {"policy_version": "two-bad", "default": {"limits": [{"name": "minute", "rate": 0, "per": "1m"}]}}
BAD_ERROR = re.escape("default.limits[0].rate: must be at least 1, got 0")


@pytest.mark.kong_defect(
    "shared data does not survive a reload on ngx_wasm_module (each reload starts with empty shm_kv zones), "
    "so a policy update by reload starts every limit full, the unchanged ones too")
def test_live_update_keeps_the_state_of_an_unchanged_limit(start_gateway):
    gw = start_gateway({FILTER: TWO_LIMITS_V1}, ipv6=False)
    client = "127.0.0.6"
    for _ in range(3):
        assert_allowed(gw.get("/", source=client), "default", "two-1")
    assert_limited(gw.get("/", source=client), ["minute"])  # hour has 2 left
    assert gw.push_policy(FILTER, TWO_LIMITS_V2) == "success"
    # `minute` changed: it starts full (4); `hour` kept its state (2 left), so 2 pass and it limits.
    assert_allowed(gw.get("/", source=client), "default", "two-2")
    assert_allowed(gw.get("/", source=client), "default", "two-2")
    r = gw.get("/", source=client)
    assert_limited(r, ["hour"])
    assert r.headers["ratelimit"].startswith('"minute";r=2;'), r.headers


@pytest.mark.hosts("envoy")  # Kong has no "keep the last good policy": the next test
def test_refused_update_keeps_the_last_good_policy_and_its_state(start_gateway):
    gw = start_gateway({FILTER: TWO_LIMITS_V1}, ipv6=False)
    client = "127.0.0.7"
    for _ in range(3):
        assert gw.get("/", source=client).status == 200
    assert_limited(gw.get("/", source=client), ["minute"])
    rejected_before, mark = gw.counter(FILTER, "config_rejected"), gw.log_mark()
    assert gw.push_policy(FILTER, BAD_UPDATE) == "rejected"
    gw.wait_for_log(rf"\[error\]\[{gw.log_component}\].*gatewarden rate_limit: policy refused: " + BAD_ERROR, since=mark)
    assert gw.counter(FILTER, "config_rejected") > rejected_before
    # The old policy decides, on the old state: still limited; another client is not.
    assert_limited(gw.get("/", source=client), ["minute"])
    assert_allowed(gw.get("/", source="127.0.0.8"), "default", "two-1")


@pytest.mark.hosts("kong")
def test_refused_policy_fails_the_filters_routes_closed_on_kong(start_gateway):
    routes = {"/limited": [FILTER], "/": []}
    gw = start_gateway({FILTER: TWO_LIMITS_V1}, routes=routes, ipv6=False)
    assert_allowed(gw.get("/limited", source="127.0.0.9"), "default", "two-1")
    mark = gw.log_mark()
    assert gw.push_policy(FILTER, BAD_UPDATE) == "refused"
    gw.wait_for_log_in_every_vm(r"gatewarden rate_limit: policy refused: " + BAD_ERROR, since=mark)
    before = gw.settled_counters(FILTER)
    r = gw.get("/limited", source="127.0.0.9")
    assert r.status == 503 and r.is_local_body(UNAVAILABLE), (r.status, r.body)
    r = gw.get("/open", source="127.0.0.9")  # a route without the filter
    assert r.status == 200 and HEADER not in (r.upstream_headers or {}), r.text
    assert changes(before, gw.settled_counters(FILTER)) == {"no_policy": 1}
    # The next valid policy is taken.
    assert gw.push_policy(FILTER, {**TWO_LIMITS_V1, "policy_version": "two-3"}) == "success"
    assert_allowed(gw.get("/limited", source="127.0.0.9"), "default", "two-3")
