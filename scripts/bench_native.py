#!/usr/bin/env python3
"""Native-module configurations of scripts/bench.py (issue 15): Gatewarden's filters as Envoy's
dynamic module (libgatewarden.so) against Envoy's own filters on the same work and against our
.wasm of the same policy, and, run as a script, the memory per worker of each.

Configurations, `nat_<the Wasm configuration>`: the same listener, policy and load as that Wasm
configuration, the filter being `envoy.filters.http.dynamic_modules` (module `gatewarden`,
`filter_name` ip_geo | jwt | rate_limit | validate, `filter_config` the same policy JSON the .wasm
gets as plugin configuration), inline in the listener (the .wasm configurations are ECDS
resources; the per-request path is the same):
  nat_ip_geo_10, nat_ip_geo_10_quiet, nat_ip_geo_100k    vs rbac_10 (Envoy's RBAC, the same 10 CIDRs;
                                                         _quiet: no decision header, as RBAC adds none)
  nat_jwt_ALG_TEMP         vs authn_cache_ALG_TEMP (warm: jwt_authn with its cache) and
                           authn_ALG_TEMP (cold: jwt_authn, no cache; its cache cannot help)
  nat_rl_LIMIT_CLIENTS     vs lrl_LIMIT_CLIENTS (local_ratelimit, max_dynamic_descriptors 65,536)
  nat_val_SIZE             vs post_SIZE (no filter: Envoy has no validation filter) and val_SIZE
  nat_floor                the module's filter that does nothing (filter_name floor): the
                           dynamic-module plumbing alone, vs none and the .wasm `floor`
Envoy finds the module through ENVOY_DYNAMIC_MODULES_SEARCH_PATH (env()): $BENCH_NATIVE_DIR, else
target/release (scripts/lib.sh build_native). Goal of the issue: native ≥ 1.0× Envoy's filter;
reported as speed = Envoy's filter ÷ ours (CPU µs/request, instructions/request) and rps ours ÷ its.

    CONFIGS=native scripts/bench.sh                # every comparison (groups: native_ip_geo,
                                                   # native_jwt, native_rl, native_val)
    CONFIGS=native INSTRUCTIONS=1 scripts/bench.sh # also instructions per request under callgrind
    .venv/bin/python scripts/bench_native.py       # memory per worker only

Memory (this script's main): for each MEMORY_CONFIGS configuration (none, the .wasm, the native
module, Envoy's filter where there is one) one Envoy at --concurrency 1 and one at 3, each loaded
by wrk for MEMORY_SECONDS (12 connections: every worker serves) with the configuration's requests
(10,000 clients for rl_open_10k, cold tokens for JWT: the verified-token cache fills); then RSS
(/proc) and admin /memory `allocated`. Once per process =
(value at 1 − none's at 1) − per worker, per worker = (value at 3 − at 1) ÷ 2 − none's (the
filter's share in both). Writes BENCH_OUT/native_memory.md.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "nat_"
MODULE_NAME = "gatewarden"  # Envoy loads lib<name>.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH
DYNAMIC_MODULE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"

IP_GEO = ["ip_geo_10", "ip_geo_10_quiet", "ip_geo_100k"]
JWT = [f"jwt_{alg}_{temp}" for alg in ("es256", "rs256") for temp in ("cold", "warm")]
RL = [f"rl_{lim}_{c}" for lim in ("open", "tight") for c in ("1", "10k")]
VAL = [f"val_{s}" for s in ("200b", "10kb", "100kb")]
# The allowed paths once more with `decision_header: false` (Envoy's filters add no header; the
# .wasm twins keep their default): nat_jwt_es256_warm_quiet ...
QUIET = ["jwt_es256_warm", "jwt_rs256_warm", "rl_open_1", "rl_open_10k"]
# nat_floor: the module's filter that does nothing (filter_name "floor"): the dynamic-module
# plumbing alone, as `floor` is the Proxy-Wasm floor.
FLOOR = ["floor"]
CONFIGS = [PREFIX + c for c in FLOOR + IP_GEO + JWT + RL + VAL] + [f"{PREFIX}{c}_quiet" for c in QUIET]


def groups() -> dict[str, list[str]]:
    """Configuration groups for CONFIGS: each native configuration with its .wasm twin, Envoy's
    filter on the same work and `none` (the validation ones: their no-filter POST baseline)."""
    ip = ["none"] + IP_GEO + ["rbac_10"] + [PREFIX + c for c in IP_GEO]
    jwt = ["none"] + [x for c in JWT for x in (c, authn(c), PREFIX + c)] + [authn(c, cache=True) for c in JWT
                                                                             if c.endswith("_cold")]
    jwt += [f"{PREFIX}{c}_quiet" for c in QUIET if c.startswith("jwt_")]
    rl = ["none"] + [x for c in RL for x in (c, "l" + c, PREFIX + c)]
    rl += [f"{PREFIX}{c}_quiet" for c in QUIET if c.startswith("rl_")]
    val = [x for c in VAL for x in (c.replace("val_", "post_"), c, PREFIX + c)]
    out = {"native_ip_geo": ip, "native_jwt": jwt, "native_rl": rl, "native_val": val}
    out["native"] = [c for g in out.values() for c in g if c != "none"]
    out["native"][:0] = ["none", "floor", PREFIX + "floor"]
    out["native"] = list(dict.fromkeys(out["native"]))
    return out


def authn(wasm_cfg: str, cache: bool | None = None) -> str:
    """Envoy's jwt_authn configuration that a JWT configuration compares with: warm tokens against
    jwt_authn with its cache, cold ones against jwt_authn without (`cache` overrides)."""
    _, alg, temp = wasm_cfg.split("_")
    use_cache = temp == "warm" if cache is None else cache
    return f"{'authn_cache' if use_cache else 'authn'}_{alg}_{temp}"


def parts(cfg: str) -> str | None:
    """The .wasm configuration a native one mirrors ("nat_jwt_es256_cold" -> "jwt_es256_cold"), else None."""
    if not cfg.startswith(PREFIX):
        return None
    base = cfg[len(PREFIX):]
    if base in FLOOR + IP_GEO + JWT + RL + VAL:
        return base
    return base.removesuffix("_quiet") if quiet(cfg) else None


def quiet(cfg: str) -> bool:
    """nat_X_quiet: the twin's policy with `decision_header: false`."""
    return cfg.startswith(PREFIX) and cfg.endswith("_quiet") and cfg[len(PREFIX):].removesuffix("_quiet") in QUIET


