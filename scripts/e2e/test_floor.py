"""End-to-end tests of the harness itself, with the floor filter (a Wasm filter that does nothing),
on every host: requests pass unchanged (bodies too), policy pushes apply live, a configuration
the host cannot load is refused while the old one keeps serving, and updates under load lose no
request (on Kong each update is a reload: the worst stall while the new workers compile the module
is measured and printed). Envoy only: the ECDS counters and the x-envoy-external-address header.

The native module has no floor filter: on envoy-native the same cases run with the IP filter and a
policy that allows everything (no rule, no default), the nearest native pass-through. A module file
that cannot load is a .wasm path (Wasm only); its native twin names a dynamic module Envoy cannot
find."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import statistics
import time
from pathlib import Path

import pytest

import ecds
import harness
from conftest import require_ipv6

FLOOR = {"policy_version": "floor-1"}
# The pass-through filter of each host: the floor module (Wasm), the IP filter allowing everything
# (native: the module has no floor filter).
PASS_THROUGH = {"envoy": "floor", "envoy-native": "ip_geo", "kong": "floor"}
# Updates pushed under load: an ECDS push costs Envoy ~5 ms; a Kong reload starts new workers,
# which compile the module (the floor: ~0.1-0.5 s).
UPDATES_UNDER_LOAD = {"envoy": 20, "kong": 5}


@pytest.fixture(scope="module")
def floor(host: str) -> str:
    """The name of this host's pass-through filter (PASS_THROUGH)."""
    return PASS_THROUGH[host]


def test_request_passes_through_floor_filter(start_gateway, floor: str):
    gw = start_gateway({floor: FLOOR})
    r = gw.get("/hello?x=1", headers={"x-test": "yes"}, source="127.0.0.7")
    assert r.status == 200, r.text
    echoed = r.json()
    assert echoed["path"] == "/hello?x=1"
    assert echoed["headers"]["x-test"] == "yes"
    # The proxy passes x-forwarded-for on as the client sent it (here: none); the filters read the
    # peer from the connection.
    assert "x-forwarded-for" not in echoed["headers"]
    if gw.engine == "envoy":  # Envoy only: its header for the peer, and ECDS counting the first config
        assert echoed["headers"]["x-envoy-external-address"] == "127.0.0.7"
        assert gw.ecds_counts(floor)["update_success"] == 1


@pytest.fixture(scope="module")
def floor_gw(start_module_gateway, floor: str) -> harness.BaseGateway:
    return start_module_gateway({floor: FLOOR})


@pytest.mark.parametrize("size", [11, 200_000])
def test_request_body_passes_unchanged(floor_gw: harness.BaseGateway, size: int):
    """A POST body reaches the upstream byte for byte. On Kong the filter chain is given the whole
    body in one call; 200 KB is more than nginx buffers in memory (it spills to a temp file)."""
    gw = floor_gw
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    r = gw.get("/upload", method="POST", body=body, headers={"content-type": "application/octet-stream"})
    assert r.status == 200, r.text
    echoed = r.json()
    assert (echoed["method"], echoed["body_len"]) == ("POST", size)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_ipv6_listener_passes_requests(start_gateway, floor: str):
    gw = start_gateway({floor: FLOOR})
    require_ipv6(gw)
    r = gw.get("/v6", ipv6=True)
    assert r.status == 200, r.text
    if gw.engine == "envoy":  # Envoy only: its header for the peer
        assert r.upstream_headers["x-envoy-external-address"] == "::1"


