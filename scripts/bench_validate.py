#!/usr/bin/env python3
"""Request-validation configurations of scripts/bench.py (issue 14), and, run as a script, the
module's size and the memory of its VM per worker with the example policy loaded.

Configurations, KIND_SIZE (SIZE: 200b | 10kb | 100kb, a valid JSON order of exactly that many
bytes, the example API's createOrder body: customer, N items, address, padded with trailing
whitespace to the byte):
  val_SIZE    our gatewarden_validate.wasm; every request is `POST /api/orders` with the body,
              `content-type: application/json` and the required `idempotency-key` header; the
              policy's one rule holds the example document's createOrder operation and the
              components it uses (deploy/policies/openapi/orders-api.json, cut to fit the 4 KB an
              nginx.conf argument allows: the same document on both hosts): route, header
              parameters, content type, the body parsed and validated, then allowed
  post_SIZE   no filter, the same request: the baseline of val_SIZE (ratios val ÷ post, same run)
The routes answer with direct_response (Envoy; Kong's nginx proxies to that), so the figures are
the gateway's; on Envoy both kinds have Envoy's buffer filter before the router (BUFFER_FILTER): a
direct_response answers on the request headers, before a filter that reads the body has decided,
which our glue refuses (503: "the upstream answered a request the filter had not decided yet"),
so the router must see the request only once its body is in. Kong's nginx gets client_body_buffer_size 1m (the filter reads a body only when
it is in memory) on both kinds. Validation cost per KB = (CPU µs/req val − post) ÷ body KB, and
the slope between 10 KB and 100 KB (what one more KB costs).

    CONFIGS=validate scripts/bench.sh                   # the six configurations, then this script
    .venv/bin/python scripts/bench_validate.py          # module size and VM memory only

Memory (this script's main): one Envoy per (policy, --concurrency 1 | 3), `none` (no filter) and
the validate filter with the full example policy (every operation compiled); after WARM_REQUESTS
valid 10 KB POSTs per worker's share, RSS (/proc) and admin /memory. Per worker = (RSS at 3 − RSS
at 1) ÷ 2; the VM's share = that of validate − that of none. Writes BENCH_OUT/validate_memory.md.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "deploy" / "policies" / "openapi" / "orders-api.json"
SIZES = {"200b": 200, "10kb": 10 * 1024, "100kb": 100 * 1024}
OURS, BASE = "val", "post"
CONFIGS = [f"{k}_{s}" for s in SIZES for k in (BASE, OURS)]
PATH = "/api/orders"
HEADERS = {"content-type": "application/json", "idempotency-key": "bench-0000000000000001"}
CUSTOMER = "0b8f5c1e-4f7a-4c52-9d55-3a1a2b9c7d10"
BUFFER = "1m"  # Kong: client_body_buffer_size on every configuration of this file
# Envoy: before the router on every configuration of this file (see the module docs).
BUFFER_FILTER = {"name": "envoy.filters.http.buffer",
                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                                  "max_request_bytes": 1 << 20}}

LUA = """-- POSTs the body of the file given after `--` to /api/orders (formatted once, in init).
local req
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  req = wrk.format("POST", "/api/orders", {["Content-Type"] = "application/json",
                                          ["Idempotency-Key"] = "bench-0000000000000001"}, body)
end
function request()
  return req
end
"""


def parts(cfg: str) -> tuple[str, int] | None:
    """(kind, body bytes) of a validation configuration, else None; the native module's nat_val_*
    as "val" (same body and checks; its table is scripts/bench_native.py's)."""
    m = re.fullmatch(r"(?:nat_(?=val_))?(val|post)_(200b|10kb|100kb)(?:@\w+)?", cfg)
    return (m.group(1), SIZES[m.group(2)]) if m else None


def item(i: int) -> dict[str, Any]:
    """One order line of ~100 bytes (so that 100 KB stays within the schema's maxItems 2000)."""
    return {"sku": f"ABC-{i % 10000:04d}", "quantity": 1 + i % 5, "unit_price": 9.5 + i % 100,
            "gift_wrap": i % 2 == 0, "options": {"colour": "blue", "size": "L"}}


def body(size: int) -> bytes:
    """A valid createOrder body of exactly `size` bytes: as many items as fit, then spaces."""
    base: dict[str, Any] = {"customer_id": CUSTOMER, "items": [item(0)]}
    if size >= 1024:
        base["shipping_address"] = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
                                    "country": "US"}
        base["deliver_after"] = "2026-12-24T09:00:00Z"
    while True:
        more = {**base, "items": base["items"] + [item(len(base["items"]))]}
        if len(json.dumps(more, separators=(",", ":"))) > size:
            break
        base = more
    text = json.dumps(base, separators=(",", ":")).encode()
    if len(text) > size:
        raise ValueError(f"no valid order fits {size} bytes")
    return text + b" " * (size - len(text))


