"""End-to-end cases of what only Kong's engine (nginx + ngx_wasm_module, ../shared/wasmx) does, on
that engine. The cases both hosts share run in the other test files, once per host.

- A refused policy never takes routes down: at start and on reload the filter accepts the VM
  without a policy; its own routes answer 503 with the fixed body (no_policy, logged at error
  level), every other route keeps answering (under load, through the reload).
- Shared data is nginx's `shm_kv` (zone `gatewarden`), one for all worker processes: one fetch of
  the geo database feeds both workers (the lease and the publication are CAS writes there).
- Fetch targets are `host:port`, an IP or a name nginx resolves (`resolver_add`).
- `proxy_wasm_request_headers_in_access on`, as Kong runs its filters.
- Published data a worker cannot load (written into shared data, where any module of the nginx
  can write) is refused by every worker, counted (geo_db_load_failed, jwks_load_failed), and the
  last good database / key set keeps deciding.
- The harness's own path to the counters (the kong-metrics module, CRC-32 ids) reads true values.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from types import SimpleNamespace
from typing import Any

import pytest

import harness
from harness import KongGateway
from jwtkit import SigningKey, jwks_bytes

pytestmark = pytest.mark.hosts("kong")

UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'
FORBIDDEN = b'{"error":"forbidden","message":"access denied by policy"}'
HEADER = "x-gatewarden-ip-geo"
GOOD = {"policy_version": "good-1", "default": {"deny": ["127.0.1.0/24"]}}
BAD = {"policy_version": "bad-1", "default": {"deny": ["10.0.0.0/33"]}}
BAD_ERROR = r'default\.deny\[0\]: invalid CIDR "10\.0\.0\.0/33"'
# The filter on /guarded only; / has none.
ROUTES = {"/guarded": ["ip_geo"], "/": []}
ONE_HOP = {"xff_num_trusted_hops": 1}
THREE_TICKS = 0.6  # three ticks of a filter whose shared resource is loading (200 ms)


def assert_fails_closed(r: harness.Response) -> None:
    assert r.status == 503, (r.status, r.text)
    assert r.is_local_body(UNAVAILABLE), r.body
    assert r.headers.get("content-type") == "application/json", r.headers


def assert_open(r: harness.Response) -> None:
    """A route without the filter: the upstream answered."""
    assert r.status == 200, (r.status, r.text)
    assert r.upstream_headers is not None and HEADER not in r.upstream_headers, r.text


# --------------------------------------------------------------------------------------------
# A refused policy never takes routes down


def test_refused_policy_at_start_fails_only_the_filters_routes(start_gateway):
    gw = start_gateway({"ip_geo": BAD}, routes=ROUTES, ipv6=False)
    assert gw.start_outcome == "refused"
    gw.wait_for_log_in_every_vm(r"\[error\] .*gatewarden ip_geo: policy refused: " + BAD_ERROR)
    before = gw.settled_counters("ip_geo")
    assert before["config_rejected"] == gw.vms and before["config_accepted"] == 0, before
    mark = gw.log_mark()
    assert_open(gw.get("/", source="127.0.0.2"))
    assert_fails_closed(gw.get("/guarded", source="127.0.0.2"))
    assert_fails_closed(gw.get("/guarded/x", source="127.0.1.9"))  # what the policy meant to deny: still no
    assert_open(gw.get("/other"))
    got = harness.counter_changes(before, gw.settled_counters("ip_geo"))
    assert got == {"no_policy": 2}, got
    gw.wait_for_log(r"\[error\] .*gatewarden ip_geo: request denied: no valid policy is loaded", since=mark)

    # A valid policy by reload: the route decides again.
    assert gw.push_policy("ip_geo", GOOD) == "success"
    r = gw.get("/guarded", source="127.0.0.2")
    assert r.status == 200 and r.upstream_headers[HEADER] == "allow; rule=default; version=good-1", r.text
    r = gw.get("/guarded", source="127.0.1.9")
    assert r.status == 403 and r.is_local_body(FORBIDDEN), (r.status, r.body)


def test_refused_policy_on_reload_under_load_takes_no_route_down(start_gateway, report):
    gw = start_gateway({"ip_geo": GOOD}, routes=ROUTES, ipv6=False)
    assert gw.get("/guarded", source="127.0.0.2").status == 200
    mark = gw.log_mark()
    with gw.load("/open", duration=60, threads=4) as load:
        time.sleep(0.3)
        assert gw.push_policy("ip_geo", BAD) == "refused"
        assert_fails_closed(gw.get("/guarded", source="127.0.0.2"))
        time.sleep(0.3)
    result = load.result
    report(f"refused policy by reload, load on a route without the filter: {result}")
    assert result.requests > 100 and result.failures == 0, str(result)
    gw.wait_for_log_in_every_vm(r"gatewarden ip_geo: policy refused: " + BAD_ERROR, since=mark)
    assert gw.running and not any(re.findall(r"exited with (fatal )?code [1-9]", gw.log(mark)))
    # The next valid policy is taken.
    assert gw.push_policy("ip_geo", {**GOOD, "policy_version": "good-2"}) == "success"
    assert gw.get("/guarded", source="127.0.0.2").upstream_headers[HEADER] == "allow; rule=default; version=good-2"


# --------------------------------------------------------------------------------------------
# Shared data: one fetch for both worker processes


def geo_policy(version: str, cluster: str, **extra: Any) -> dict[str, Any]:
    return {"policy_version": version, "client_address": ONE_HOP,
            "geo_database": {"cluster": cluster, "path": "/country.mmdb", **extra},
            "default": {"deny_countries": ["KP"]}}


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def shared_keys(filter_name: str, resource: str, upstream: str, path: str) -> tuple[str, str]:
    """The shared-data keys of a fetched resource (shared/glue/src/shared_fetch.rs): meta, data."""
    source = "\n".join((upstream, upstream, path))  # upstream, authority (the default: upstream), path
    base = f"gatewarden/{filter_name}/{resource}/{fnv1a(source.encode()):016x}"
    return f"{base}/meta", f"{base}/data"


def read_meta(gw: KongGateway, key: str) -> dict[str, int]:
    """The fetch record (refresh.rs SharedMeta: five little-endian u64)."""
    value, _ = gw.shared_data(key)
    assert value is not None and len(value) == 40, value
    names = ("generation", "fetched_at_ms", "next_attempt_ms", "owner", "early_at_ms")
    return dict(zip(names, struct.unpack("<5Q", value)))


def test_one_fetch_feeds_both_worker_processes(start_gateway, mmdb):
    db = mmdb("kong-shared", "203.0.113.0/24=KP")
    gw = start_gateway({"ip_geo": geo_policy("shared-1", harness.upstream("geo_db"))},
                       geo_files={"country.mmdb": db}, ipv6=False)
    assert isinstance(gw, KongGateway) and len(gw.workers) == 2
    gw.wait_for_log_in_every_vm(r"geo database generation 1 loaded")
    harness.hold("one geo DB fetch", lambda: gw.geo_db.fetches("/country.mmdb") == 1, THREE_TICKS)
    fetched_by = {m for m in re.findall(r" (\d+)#\d+: .*geo_db fetched from", gw.log())}
    assert len(fetched_by) == 1 and int(fetched_by.pop()) in gw.workers
    # The record both workers read, in the gatewarden zone: generation 1, the lease released, the
    # next fetch due after refresh_seconds (default one day).
    meta_key, data_key = shared_keys("ip_geo", "geo_db", gw.upstream_ref("geo_db"), "/country.mmdb")
    meta = read_meta(gw, meta_key)
    assert (meta["generation"], meta["owner"]) == (1, 0), meta
    assert meta["next_attempt_ms"] - meta["fetched_at_ms"] == 86_400_000, meta
    assert gw.shared_data(data_key)[0] == db.read_bytes()
    c = gw.settled_counters("ip_geo")
    assert (c["geo_db_fetch_started"], c["geo_db_fetch_succeeded"], c["geo_db_loaded"]) == (1, 1, 2), c


def test_fetch_target_by_name_through_resolver_add(start_gateway, mmdb):
    """`resolver_add 127.0.0.1 <name>` in http{}: a fetch target may be a name nginx resolves."""
    name = "geo-db.gatewarden.test"
    gw = start_gateway({"ip_geo": GOOD}, geo_files={"country.mmdb": mmdb("kong-named", "203.0.113.0/24=KP")},
                       resolver_names=[name], ipv6=False)
    target = f"{name}:{gw.geo_db.port}"
    mark = gw.log_mark()
    assert gw.push_policy("ip_geo", geo_policy("named-1", target)) == "success"
    gw.wait_for_log(rf"geo_db fetched from {re.escape(target)} \(\d+ bytes\)", since=mark)
    gw.wait_for_log_in_every_vm(r"geo database generation 1 loaded", since=mark)
    r = gw.get("/", headers={"x-forwarded-for": "203.0.113.5"}, source="127.0.0.2")
    assert r.status == 403 and r.is_local_body(FORBIDDEN), (r.status, r.body)
    assert gw.wait_decision(mark, client="203.0.113.5")["detail"] == "country=KP"


# --------------------------------------------------------------------------------------------
# Kong runs the request-headers step in the access phase


def test_request_headers_in_access_phase(start_gateway):
    hs = SigningKey.generate("HS256", "hs-1")
    jwt_policy = {"policy_version": "jwt-access", "realm": "api",
                  "providers": {"hs": {"issuer": "https://hs.test", "local_jwks": {"keys": [hs.public_jwk()]}}},
                  "rules": [{"name": "public", "match": {"path_prefix": "/public"}}],
                  "default": {"requires": {"provider": "hs"}}}
    gw = start_gateway({"ip_geo": GOOD, "jwt": jwt_policy}, request_headers_in_access=True, ipv6=False)
    assert "proxy_wasm_request_headers_in_access on;" in gw.config_path.read_text()
    now = int(time.time())
    token = hs.sign({"iss": "https://hs.test", "sub": "u1", "iat": now, "exp": now + 600})
    # ip_geo first, as in Envoy's chain: its denial is the answer, jwt never runs.
    r = gw.get("/x", headers={"authorization": f"Bearer {token}"}, source="127.0.1.5")
    assert r.status == 403 and r.is_local_body(FORBIDDEN), (r.status, r.body)
    r = gw.get("/x", source="127.0.0.2")
    assert r.status == 401 and r.headers.get("www-authenticate") == 'Bearer realm="api"', (r.status, r.headers)
    r = gw.get("/x", headers={"authorization": f"Bearer {token}"}, source="127.0.0.2")
    assert r.status == 200, r.text
    assert r.upstream_headers[HEADER] == "allow; rule=default; version=good-1"
    assert r.upstream_headers["x-gatewarden-jwt"] == "allow; rule=default; version=jwt-access"
    assert gw.get("/public", source="127.0.0.2").status == 200


# --------------------------------------------------------------------------------------------
# Published data a worker cannot load


def publish_garbage(gw: KongGateway, meta_key: str, data_key: str) -> int:
    """Writes unloadable bytes as the next generation of a published resource; returns it."""
    meta = read_meta(gw, meta_key)
    generation = meta["generation"] + 1
    gw.set_shared_data(data_key, b"this is not what was validated\n" * 4)
    gw.set_shared_data(meta_key, struct.pack("<5Q", generation, meta["fetched_at_ms"], meta["next_attempt_ms"],
                                             meta["owner"], meta["early_at_ms"]))
    return generation


@pytest.fixture(scope="module")
def unloadable_geo(start_module_gateway, mmdb) -> SimpleNamespace:
    """A gateway with database 1 loaded in every worker, then a generation 2 published in shared
    data that no worker can load."""
    db = mmdb("kong-good", "203.0.113.0/24=KP")
    gw = start_module_gateway({"ip_geo": geo_policy("load-1", harness.upstream("geo_db"))},
                              geo_files={"country.mmdb": db}, ipv6=False)
    assert isinstance(gw, KongGateway)
    gw.wait_for_log_in_every_vm(r"geo database generation 1 loaded")
    meta_key, data_key = shared_keys("ip_geo", "geo_db", gw.upstream_ref("geo_db"), "/country.mmdb")
    mark = gw.log_mark()
    generation = publish_garbage(gw, meta_key, data_key)
    gw.wait_for_log_in_every_vm(r"\[error\] .*gatewarden ip_geo: published geo database refused", since=mark)
    return SimpleNamespace(gw=gw, mark=mark, generation=generation)


def test_unloadable_published_database_is_refused_and_the_last_good_one_keeps_deciding(unloadable_geo):
    gw, mark = unloadable_geo.gw, unloadable_geo.mark
    assert gw.wait_for_counter("ip_geo", "geo_db_load_failed", gw.vms) >= gw.vms
    # Database 1 still decides, and no worker loaded the bad generation.
    r = gw.get("/", headers={"x-forwarded-for": "203.0.113.5"}, source="127.0.0.2")
    assert r.status == 403, (r.status, r.text)
    assert gw.wait_decision(mark, client="203.0.113.5")["detail"] == "country=KP"
    assert f"generation {unloadable_geo.generation} loaded" not in gw.log(mark)
    assert gw.counter("ip_geo", "geo_db_loaded") == gw.vms


def test_unloadable_published_database_is_counted_once_per_worker(unloadable_geo):
    gw = unloadable_geo.gw
    gw.wait_for_counter("ip_geo", "geo_db_load_failed", gw.vms)
    # A worker's next ticks (1 s apart once loaded) do not retry the generation it refused.
    harness.hold("geo_db_load_failed stays at one per worker",
                 lambda: gw.counter("ip_geo", "geo_db_load_failed") == gw.vms, 2.5, 0.1)


def test_unloadable_published_key_set_is_refused_and_the_last_good_one_keeps_verifying(start_gateway):
    key = SigningKey.generate("ES256", "ec-1")
    policy = {"policy_version": "keys-1", "realm": "api",
              "providers": {"idp": {"issuer": "https://idp.test",
                                    "remote_jwks": {"cluster": harness.upstream("jwks"), "path": "/idp.json"}}},
              "default": {"requires": {"provider": "idp"}}}
    gw = start_gateway({"jwt": policy}, jwks_files={"idp.json": jwks_bytes([key])}, ipv6=False)
    assert isinstance(gw, KongGateway)
    gw.wait_for_log_in_every_vm(r"JWKS generation 1 loaded for idp")
    meta_key, data_key = shared_keys("jwt", "jwks", gw.upstream_ref("jwks"), "/idp.json")
    mark = gw.log_mark()
    publish_garbage(gw, meta_key, data_key)
    gw.wait_for_log_in_every_vm(r"\[error\] .*gatewarden jwt: published JWKS of idp refused \(generation \d+\), the previous copy stays",
                                since=mark)
    assert gw.wait_for_counter("jwt", "jwks_load_failed", gw.vms) == gw.vms
    now = int(time.time())
    token = key.sign({"iss": "https://idp.test", "sub": "u1", "iat": now, "exp": now + 600})
    for _ in range(4):  # both workers, likely
        assert gw.get("/", headers={"authorization": f"Bearer {token}"}).status == 200
    harness.hold("jwks_load_failed stays at one per worker",
                 lambda: gw.counter("jwt", "jwks_load_failed") == gw.vms, 2.5, 0.1)


# --------------------------------------------------------------------------------------------
# Ports: nginx cannot listen on port 0


def test_nginx_start_takes_other_ports_when_one_is_taken(start_gateway, monkeypatch):
    """The harness picks free ports for nginx; when one is taken by the time nginx binds it
    ("Address already in use"), it starts nginx again on other ports instead of failing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        first = [taken.getsockname()[1]]
        real = harness.free_port
        monkeypatch.setattr(harness, "free_port", lambda host="127.0.0.1": first.pop() if first else real(host))
        gw = start_gateway({"ip_geo": GOOD}, ipv6=False)
        assert gw.port != taken.getsockname()[1]
        assert "Address already in use" in gw.log()
        assert gw.get("/", source="127.0.0.2").status == 200