@pytest.mark.hosts("envoy")
def test_live_ecds_update_is_applied_and_counted(start_gateway, floor: str, record_property):
    gw = start_gateway({floor: FLOOR})
    version_text = gw.ecds_stat(floor, "version_text")
    update_time = gw.ecds_stat(floor, "update_time")
    latencies_ms = []
    for i in range(2, 12):
        pushed_at_ms = time.time() * 1000
        assert gw.push_policy(floor, {"policy_version": f"floor-{i}"}) == "success"
        latencies_ms.append(int(gw.stat(update_time)) - pushed_at_ms)
        assert str(gw.stat(version_text)).startswith(f"floor-{i}-")
    counts = gw.ecds_counts(floor)
    assert (counts["update_success"], counts["update_rejected"], counts["update_failure"]) == (11, 0, 0)
    record_property("ecds_reload_ms_median", statistics.median(latencies_ms))
    assert gw.get("/").status == 200


@pytest.mark.hosts("envoy")
@pytest.mark.wasm_only("a .wasm module path that cannot load; the native twin is the next test")
def test_rejected_update_keeps_previous_config(start_gateway):
    gw = start_gateway({"floor": FLOOR})
    mark = gw.log_mark()
    assert gw.push_policy("floor", {"policy_version": "bad"}, module="/nonexistent/floor.wasm") == "rejected"
    assert gw.ecds_counts("floor")["update_rejected"] == 1
    assert str(gw.stat(gw.ecds_stat("floor", "version_text"))).startswith("floor-1-")
    assert gw.get("/").status == 200
    gw.wait_for_log(r"Filesystem config update rejected", since=mark)
    # a later valid push is accepted
    assert gw.push_policy("floor", {"policy_version": "floor-2"}) == "success"


@pytest.mark.hosts("envoy-native")
def test_update_naming_a_module_envoy_cannot_find_keeps_previous_config(start_gateway, floor: str):
    """The native twin of the case above: an ECDS update naming a dynamic module that is not in
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH is rejected and the loaded module keeps serving."""
    gw = start_gateway({floor: FLOOR})
    mark = gw.log_mark()
    gw.module_name = "gatewarden_missing"
    assert gw.push_policy(floor, {"policy_version": "bad"}) == "rejected"
    assert gw.ecds_counts(floor)["update_rejected"] == 1
    gw.wait_for_log(r"Filesystem config update rejected: .*gatewarden_missing", since=mark)
    assert str(gw.stat(gw.ecds_stat(floor, "version_text"))).startswith("floor-1-")
    assert gw.get("/").status == 200
    gw.module_name = "gatewarden"  # a later valid push is accepted
    assert gw.push_policy(floor, {"policy_version": "floor-2"}) == "success"


@pytest.mark.hosts("kong")
def test_reload_naming_a_module_that_cannot_load_stops_the_nginx_master(start_gateway):
    """Unlike Envoy (above), this engine has no "keep the old configuration" for Wasm: the master
    fails to load the new configuration's module and exits, and the old workers keep serving
    without a master (no further reload, no respawn) until they are killed. Validate module
    paths before reloading."""
    gw = start_gateway({"floor": FLOOR})
    old_workers = set(gw.workers)
    mark = gw.log_mark()
    assert gw.push_policy("floor", {"policy_version": "bad"}, module="/nonexistent/floor.wasm") == "master exited"
    gw.wait_for_log(r"\[emerg\] .*open\(\) \"/nonexistent/floor\.wasm\" failed", since=mark)
    assert gw.proc is not None and gw.proc.returncode == 1
    assert gw.get("/").status == 200  # an orphaned old worker answered
    assert gw.workers == old_workers and all(Path(f"/proc/{pid}").exists() for pid in old_workers)


def mapped_module_inodes(gw: harness.BaseGateway) -> set[str]:
    """The inodes of libgatewarden.so that Envoy's process has mapped (/proc/<pid>/maps)."""
    assert gw.proc is not None
    maps = Path(f"/proc/{gw.proc.pid}/maps").read_text()
    return {line.split()[4] for line in maps.splitlines() if "libgatewarden.so" in line}


