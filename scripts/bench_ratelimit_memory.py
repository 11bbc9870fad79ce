#!/usr/bin/env python3
"""Bounded memory on a real Envoy (issue 13): Envoy's memory before, during and after a flood of
KEYS (default 1,000,000) distinct client addresses, and whether an exhausted client stays
limited meanwhile; our rate-limit module and Envoy's native local_ratelimit, one Envoy each.

Each Envoy (--concurrency 2) has one listener: a limit of 10 per 10 s (burst 10) per client
address, the client being the last x-forwarded-for hop (ours: `client_address.xff_num_trusted_hops:
1`, max_keys 65,536; native: a wildcard `remote_address` descriptor, max_dynamic_descriptors 65,536,
the HCM's xff_num_trusted_hops 1). Then:
1. the attacker (203.0.113.7) spends its burst: 11 requests, the last must be a 429;
2. wrk floods with x-forwarded-for = the next address of a counter (11.0.0.0 on, each address
   once), in runs of CHUNK seconds until KEYS requests were sent; after each run Envoy's admin
   `/memory` (allocated, heap size) is read;
3. meanwhile the attacker sends ATTACKER_RPS requests a second and counts its 200s: configured is
   1 per second of flood (its burst is spent), so admitted / configured should be 1 (±1 request).

  .venv/bin/python scripts/bench_ratelimit_memory.py          # KEYS=1000000 CHUNK=20 IMPLS=ours,native
Writes target/bench/ratelimit_memory.md (BENCH_OUT) and prints it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
import bench  # noqa: E402
import bench_ratelimit as rl  # noqa: E402
import ecds  # noqa: E402
from harness import free_port  # noqa: E402

KEYS = int(os.environ.get("KEYS", "1000000"))
CHUNK = int(os.environ.get("CHUNK", "20"))
ATTACKER = "203.0.113.7"
ATTACKER_RPS = float(os.environ.get("ATTACKER_RPS", "20"))
IMPLS = [i.strip() for i in os.environ.get("IMPLS", "ours,native").split(",") if i.strip()]
OUT = bench.OUT

FLOOD_LUA = """-- x-forwarded-for = the address of a counter from args[1] on (11.0.0.0 + n): each once.
local n = 0
function init(args) n = tonumber(args[1]) or 0 end
function request()
  local k = n + 184549376  -- 11.0.0.0
  n = n + 1
  local ip = string.format("%d.%d.%d.%d", math.floor(k / 16777216) % 256, math.floor(k / 65536) % 256,
                           math.floor(k / 256) % 256, k % 256)
  return wrk.format("GET", "/", {["X-Forwarded-For"] = ip})
end
"""


def policy() -> dict[str, Any]:
    return {"policy_version": "bench-memory", "mode": "enforce", "failure_mode": "deny",
            "client_address": {"xff_num_trusted_hops": 1}, "max_keys": rl.MAX_KEYS,
            "default": {"limits": [{"name": "per_ip", "rate": 10, "per_seconds": 10}], "key": ["client_address"]}}


def native() -> dict[str, Any]:
    f = rl.native_filter("lrl_tight_1")
    f["typed_config"]["descriptors"][0]["token_bucket"] = {"max_tokens": 10, "tokens_per_fill": 1, "fill_interval": "1s"}
    return f


def bootstrap(impl: str, work: Path) -> tuple[dict[str, Any], int, int]:
    port, admin = free_port(), free_port()
    if impl == "ours":
        ecds_dir = work / "ecds"
        ecds_dir.mkdir(parents=True, exist_ok=True)
        ecds.push(ecds_dir, "rl_memory", policy(), bench.module_path("rate_limit"), vm_id="gatewarden_rl_memory")
        filters = [bench.ecds_filter("rl_memory", ecds_dir)]
    else:
        filters = [native()]
    boot = {"node": {"id": "gatewarden-bench-memory", "cluster": "gatewarden"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [bench.listener(f"memory_{impl}", port, filters, xff_hops=1)]}}
    return boot, port, admin


def memory(admin: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/memory")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return {k: int(body.get(k, 0)) for k in ("allocated", "heap_size", "pageheap_unmapped", "pageheap_free")}


def status(port: int, xff: str) -> int:
    return bench.http_status(port, headers={"X-Forwarded-For": xff})


class Attacker(threading.Thread):
    """Sends ATTACKER_RPS requests a second from the attacker until stopped; counts 200s."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.ok, self.sent, self.other = port, 0, 0, 0
        self.stop = threading.Event()
        self.started = self.ended = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        while not self.stop.wait(1 / ATTACKER_RPS):
            try:
                s = status(self.port, ATTACKER)
            except OSError:
                self.other += 1
                continue
            self.sent += 1
            self.ok += s == 200
            self.other += s not in (200, 429)
        self.ended = time.monotonic()