def invalid_body() -> bytes:
    """An order whose second item has quantity 0: the check's 400."""
    return json.dumps({"customer_id": CUSTOMER, "items": [item(0), {**item(1), "quantity": 0}]}).encode()


def body_file(cfg: str, out: Path) -> Path:
    p = parts(cfg)
    assert p is not None
    path = out / "validate" / f"body-{p[1]}.json"
    data = body(p[1])
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def wrk_args(cfg: str, out: Path) -> tuple[list[str], list[str]] | None:
    """(options before the URL, arguments after it) for wrk, or None."""
    if not parts(cfg):
        return None
    lua = out / "validate" / "post_body.lua"
    lua.parent.mkdir(parents=True, exist_ok=True)
    if not lua.exists() or lua.read_text() != LUA:
        lua.write_text(LUA)
    return ["-s", str(lua)], ["--", str(body_file(cfg, out))]


def full_document() -> dict[str, Any]:
    return json.loads(DOC_PATH.read_text())


def bench_document() -> dict[str, Any]:
    """The example document's createOrder operation and the components it uses."""
    d = full_document()
    comp = d["components"]
    return {"openapi": d["openapi"], "info": {"title": d["info"]["title"], "version": d["info"]["version"]},
            "servers": d["servers"], "paths": {"/orders": {"post": d["paths"]["/orders"]["post"]}},
            "components": {"parameters": {"CorrelationId": comp["parameters"]["CorrelationId"]},
                           "requestBodies": comp["requestBodies"],
                           "schemas": {k: comp["schemas"][k] for k in ("NewOrder", "OrderItem", "Address")}}}