@pytest.mark.hosts("envoy-native")
def test_updates_reuse_the_loaded_module_and_a_new_file_needs_a_restart(start_gateway, floor: str):
    """Envoy 1.40 loads the native module once (dlopen by name from the search path) and every ECDS
    update reuses it: no second load, one mapping. A new build put over the file (a new inode) is
    not picked up by an update: the process keeps the old, now deleted, file mapped; upgrading the
    module means restarting Envoy."""
    gw = start_gateway({floor: FLOOR})
    loaded = r"Dynamic module ABI version v0\.2\.0 matched"
    assert len(re.findall(loaded, gw.log())) == 1
    inodes = mapped_module_inodes(gw)
    assert len(inodes) == 1, inodes
    for i in range(2, 6):
        assert gw.push_policy(floor, {"policy_version": f"floor-{i}"}) == "success"
    assert mapped_module_inodes(gw) == inodes
    so = gw.native_dir / "libgatewarden.so"
    shutil.copy2(so, so.with_suffix(".new"))
    os.replace(so.with_suffix(".new"), so)
    assert str(so.stat().st_ino) not in inodes
    assert gw.push_policy(floor, {"policy_version": "floor-new-file"}) == "success"
    assert gw.get("/").status == 200
    assert mapped_module_inodes(gw) == inodes, "the old build still serves"
    assert len(re.findall(loaded, gw.log())) == 1, "loaded once"


@pytest.mark.hosts("envoy")
def test_unreadable_ecds_file_is_an_update_failure(start_gateway, floor: str):
    gw = start_gateway({floor: FLOOR})
    assert gw.push_policy(floor, {"policy_version": "floor-2"}, wait=False) is None  # valid; now break the file
    gw.wait_for_stat(gw.ecds_stat(floor, "update_success"), 2)
    ecds.write_atomic(gw.ecds_dir / f"{floor}.json", "not json")
    gw.wait_for_stat(gw.ecds_stat(floor, "update_failure"), 1)
    assert gw.get("/").status == 200


@pytest.mark.hosts("envoy")
@pytest.mark.wasm_only("a .wasm module path that cannot load; the native twin is the next test")
def test_filter_whose_first_config_fails_rejects_requests(start_gateway):
    gw = start_gateway({"floor": FLOOR}, modules={"floor": "/nonexistent/floor.wasm"}, check_modules=False)
    assert gw.ecds_counts("floor")["update_rejected"] == 1
    r = gw.get("/")
    assert r.status == 500, f"expected fail closed (500), got {r.status} {r.text!r}"


@pytest.mark.hosts("envoy-native")
def test_filter_whose_first_config_names_a_missing_module_rejects_requests(start_gateway, floor: str):
    gw = start_gateway({floor: FLOOR}, module_name="gatewarden_missing")
    assert gw.ecds_counts(floor)["update_rejected"] == 1
    r = gw.get("/")
    assert r.status == 500, f"expected fail closed (500), got {r.status} {r.text!r}"


@pytest.mark.hosts("kong")
def test_nginx_does_not_start_with_a_module_it_cannot_load(start_gateway):
    with pytest.raises(harness.GatewayError, match="nginx exited"):
        start_gateway({"floor": FLOOR}, modules={"floor": "/nonexistent/floor.wasm"}, check_modules=False)


def test_updates_under_load_lose_no_request(start_gateway, host, floor: str, report):
    gw = start_gateway({floor: FLOOR})
    updates = UPDATES_UNDER_LOAD[harness.engine(host)]
    with gw.load("/load", duration=60, threads=4) as load:
        time.sleep(0.5)
        for i in range(updates):
            assert gw.push_policy(floor, {"policy_version": f"load-{i}"}) == "success"
            time.sleep(0.05)
        time.sleep(0.5)
    result = load.result
    report(f"floor, {updates} updates under load on {host}: {result}")
    assert result.requests > 100, f"load generator barely ran: {result}"
    assert result.failures == 0, f"failures during updates: {result}"
    if harness.engine(host) == "envoy":  # Envoy only: ECDS counts every update
        assert gw.ecds_counts(floor)["update_success"] == updates + 1