def flood(impl: str) -> dict[str, Any]:
    work = OUT / "ratelimit_memory" / impl
    work.mkdir(parents=True, exist_ok=True)
    boot, port, admin = bootstrap(impl, work)
    (work / "envoy.json").write_text(json.dumps(boot))
    lua = work / "flood.lua"
    lua.write_text(FLOOD_LUA)
    log = work / "envoy.log"
    with log.open("wb") as lf:
        proc = subprocess.Popen([str(bench.ENVOY_BIN), "-c", str(work / "envoy.json"), "--concurrency", "2",
                                 "--disable-hot-restart", "--base-id", str(os.getpid() % 100_000 + 400_000),
                                 "-l", "warning"], stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    rows: list[dict[str, Any]] = []
    try:
        bench.wait_ready(proc, admin, log)
        drained = [status(port, ATTACKER) for _ in range(11)]
        if drained != [200] * 10 + [429]:
            raise SystemExit(f"{impl}: attacker before the flood {drained}; see {log}")
        rows.append({"keys": 0, **memory(admin)})
        attacker = Attacker(port)
        attacker.start()
        sent = offset = 0
        flood_ok = 0
        while sent < KEYS:
            out = subprocess.run(["wrk", "-t1", "-c32", f"-d{CHUNK}s", "-s", str(lua), f"http://127.0.0.1:{port}/",
                                  "--", str(offset)], capture_output=True, text=True, timeout=CHUNK + 60, check=True).stdout
            n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
            flood_ok += n - (int(bad.group(1)) if bad else 0)
            sent += n
            offset += n + 1000  # past the requests wrk started but did not count
            rows.append({"keys": sent, **memory(admin)})
            print(f"{impl}: {sent} keys, allocated {rows[-1]['allocated'] / 1e6:.1f} MB, "
                  f"attacker {attacker.ok} of {attacker.sent}", file=sys.stderr, flush=True)
        attacker.stop.set()
        attacker.join()
        elapsed = attacker.ended - attacker.started
        return {"impl": impl, "rows": rows, "attacker_ok": attacker.ok, "attacker_sent": attacker.sent,
                "attacker_other": attacker.other, "elapsed": elapsed, "configured": elapsed * 1.0,
                "flood_sent": sent, "flood_ok": flood_ok}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(results: list[dict[str, Any]]) -> str:
    lines = [f"Envoy {KEYS:,} distinct client addresses (x-forwarded-for), --concurrency 2, limit 10 per 10 s per address,",
             "max_keys / max_dynamic_descriptors 65,536; Envoy admin /memory after each wrk run.", ""]
    for r in results:
        base = r["rows"][0]["allocated"]
        lines += [f"**{r['impl']}**: attacker admitted {r['attacker_ok']} of {r['attacker_sent']} over "
                  f"{r['elapsed']:.1f} s of flood (configured {r['configured']:.1f}: accuracy "
                  f"{r['attacker_ok'] / r['configured']:.3f}; other statuses {r['attacker_other']}); flood "
                  f"{r['flood_ok']} admitted of {r['flood_sent']}.", "",
                  "| keys sent | allocated MB | over start MB | heap MB |", "|---:|---:|---:|---:|"]
        for row in r["rows"]:
            lines.append(f"| {row['keys']:,} | {row['allocated'] / 1e6:.1f} | {(row['allocated'] - base) / 1e6:.1f} | "
                         f"{row['heap_size'] / 1e6:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    results = [flood(i) for i in IMPLS]
    text = report(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ratelimit_memory.md").write_text(text)
    (OUT / "ratelimit_memory.json").write_text(json.dumps(results, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