def policy(cfg: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our policy: the document on /api/, nothing validated elsewhere (GET / answers 200)."""
    return {"policy_version": f"bench-{cfg.replace('@', '_')}", "mode": "enforce", "failure_mode": "deny",
            "rules": [{"name": "orders", "match": {"path_prefix": "/api/"},
                       "openapi": {"document": document or bench_document()}}],
            "default": {}}


def post(port: int, data: bytes, path: str = PATH, conn: http.client.HTTPConnection | None = None) -> int:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", path, body=data, headers=HEADERS)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        if own:
            c.close()


def check(cfg: str, port: int, log: Path) -> None:
    """The configuration answers the benchmark's request 200; ours also refuses an invalid order
    (400), so the benchmark measures an enforcing filter."""
    p = parts(cfg)
    assert p is not None
    ok = post(port, body(p[1]))
    bad = post(port, invalid_body()) if p[0] == OURS else 400
    if (ok, bad) != (200, 400):
        raise SystemExit(f"{cfg}: the valid body answered {ok} (want 200), an invalid one {bad} (want 400); "
                         f"the benchmark would not measure validation; see {log}")


def counterpart(cfg: str) -> str | None:
    p = parts(cfg)
    if not p or p[0] != OURS:
        return None
    return cfg.replace(f"{OURS}_", f"{BASE}_", 1)


def table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """Ours against the same POST without a filter (Markdown); `results`: host -> configuration -> runs."""
    import statistics

    def med(host: str, cfg: str, key: str) -> float | None:
        runs = results.get(host, {}).get(cfg) or []
        return statistics.median(r[key] for r in runs) if runs else None

    def f(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "–"

    def rat(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a is not None and b else "–"

    lines = [
        "Request validation: ours (`val_*`, the example API's createOrder: route, parameters, content type,",
        "JSON body parsed and validated) against the same POST without a filter (`post_*`), valid bodies of",
        "200 B, 10 KB and 100 KB. Ratios: val ÷ post of the same run. Added = CPU µs/req val − post.",
        "",
        "| host | body | val requests/s | val p99 ms | val CPU µs/req | post CPU µs/req | rps ÷ post | p99 ÷ post "
        "| CPU/req ÷ post | added µs/req | added µs/KB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slopes: list[str] = []
    for host, per_cfg in results.items():
        added: dict[int, float] = {}
        for cfg in per_cfg:
            p = parts(cfg)
            if not p or p[0] != OURS or not per_cfg[cfg] or cfg.startswith("nat_"):
                continue
            base = counterpart(cfg)
            assert base is not None
            cpu, cpu_base = med(host, cfg, "cpu_us_per_req"), med(host, base, "cpu_us_per_req")
            extra = cpu - cpu_base if cpu is not None and cpu_base is not None else None
            if extra is not None:
                added[p[1]] = extra
            label = cfg.split("_", 1)[1]
            lines.append("| " + " | ".join([
                host, label, f(med(host, cfg, "rps"), ".0f"), f(med(host, cfg, "p99_ms"), ".2f"), f(cpu, ".1f"),
                f(cpu_base, ".1f"), rat(med(host, cfg, "rps"), med(host, base, "rps")),
                rat(med(host, cfg, "p99_ms"), med(host, base, "p99_ms")), rat(cpu, cpu_base), f(extra, ".1f"),
                f(extra / (p[1] / 1024) if extra is not None else None, ".2f")]) + " |")
        small, big = SIZES["10kb"], SIZES["100kb"]
        if small in added and big in added:
            slopes.append(f"{host}: {(added[big] - added[small]) / ((big - small) / 1024):.2f} µs per KB "
                          "(slope of the added CPU between 10 KB and 100 KB)")
    if slopes:
        lines += ["", "Validation cost per KB of body: " + "; ".join(slopes) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Module size and VM memory per worker (run as a script)

WARM_REQUESTS = int(os.environ.get("WARM_REQUESTS", "300"))


def rss_kb(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def envoy_memory(kind: str, concurrency: int, work: Path) -> dict[str, float]:
    """RSS (and admin /memory allocated) of an Envoy with one listener: no filter (`none`) or the
    validate filter with the full example policy (`validate`), after WARM_REQUESTS valid 10 KB POSTs
    over `concurrency` connections (each worker serves some)."""
    import bench
    import ecds
    from harness import ENVOY_BIN, free_port

    work.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    filters: list[dict[str, Any]] = []
    if kind == "validate":
        ecds_dir = work / "ecds"
        ecds_dir.mkdir(exist_ok=True)
        ecds.push(ecds_dir, "val_memory", policy("val_memory", full_document()), bench.module_path("validate"),
                  vm_id="gatewarden_val_memory")
        filters = [bench.ecds_filter("val_memory", ecds_dir)]
    boot = {"node": {"id": "gatewarden-bench", "cluster": "gatewarden"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [bench.listener("main", port, filters + [BUFFER_FILTER])]}}
    (work / "envoy.json").write_text(json.dumps(boot))
    log = work / "envoy.log"
    with log.open("wb") as lf:
        proc = subprocess.Popen([str(ENVOY_BIN), "-c", str(work / "envoy.json"), "--concurrency", str(concurrency),
                                 "--disable-hot-restart",
                                 "--base-id", str(os.getpid() % 50_000 + 400_000 + concurrency),
                                 "-l", "warning"], stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        bench.wait_ready(proc, admin, log, timeout=600)
        data = body(SIZES["10kb"])
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(max(4, 2 * concurrency))]
        for i in range(WARM_REQUESTS):
            status = post(port, data, conn=conns[i % len(conns)])
            if status != 200:
                raise SystemExit(f"envoy {kind} x{concurrency}: POST answered {status}; see {log}")
        for c in conns:
            c.close()
        time.sleep(0.5)  # let the workers settle after the last request (a reading, not an assertion)
        mem = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{admin}/memory", timeout=10).read())
        # The Python shim execs the real binary: the pid is Envoy's.
        return {"rss_kb": rss_kb(proc.pid), "allocated": int(mem.get("allocated", 0)),
                "heap_size": int(mem.get("heap_size", 0))}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    import bench

    out = bench.OUT
    out.mkdir(parents=True, exist_ok=True)
    module = bench.module_path("validate")
    if not module.exists():
        raise SystemExit(f"{module} missing (scripts/build.sh)")
    floor = bench.module_path("floor")
    lines = [f"Module size: {module.name} {module.stat().st_size:,} bytes"
             + (f" (floor {floor.stat().st_size:,})" if floor.exists() else "") + ".", ""]
    mem: dict[tuple[str, int], dict[str, float]] = {}
    for kind in ("none", "validate"):
        for conc in (1, 3):
            mem[(kind, conc)] = envoy_memory(kind, conc, out / "validate" / f"memory-{kind}-{conc}")
            print(f"envoy {kind:8s} --concurrency {conc}: RSS {mem[(kind, conc)]['rss_kb'] / 1024:.1f} MB, "
                  f"allocated {mem[(kind, conc)]['allocated'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)

    def per_worker(kind: str, key: str, scale: float) -> float:
        return (mem[(kind, 3)][key] - mem[(kind, 1)][key]) / 2 / scale

    rows = [("RSS MB", "rss_kb", 1024.0), ("admin /memory allocated MiB", "allocated", 2.0**20)]
    lines += [
        f"Envoy VM memory with the full example policy (11 operations compiled), after {WARM_REQUESTS} valid 10 KB "
        "POSTs; per worker = (value at --concurrency 3 − at 1) ÷ 2; the VM's share = validate − none.",
        "",
        "| measure | none x1 | none x3 | validate x1 | validate x3 | per worker, none | per worker, validate "
        "| VM per worker |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key, scale in rows:
        vals = [mem[(k, c)][key] / scale for k in ("none", "validate") for c in (1, 3)]
        pw_none, pw_val = per_worker("none", key, scale), per_worker("validate", key, scale)
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in vals)
                     + f" | {pw_none:.1f} | {pw_val:.1f} | {pw_val - pw_none:.1f} |")
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."]
    text = "\n".join(lines) + "\n"
    (out / "validate_memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "scripts" / "e2e"))
    sys.exit(main())