def filter_name(wasm_kind: str) -> str:
    """The module's filter_name for a .wasm filter kind (the same names)."""
    return wasm_kind


def module_dir() -> Path:
    d = os.environ.get("BENCH_NATIVE_DIR")
    return Path(d) if d else ROOT / "target" / "release"


def module() -> Path:
    return module_dir() / f"lib{MODULE_NAME}.so"


def env() -> dict[str, str]:
    """The environment Envoy runs in: the module's directory on its search path."""
    return {**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module_dir())}


def http_filter(kind: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The dynamic-module filter serving `kind` with `policy` (the .wasm's plugin configuration)."""
    return {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": DYNAMIC_MODULE_TYPE,
            "dynamic_module_config": {"name": MODULE_NAME},
            "filter_name": filter_name(kind),
            "filter_config": {"@type": STRING_VALUE_TYPE, "value": json.dumps(policy, separators=(",", ":"))},
        },
    }


def counterparts(cfg: str) -> tuple[str | None, str]:
    """(Envoy's filter on the same work, or None; our .wasm) of a native configuration. For the
    validation ones "Envoy's filter" is the POST without a filter (Envoy has no validation filter)."""
    base = parts(cfg)
    assert base is not None
    if base == "floor":
        return None, base
    if base.startswith("ip_geo_10"):
        return "rbac_10", base
    if base.startswith("ip_geo_"):
        return None, base
    if base.startswith("jwt_"):
        return authn(base), base
    if base.startswith("rl_"):
        return "l" + base, base
    return base.replace("val_", "post_"), base


def table(results: dict[str, list[dict[str, float]]], instructions: dict[str, float] | None = None) -> str:
    """Native module against Envoy's filter and our .wasm (Markdown); `results`: Envoy's runs per
    configuration; `instructions`: instructions/request per configuration when measured."""
    def med(cfg: str | None, key: str) -> float | None:
        runs = results.get(cfg or "") or []
        return statistics.median(r[key] for r in runs) if runs else None

    def f(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "–"

    def rat(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a is not None and b else "–"

    lines = [
        "Native module (`nat_*`, libgatewarden.so) against Envoy's filter on the same work and our .wasm of the same",
        "policy. speed = the other's CPU µs/request ÷ ours (≥ 1.00: we cost no more; the issue's goal vs Envoy's",
        "filter); rps = ours ÷ the other's. Validation: \"Envoy's filter\" is the POST without any filter (Envoy has",
        "no validation filter), so speed < 1 there is the cost of validating.",
        "",
        "| configuration | requests/s | p99 ms | CPU µs/req | Envoy's filter | speed vs it | rps vs it "
        "| .wasm CPU µs/req | speed vs .wasm | rps vs .wasm |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cfg in results:
        if not parts(cfg) or not results[cfg]:
            continue
        nat, wasm = counterparts(cfg)
        cpu = med(cfg, "cpu_us_per_req")
        lines.append("| " + " | ".join([
            cfg, f(med(cfg, "rps"), ".0f"), f(med(cfg, "p99_ms"), ".2f"), f(cpu, ".1f"),
            f"{nat} ({f(med(nat, 'cpu_us_per_req'), '.1f')})" if nat else "–",
            rat(med(nat, "cpu_us_per_req"), cpu), rat(med(cfg, "rps"), med(nat, "rps")),
            f(med(wasm, "cpu_us_per_req"), ".1f"), rat(med(wasm, "cpu_us_per_req"), cpu),
            rat(med(cfg, "rps"), med(wasm, "rps"))]) + " |")
    if instructions:
        lines += ["", instruction_table(instructions)]
    return "\n".join(lines) + "\n"


def instruction_table(per_req: dict[str, float]) -> str:
    """Instructions/request of each native configuration and of its counterparts, as ratios."""
    def rat(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a is not None and b else "–"

    none = per_req.get("none")
    lines = ["| configuration | instructions/req | added over none | Envoy's filter | its instr./req | speed vs it "
             "| .wasm instr./req | speed vs .wasm |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for cfg, ir in per_req.items():
        if not parts(cfg):
            continue
        nat, wasm = counterparts(cfg)
        n_ir, w_ir = per_req.get(nat or ""), per_req.get(wasm)
        lines.append("| " + " | ".join([
            cfg, f"{ir:.0f}", f"{ir - none:.0f}" if none else "–", nat or "–",
            f"{n_ir:.0f}" if n_ir else "–", rat(n_ir, ir), f"{w_ir:.0f}" if w_ir else "–", rat(w_ir, ir)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Memory per worker (run as a script)

MEMORY_CONFIGS = os.environ.get(
    "MEMORY_CONFIGS",
    "none,ip_geo_10,nat_ip_geo_10,rbac_10,ip_geo_100k,nat_ip_geo_100k,jwt_es256_cold,nat_jwt_es256_cold,"
    "authn_cache_es256_cold,rl_open_10k,nat_rl_open_10k,lrl_open_10k,val_10kb,nat_val_10kb").split(",")
MEMORY_SECONDS = int(os.environ.get("MEMORY_SECONDS", "4"))


def rss_kb(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def envoy_memory(cfg: str, concurrency: int, work: Path) -> dict[str, float]:
    """RSS and admin /memory `allocated` of an Envoy serving configuration `cfg` (bench.py's
    listener) with `concurrency` workers, after MEMORY_SECONDS of wrk on 12 connections."""
    import bench

    work.mkdir(parents=True, exist_ok=True)
    bootstrap, ports = bench.build(work, [cfg])
    (work / "envoy.json").write_text(json.dumps(bootstrap))
    log = work / "envoy.log"
    with log.open("wb") as lf:
        proc = subprocess.Popen([str(bench.ENVOY_BIN), "-c", str(work / "envoy.json"), "--concurrency",
                                 str(concurrency), "--disable-hot-restart",
                                 "--base-id", str(os.getpid() % 50_000 + 500_000 + concurrency), "-l", "warning"],
                                stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env())
    try:
        bench.wait_ready(proc, ports["admin"], log, timeout=600)
        bench.check_config(cfg, ports[cfg], log)
        r = bench.run_wrk(ports[cfg], MEMORY_SECONDS, None, cfg, connections=12)
        rlp = bench.rl.parts(cfg)
        if r["non_2xx"] and not (rlp and rlp[1] == "tight"):
            raise SystemExit(f"{cfg} x{concurrency}: {r['non_2xx']:.0f} answers not 2xx under load; see {log}")
        time.sleep(0.5)  # the workers finish their last requests (a reading, not an assertion)
        mem = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/memory", timeout=10).read())
        return {"rss_kb": rss_kb(proc.pid), "allocated": int(mem.get("allocated", 0)), "requests": r["requests"]}
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
    if not module().exists():
        raise SystemExit(f"{module()} missing (scripts/build.sh gatewarden-envoy-native)")
    mem: dict[tuple[str, int], dict[str, float]] = {}
    for cfg in MEMORY_CONFIGS:
        for conc in (1, 3):
            mem[(cfg, conc)] = m = envoy_memory(cfg, conc, out / "native_memory" / f"{cfg}-{conc}")
            print(f"{cfg:24s} x{conc}: RSS {m['rss_kb'] / 1024:7.1f} MB, allocated {m['allocated'] / 2**20:7.1f} MiB "
                  f"after {m['requests']:.0f} requests", file=sys.stderr, flush=True)

    def per_worker(cfg: str, key: str, scale: float) -> float:
        return (mem[(cfg, 3)][key] - mem[(cfg, 1)][key]) / 2 / scale

    lines = [
        f"Memory per worker: one Envoy per configuration at --concurrency 1 and 3, after {MEMORY_SECONDS} s of wrk on 12",
        "connections (every worker serves; JWT: cold tokens, the cache fills; rl_open_10k: 10,000 clients). Per worker",
        "= (value at 3 − at 1) ÷ 2 − none's; once per process = (value at 1 − none's at 1) − per worker: both the filter's",
        "share over Envoy with no filter. MB: RSS / 1024 kB;",
        "MiB: admin /memory allocated (tcmalloc: Envoy's heap; the native module allocates with its own mimalloc, "
        "seen in RSS only).",
        "",
        "| configuration | RSS x1 MB | RSS x3 MB | RSS per worker MB | RSS once per process MB | allocated x1 MiB "
        "| allocated x3 MiB | allocated per worker MiB | allocated once per process MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg in MEMORY_CONFIGS:
        row = [cfg]
        for key, scale in (("rss_kb", 1024.0), ("allocated", 2.0**20)):
            # The filter's share: this configuration's figure − none's.
            pw = per_worker(cfg, key, scale) - (per_worker("none", key, scale) if ("none", 3) in mem else 0.0)
            once = ((mem[(cfg, 1)][key] - mem[("none", 1)][key]) / scale - pw) if ("none", 1) in mem else None
            row += [f"{mem[(cfg, 1)][key] / scale:.1f}", f"{mem[(cfg, 3)][key] / scale:.1f}", f"{pw:.1f}",
                    f"{once:.1f}" if once is not None else "–"]
        lines.append("| " + " | ".join(row) + " |")
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."]
    text = "\n".join(lines) + "\n"
    (out / "native_memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "scripts" / "e2e"))
    sys.exit(main())