# --------------------------------------------------------------------------------------------
# Counters across reloads, and the harness's path to them


@pytest.mark.kong_defect(
    "per-request counts are tallied in the VM and flushed on the tick (<= 1 s); a worker replaced by a "
    "reload exits without a last flush, so what it tallied since its last tick is lost: the glue flushes in "
    "a root's proxy_on_done, but this engine does not call it when a worker exits (ngx_proxy_wasm_root_destroy "
    "only frees the instances)")
def test_counts_tallied_before_a_reload_are_kept(start_gateway):
    gw = start_gateway({"ip_geo": GOOD}, ipv6=False)
    before = gw.settled_counters("ip_geo")
    with gw.load("/", duration=30, threads=2, source="127.0.0.2") as load:
        time.sleep(0.3)
        assert gw.push_policy("ip_geo", {**GOOD, "policy_version": "good-2"}) == "success"
        time.sleep(0.3)
    result = load.result
    assert result.failures == 0, str(result)
    got = harness.counter_changes(before, gw.settled_counters("ip_geo"))
    assert got.get("allowed", 0) == sum(result.statuses.values()), (got, str(result))


def test_metrics_module_reads_counters_by_crc32_id(start_gateway):
    """The admin module finds a metric by CRC-32 of its prefixed name and reads its value: its own
    query counter moves by one per query, and an unknown name is left out (not read as 0)."""
    gw = start_gateway({"ip_geo": GOOD}, ipv6=False)
    assert isinstance(gw, KongGateway)
    own = f"pw:{harness.METRICS_MODULE}:queries"
    first = gw.metrics([own])[own]
    assert gw.metrics([own])[own] == first + 1
    assert gw.metrics([own, "pw:gatewarden_ip_geo:no_such_counter"]) == {own: first + 3}  # the 500, then one by one
    # And a filter counter read this way follows real requests.
    before = gw.settled_counters("ip_geo")["allowed"]
    for _ in range(3):
        assert gw.get("/", source="127.0.0.2").status == 200
    assert gw.settled_counters("ip_geo")["allowed"] == before + 3
