#!/usr/bin/env python3
"""Fleet-mode rate limiting in scripts/bench.sh (issue 13): our filter calling a rate limit service per
request and in lease mode, against Envoy's native `envoy.filters.http.ratelimit` filter calling the same
service (`gatewarden-ratelimit`, counters in a throwaway Redis), on the same limit per client address.

Configurations, IMPL_LIMIT_CLIENTS:
  fleet_call_*   our gatewarden_rate_limit.wasm, one fleet limit (`"scope": "fleet"`) per client address,
                 one check per request (Envoy: gRPC ShouldRateLimit to the cluster; Kong's engine:
                 POST /json to the service's HTTP address)
  fleet_lease_*  the same with `fleet.lease` {units: LEASE_UNITS (50, at most the limit's burst, so 5 for
                 `tight`), lease_ms: LEASE_MS (1000)}
  rls_*          Envoy only: Envoy's native ratelimit filter, descriptors (generic_key gatewarden_limit
                 = "<rule>/per_ip", remote_address) from its `rate_limits` actions, the same service,
                 failure_mode_deny, timeout 1 s
  LIMIT open     1,000,000 per second (burst 1,000,000): nothing is denied
        tight    5 per day (burst 5): each address gets 5, then 429s
  CLIENTS 1|10k  as scripts/bench_ratelimit.py: x-forwarded-for 10.100.0.0, or rotated over 10,000
                 addresses (every listener has the HCM's xff_num_trusted_hops 1; ours
                 client_address.xff_num_trusted_hops 1: both take the last hop)
Every configuration has its own rule (`<host>_<configuration>`) in the one service policy: no two share a bucket;
each gateway's policy holds only its own rule. The filter's fleet timeout is 1,000 ms, the service's Redis
timeout 500 ms, failure modes deny (a failure would show as non-2xx and lower the accuracy).

One Envoy (--concurrency 1, CPU 0), one nginx per Kong configuration (1 worker, CPU 0), every one
proxying to a second Envoy with a direct_response listener (on CPU 1, not counted: Envoy's ratelimit
filter does nothing on a direct_response route), the service (release build, $GATEWARDEN_RATELIMIT or
target/release/gatewarden-ratelimit, RUST_LOG=warn) and Redis unpinned; wrk -t1 -cCONNECTIONS on CPU 1, in
interleaved rounds like scripts/bench.py. Per run: requests/s, p99, CPU µs per request of the gateway
process, of the service and of Redis (/proc/<pid>/stat deltas over the run; they run on both cores, so
they compete with wrk and the gateway), calls per request (the service's
gatewarden_ratelimit_checks_total over the run ÷ wrk's requests: the same measure for ours and native;
wrk leaves up to CONNECTIONS requests uncounted at the end of a run), `uptime` load before the run.
Accuracy = admitted (2xx) / configured over the configuration's life (warm-up and every round), as in
scripts/bench_ratelimit.py.

Environment: ROUNDS (3), DURATION (8), WARMUP (2), CONNECTIONS (32), CONFIGS / BENCH_CONFIGS (`fleet` or
unset: every configuration here; otherwise the fleet_* / rls_* names of the comma list), HOSTS
(envoy,kong), BENCH_MODULE_DIR, BENCH_OUT (target/bench), LEASE_UNITS (50), LEASE_MS (1000).
INSTRUCTIONS=1: afterwards, instructions per request under callgrind of the 1-client Envoy configurations
(window method, WARM 200 then N 2,000 sequential requests; see instructions()); FLEET_INSTRUCTIONS_ONLY=1:
only those. Writes BENCH_OUT/fleet.md, fleet.json (and fleet_instructions.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "e2e"))
import bench  # noqa: E402
import bench_kong  # noqa: E402
import bench_ratelimit as rl  # noqa: E402
import ecds  # noqa: E402
import nginxconf  # noqa: E402
from harness import ENVOY_BIN, _die_with_parent, free_port, wasmx_bin  # noqa: E402
from services import RateLimitService, RedisServer, native_ratelimit_filter, redis_missing, rls_actions  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "8"))
WARMUP = int(os.environ.get("WARMUP", "2"))
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "target" / "bench"))
LEASE_UNITS = int(os.environ.get("LEASE_UNITS", "50"))
LEASE_MS = int(os.environ.get("LEASE_MS", "1000"))
CLUSTER = "gatewarden_rls"
# The gateways' timeout for a check (ours: fleet.service.timeout_ms; native: the filter's timeout);
# 10 s under callgrind, where everything is 50 times slower.
TIMEOUT_MS = 1000
IMPLS = ("fleet_call", "fleet_lease", "rls")
CONFIGS = [f"{i}_{lim}_{c}" for lim in rl.LIMITS for c in rl.CLIENTS for i in IMPLS]


def parts(cfg: str) -> tuple[str, str, int] | None:
    """(impl, limit, clients) of a fleet configuration, else None."""
    m = re.fullmatch(r"(fleet_call|fleet_lease|rls)_(open|tight)_(1|10k)", cfg)
    return (m.group(1), m.group(2), rl.CLIENTS[m.group(3)]) if m else None


def selected(spec: str | None) -> list[str]:
    """The fleet configurations a CONFIGS value selects (unset, `all` or `fleet`: all of them)."""
    if not spec:
        return list(CONFIGS)
    names = [x.strip() for x in spec.split(",") if x.strip()]
    if "fleet" in names or "all" in names:
        return list(CONFIGS)
    return [n for n in names if parts(n)]


def limit(cfg: str) -> tuple[int, int]:
    p = parts(cfg)
    assert p is not None
    return rl.TIGHT if p[1] == "tight" else rl.OPEN


def lease_units(cfg: str) -> int:
    """LEASE_UNITS, at most the limit's burst (a larger ask is refused at configure time)."""
    return min(LEASE_UNITS, limit(cfg)[0])


def rule_name(host: str, cfg: str) -> str:
    """Each host's configuration has a rule of its own: no bucket is shared between them."""
    return f"{host}_{cfg}"


def rule(host: str, cfg: str) -> dict[str, Any]:
    units, per = limit(cfg)
    return {"name": rule_name(host, cfg), "match": {"path_prefix": "/"}, "key": ["client_address"],
            "limits": [{"name": "per_ip", "rate": units, "per_seconds": per, "burst": units, "scope": "fleet"}]}


def policy(rules: list[tuple[str, str]], http_address: str, lease: int | None = None) -> dict[str, Any]:
    """A policy with one rule per (host, configuration) (the service's: all; a gateway's: its own)."""
    fleet: dict[str, Any] = {"service": {"cluster": CLUSTER, "address": http_address, "timeout_ms": TIMEOUT_MS},
                             "failure_mode": "deny"}
    if lease:
        fleet["lease"] = {"units": lease, "lease_ms": LEASE_MS}
    version = "bench-fleet-" + (rule_name(*rules[0]) if len(rules) == 1 else "service")
    return {"policy_version": version, "mode": "enforce",
            "failure_mode": "deny", "client_address": {"xff_num_trusted_hops": 1}, "fleet": fleet,
            "rules": [rule(h, c) for h, c in rules]}


def gateway_policy(host: str, cfg: str, http_address: str) -> dict[str, Any]:
    p = parts(cfg)
    assert p is not None and p[0] != "rls"
    return policy([(host, cfg)], http_address, lease_units(cfg) if p[0] == "fleet_lease" else None)


def cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": f"{TIMEOUT_MS / 1000:g}s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def rls_cluster(port: int) -> dict[str, Any]:
    return cluster(CLUSTER, port, http2=True)


def module() -> Path:
    return bench.module_path("rate_limit")


def envoy_bootstrap(workdir: Path, cfgs: list[str], rls: RateLimitService,
                    upstream_port: int) -> tuple[dict[str, Any], dict[str, int]]:
    ecds_dir = workdir / "ecds"
    ecds_dir.mkdir(parents=True, exist_ok=True)
    ports = {"admin": free_port()}
    listeners = []
    for cfg in cfgs:
        ports[cfg] = free_port()
        if parts(cfg)[0] == "rls":  # type: ignore[index]
            actions = rls_actions(f"{rule_name('envoy', cfg)}/per_ip", "remote_address")
            filters = [native_ratelimit_filter(CLUSTER, [actions],
                                               timeout=f"{TIMEOUT_MS / 1000:g}s")]
        else:
            ecds.push(ecds_dir, cfg, gateway_policy("envoy", cfg, rls.http_address), module(),
                      vm_id=f"gatewarden_{cfg}")
            filters = [bench.ecds_filter(cfg, ecds_dir)]
        lst = bench.listener(cfg, ports[cfg], filters, xff_hops=1)
        # Envoy's ratelimit filter does nothing on a direct_response route (no route entry): every
        # configuration proxies to the upstream Envoy instead.
        hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
        route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
        hcm["route_config"]["virtual_hosts"][0]["routes"] = [route]
        listeners.append(lst)
    return {
        "node": {"id": "gatewarden-bench-fleet", "cluster": "gatewarden"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["admin"]}}},
        "static_resources": {"listeners": listeners,
                             "clusters": [rls_cluster(rls.grpc_port), cluster("upstream", upstream_port, http2=False)]},
    }, ports


def upstream_bootstrap(port: int, admin: int) -> dict[str, Any]:
    """The upstream: an Envoy of its own with one direct_response listener (its CPU is not the gateway's)."""
    return {"node": {"id": "gatewarden-bench-upstream", "cluster": "gatewarden"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [bench.listener("none", port, [])]}}


def start_envoy(workdir: Path, name: str, bootstrap: dict[str, Any], admin: int, cpu: str | None,
                base_id: int) -> subprocess.Popen[bytes]:
    cfg_path = workdir / f"{name}.json"
    cfg_path.write_text(json.dumps(bootstrap))
    log = workdir / f"{name}.log"
    cmd = [str(ENVOY_BIN), "-c", str(cfg_path), "--concurrency", "1", "--disable-hot-restart",
           "--base-id", str(base_id), "-l", "warning"]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    try:
        bench.wait_ready(proc, admin, log)
    except BaseException:
        proc.kill()
        raise
    return proc


def kong_start(cfg: str, workdir: Path, upstream: str, cpu: str | None, rls: RateLimitService) -> bench_kong.Instance:
    """One nginx (1 worker) with our filter in fleet mode over POST /json; waits for its first answer."""
    wdir = workdir / f"kong-{cfg}"
    port = free_port()
    text = nginxconf.render(nginxconf.Config(
        prefix=wdir, port=port, upstream=upstream, modules={"rate_limit": module()},
        routes=[nginxconf.Route("/", [("rate_limit", gateway_policy("kong", cfg, rls.http_address))])], workers=1,
        log_level="warn", request_headers_in_access=True, access_log=False, run_as_root=os.geteuid() == 0))
    (wdir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = wdir / "nginx.conf"
    conf.write_text(text)
    cmd = [str(wasmx_bin()), "-p", str(wdir), "-c", str(conf), "-e", str(wdir / "error.log")]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    t0 = time.monotonic()
    with open(wdir / "nginx.out", "wb") as out_f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_f, stderr=subprocess.STDOUT, cwd=wdir,
                                preexec_fn=_die_with_parent)
    inst = bench_kong.Instance(cfg, wdir, port, proc)
    try:
        while True:  # first answer from an address of its own (a 429 is an answer too)
            if proc.poll() is not None:
                raise SystemExit(f"kong {cfg}: nginx exited ({proc.returncode}); see {inst.log}")
            if time.monotonic() - t0 > bench_kong.START_TIMEOUT:
                raise SystemExit(f"kong {cfg}: no answer in {bench_kong.START_TIMEOUT}s; see {inst.log}")
            try:
                status = bench.http_status(port, headers={"X-Forwarded-For": rl.PROBE_ADDRESS})
            except OSError:
                time.sleep(0.01)
                continue
            if status not in (200, 429):
                raise SystemExit(f"kong {cfg}: GET / answered {status}; see {inst.log}")
            break
        inst.start_ms = (time.monotonic() - t0) * 1e3
        inst.worker = bench_kong.worker_of(proc.pid)
        check(cfg, port, inst.log)
    except BaseException:
        bench_kong.stop(inst)
        raise
    return inst


def check(cfg: str, port: int, log: Path) -> None:
    """open: 200s; tight: 5 × 200 then 429, from an address the benchmark never uses."""
    hdr = {"X-Forwarded-For": rl.CHECK_ADDRESS}
    tight = parts(cfg)[1] == "tight"  # type: ignore[index]
    want = [200] * (rl.TIGHT[0] if tight else 6) + ([429] if tight else [])
    got = [bench.http_status(port, headers=hdr) for _ in want]
    if got != want:
        raise SystemExit(f"{cfg}: statuses {got}, expected {want}: the benchmark would not measure the configured "
                         f"limit; see {log}")


def checks_total(rls: RateLimitService) -> int:
    return sum(v for k, v in rls.metrics().items() if k.startswith("gatewarden_ratelimit_checks_total"))


def envoy_counters(admin: int) -> dict[str, int]:
    """Our filter's counters (all its VMs: Envoy keeps one counter per name) from admin /stats."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=%5Ewasmcustom%5C.", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.removeprefix("wasmcustom.")] = int(value)
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def configured(cfg: str, runs: list[int]) -> float:
    p = parts(cfg)
    assert p is not None
    if p[1] == "open":
        return float(sum(runs))
    return float(sum(min(n, rl.TIGHT[0]) for n in rl.per_client(p[2], runs)))


def table(results: dict[str, dict[str, list[dict[str, float]]]], life: dict[str, dict[str, list[dict[str, float]]]],
          meta: dict[str, Any]) -> str:
    fmt, rat = rl.fmt, rl.rat

    def med(host: str, cfg: str, key: str) -> float | None:
        return rl.median_of(results, host, cfg, key)

    lines = [
        f"Fleet rate limiting: ours per call (`fleet_call_*`) and in lease mode (`fleet_lease_*`, {LEASE_UNITS} units "
        f"(5 for tight), lease_ms {LEASE_MS}) against Envoy's native ratelimit filter (`rls_*`), all on "
        f"gatewarden-ratelimit + Redis, one fleet limit per client address. Envoy {meta['envoy']} --concurrency 1 "
        f"and each Kong nginx (1 worker) on CPU {meta['cpu']}, wrk -t1 -c{bench.CONNECTIONS} -d{DURATION}s on CPU "
        f"{meta['wrk_cpu']}, service and Redis unpinned; {ROUNDS} interleaved rounds, medians. CPU µs/req: gateway "
        "process, service, Redis. calls/req: the service's checks ÷ requests. Accuracy = admitted / configured over "
        "the configuration's life. Ratios: ÷ the baseline (Envoy: rls_* on the same limit and clients; Kong: "
        "fleet_call_* on the same). load: /proc/loadavg (1 min) before the runs, min–max.",
        "",
        "| host | configuration | requests/s | p99 ms | gateway CPU µs/req | service CPU µs/req | Redis CPU µs/req "
        "| calls/req | accuracy | load | baseline | rps ÷ base | p99 ÷ base | gateway CPU ÷ base "
        "| total CPU ÷ base |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for host, per_cfg in results.items():
        for cfg, runs in per_cfg.items():
            if not runs:
                continue
            p = parts(cfg)
            assert p is not None
            lim_c = f"{p[1]}_{'1' if p[2] == 1 else '10k'}"
            base = (f"rls_{lim_c}" if p[0] != "rls" else None) if host == "envoy" else \
                (f"fleet_call_{lim_c}" if p[0] == "fleet_lease" else None)
            every = life[host][cfg]
            sent = [int(r["requests"]) for r in every]
            admitted = sum(int(r["requests"] - r["non_2xx"]) for r in every)
            conf = configured(cfg, sent)
            loads = [float(r["load1"]) for r in runs]
            total = {c: (med(host, c, "cpu_us_per_req") or 0) + (med(host, c, "svc_us_per_req") or 0)
                     + (med(host, c, "redis_us_per_req") or 0) for c in (cfg, base) if c}
            row = [host, cfg, fmt(med(host, cfg, "rps"), ".0f"), fmt(med(host, cfg, "p99_ms"), ".2f"),
                   fmt(med(host, cfg, "cpu_us_per_req"), ".1f"), fmt(med(host, cfg, "svc_us_per_req"), ".1f"),
                   fmt(med(host, cfg, "redis_us_per_req"), ".1f"), fmt(med(host, cfg, "calls_per_req"), ".3f"),
                   f"{admitted / conf:.4f}" if conf else "–", f"{min(loads):.2f}–{max(loads):.2f}"]
            if base and results[host].get(base):
                row += [base] + [rat(med(host, cfg, m), med(host, base, m))
                                 for m in ("rps", "p99_ms", "cpu_us_per_req")]
                row += [rat(total[cfg], total[base])]
            else:
                row += ["", "", "", "", ""]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Instructions per request (INSTRUCTIONS=1): the gateway Envoy, the service and Redis each under callgrind

def wrapper(path: Path, real: str, outfile: Path) -> Path:
    """An executable that execs `real` under callgrind (the pid stays the same, so a `-z`/`-d` by pid works)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec valgrind --tool=callgrind --smc-check=all --callgrind-out-file={outfile} '
                    f'{real} "$@"\n')
    path.chmod(0o755)
    return path


def callgrind(pid: int, op: str) -> None:
    subprocess.run(["callgrind_control", op, str(pid)], check=True, capture_output=True)


def last_dump(outfile: Path) -> int:
    """Ir of the newest dump (`<outfile>.<n>`) of a process."""
    dumps = sorted(outfile.parent.glob(outfile.name + ".*"), key=lambda f: int(f.suffix[1:]))
    m = re.search(r"^summary: (\d+)", dumps[-1].read_text(errors="replace"), re.M) if dumps else None
    if not m:
        raise SystemExit(f"no callgrind dump of {outfile}")
    return int(m.group(1))


def sequential(port: int, n: int, ok: tuple[int, ...]) -> None:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for _ in range(n):
        conn.request("GET", "/", headers={"X-Forwarded-For": rl.address(0)})
        r = conn.getresponse()
        r.read()
        if r.status not in ok:
            raise SystemExit(f"port {port}: status {r.status}")
    conn.close()


def instructions(cfgs: list[str]) -> str:
    """Instructions per request, window method (WARM requests, zero, N sequential keep-alive requests from one
    client, dump), of the gateway Envoy (--concurrency 1: its gRPC calls included) and, separately, of the
    service and Redis over the same window; one Envoy lifetime per configuration, the service and Redis
    shared (each configuration has its own rule). 1-client configurations only."""
    import bench_instructions as bi
    global TIMEOUT_MS
    TIMEOUT_MS = 10_000
    n, warm = int(os.environ.get("N", "2000")), int(os.environ.get("WARM", "200"))
    cfgs = [c for c in cfgs if parts(c)[2] == 1]  # type: ignore[index]
    work = OUT / "fleet-instructions"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    svc_out, redis_out = work / "callgrind.service", work / "callgrind.redis"
    real_svc = os.environ.get("GATEWARDEN_RATELIMIT", str(ROOT / "target" / "release" / "gatewarden-ratelimit"))
    os.environ["GATEWARDEN_RATELIMIT"] = str(wrapper(work / "bin" / "gatewarden-ratelimit", real_svc, svc_out))
    wrapper(work / "bin" / "redis-server", str(shutil.which("redis-server")), redis_out)
    os.environ["PATH"] = f"{work / 'bin'}:{os.environ['PATH']}"
    rows: dict[str, dict[str, float]] = {}
    with RedisServer(work / "redis", ready_timeout=120) as redis, \
            RateLimitService(work / "rls", policy([("envoy", c) for c in cfgs], "127.0.0.1:1"), redis.url,
                             redis_timeout_ms=10_000, ready_timeout=300) as rls:
        up_port, up_admin = free_port(), free_port()
        upstream = start_envoy(work, "upstream", upstream_bootstrap(up_port, up_admin), up_admin, None,
                               os.getpid() % 100_000 + 320_000)
        try:
            for cfg in cfgs:
                cw = work / cfg
                cw.mkdir()
                bootstrap, ports = envoy_bootstrap(cw, [cfg], rls, up_port)
                (cw / "envoy.json").write_text(json.dumps(bootstrap))
                env_out = cw / "callgrind.envoy"
                log = cw / "envoy.log"
                cmd = ["valgrind", "--tool=callgrind", "--smc-check=all", f"--callgrind-out-file={env_out}",
                       bi.envoy_binary(), "-c", str(cw / "envoy.json"), "--concurrency", "1", "--disable-hot-restart",
                       "-l", "warning"]
                with log.open("wb") as lf:
                    proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
                try:
                    bench.wait_ready(proc, ports["admin"], log, timeout=1800)
                    ok = (200, 429) if parts(cfg)[1] == "tight" else (200,)  # type: ignore[index]
                    # The first call connects to a service under valgrind: wait for an answer from it.
                    deadline = time.monotonic() + 300
                    while True:
                        try:
                            if bench.http_status(ports[cfg], headers={"X-Forwarded-For": rl.address(0)}) in ok:
                                break
                        except OSError:  # urllib's 5 s passed
                            pass
                        if time.monotonic() > deadline:
                            raise SystemExit(f"{cfg}: no good answer under callgrind in 300 s; see {log}")
                        time.sleep(1)
                    sequential(ports[cfg], warm, ok)
                    checks = checks_total(rls)
                    for pid in (proc.pid, rls.proc.pid, redis.proc.pid):  # type: ignore[union-attr]
                        callgrind(pid, "-z")
                    sequential(ports[cfg], n, ok)
                    for pid in (proc.pid, rls.proc.pid, redis.proc.pid):  # type: ignore[union-attr]
                        callgrind(pid, "-d")
                    rows[cfg] = {"envoy": last_dump(env_out) / n, "service": last_dump(svc_out) / n,
                                 "redis": last_dump(redis_out) / n, "calls_per_req": (checks_total(rls) - checks) / n}
                finally:
                    proc.terminate()
                    proc.wait(timeout=300)
                r = rows[cfg]
                print(f"{cfg:20s} envoy {r['envoy']:10.0f}  service {r['service']:10.0f}  redis {r['redis']:9.0f} "
                      f"instructions/request  calls/req {r['calls_per_req']:.3f}", file=sys.stderr, flush=True)
        finally:
            upstream.terminate()
            upstream.wait(timeout=60)
    lines = [f"Instructions per request under callgrind (window: {warm} warm-up requests, then {n} sequential "
             "keep-alive requests from one client address), Envoy --concurrency 1 proxying to an upstream Envoy "
             "outside valgrind; the service (release build) and Redis under callgrind too, their counts over the same "
             "window, separately. The gateway column includes Envoy's side of every call (gRPC client, HTTP/2 codec); "
             "the kernel's work (loopback TCP, syscalls) is in none. Ratios: ÷ rls_* on the same limit.", "",
             "| configuration | Envoy instr./req | service instr./req | Redis instr./req | total | calls/req "
             "| Envoy ÷ native | total ÷ native |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cfg, r in rows.items():
        base = rows.get("rls_" + cfg.split("_", 2)[2]) if not cfg.startswith("rls_") else None
        tot = r["envoy"] + r["service"] + r["redis"]
        btot = base["envoy"] + base["service"] + base["redis"] if base else None
        lines.append(f"| {cfg} | {r['envoy']:.0f} | {r['service']:.0f} | {r['redis']:.0f} | {tot:.0f} | "
                     f"{r['calls_per_req']:.3f} | "
                     + (f"{r['envoy'] / base['envoy']:.2f} | {tot / btot:.2f} |" if base and btot
                                                      else " | |"))
    text = "\n".join(lines) + "\n"
    (OUT / "fleet_instructions.md").write_text(text)
    return text


def main() -> int:
    if os.environ.get("FLEET_INSTRUCTIONS_ONLY") == "1":
        print(instructions(selected(os.environ.get("BENCH_CONFIGS") or os.environ.get("CONFIGS"))))
        return 0
    cfgs = selected(os.environ.get("BENCH_CONFIGS") or os.environ.get("CONFIGS"))
    if not cfgs:
        print("no fleet configuration selected", file=sys.stderr)
        return 0
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (scripts/setup.sh)")
    if not module().exists():
        raise SystemExit(f"{module()} not built (scripts/build.sh gatewarden-rate-limit)")
    os.environ.setdefault("GATEWARDEN_RATELIMIT", str(ROOT / "target" / "release" / "gatewarden-ratelimit"))
    os.environ["RUST_LOG"] = os.environ.get("FLEET_RUST_LOG", "warn")  # a flood of denials logs one line each
    hosts = bench.selected_hosts(os.environ.get("HOSTS", "envoy,kong"))
    kong_cfgs: list[str] = []
    if "kong" in hosts:
        why = bench_kong.missing()
        if why:
            print(f"Kong half of the fleet benchmark skipped: {why}", file=sys.stderr, flush=True)
        else:
            kong_cfgs = [c for c in cfgs if parts(c)[0] != "rls"]  # type: ignore[index]
    envoy_cfgs = cfgs if "envoy" in hosts else []
    cpu, wrk_cpu = ("0", "1") if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else (None, None)
    workdir = OUT / "fleet-run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if (why := redis_missing()):
        raise SystemExit(why)
    version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", version)
    meta: dict[str, Any] = {"envoy": m.group(1) if m else "?", "cpu": cpu or "any", "wrk_cpu": wrk_cpu or "any",
                            "lease_units": LEASE_UNITS, "lease_ms": LEASE_MS, "module": str(module())}
    results: dict[str, dict[str, list[dict[str, float]]]] = {"envoy": {c: [] for c in envoy_cfgs},
                                                               "kong": {c: [] for c in kong_cfgs}}
    life: dict[str, dict[str, list[dict[str, float]]]] = {"envoy": {c: [] for c in envoy_cfgs},
                                                            "kong": {c: [] for c in kong_cfgs}}
    kong: dict[str, bench_kong.Instance] = {}
    service_rules = [("envoy", c) for c in envoy_cfgs] + [("kong", c) for c in kong_cfgs]
    with RedisServer(workdir / "redis") as redis, \
            RateLimitService(workdir / "rls", policy(service_rules, "127.0.0.1:1"), redis.url,
                             redis_timeout_ms=500) as rls:
        up_port, up_admin = free_port(), free_port()
        upstream = start_envoy(workdir, "upstream", upstream_bootstrap(up_port, up_admin), up_admin, wrk_cpu,
                               os.getpid() % 100_000 + 310_000)
        bootstrap, ports = envoy_bootstrap(workdir, envoy_cfgs, rls, up_port)
        log = workdir / "envoy.log"
        proc = start_envoy(workdir, "envoy", bootstrap, ports["admin"], cpu, os.getpid() % 100_000 + 300_000)
        try:
            for c in envoy_cfgs:
                check(c, ports[c], log)
            for c in kong_cfgs:
                kong[c] = kong_start(c, workdir, f"127.0.0.1:{up_port}", cpu, rls)
                print(f"kong {c}: worker up in {kong[c].start_ms:.0f} ms", file=sys.stderr, flush=True)
            items = [("envoy", c, ports[c], proc.pid) for c in envoy_cfgs]
            items += [("kong", c, kong[c].port, kong[c].worker) for c in kong]
            svc_pid, redis_pid = rls.proc.pid, redis.proc.pid  # type: ignore[union-attr]

            def run(host: str, c: str, port: int, pid: int, seconds: int) -> dict[str, float]:
                load1 = float(loadavg().split()[0])
                def sample() -> tuple[float, float, float, int]:
                    return (bench.cpu_seconds(pid), bench.cpu_seconds(svc_pid), bench.cpu_seconds(redis_pid),
                            checks_total(rls))

                before = sample()
                # The wrk Lua script of the local-limit configuration with as many clients.
                like = "rl_open_1" if parts(c)[2] == 1 else "rl_open_10k"  # type: ignore[index]
                r = bench.run_wrk(port, seconds, wrk_cpu, like)
                after = sample()
                n = r["requests"] or 1
                r.update(load1=load1, cpu_us_per_req=(after[0] - before[0]) * 1e6 / n,
                         svc_us_per_req=(after[1] - before[1]) * 1e6 / n,
                         redis_us_per_req=(after[2] - before[2]) * 1e6 / n, calls_per_req=(after[3] - before[3]) / n)
                life[host][c].append(r)
                return r

            if WARMUP:
                for host, c, port, pid in items:
                    run(host, c, port, pid, WARMUP)
            for rnd in range(ROUNDS if items else 0):
                order = items[rnd % len(items):] + items[:rnd % len(items)]
                for host, c, port, pid in order:
                    r = run(host, c, port, pid, DURATION)
                    results[host][c].append(r)
                    print(f"round {rnd + 1}/{ROUNDS} {host:5s} {c:20s} {r['rps']:8.0f} rps  p99 {r['p99_ms']:7.2f} ms"
                          f"  gw {r['cpu_us_per_req']:6.1f} svc {r['svc_us_per_req']:6.1f}"
                          f" redis {r['redis_us_per_req']:5.1f} CPU-us/req  calls/req {r['calls_per_req']:.3f}"
                          f"  non-2xx {r['non_2xx']:.0f}  load {r['load1']:.2f}",
                          file=sys.stderr, flush=True)
            if items:  # our counter against the service's count (flushed once a second by the filter)
                time.sleep(2.5)
                meta["envoy_counters"] = envoy_counters(ports["admin"])
                ours = [c for c in envoy_cfgs if parts(c)[0] != "rls"]  # type: ignore[index]
                meta["service_checks_during_runs_of_ours_on_envoy"] = round(sum(
                    r["calls_per_req"] * r["requests"] for c in ours for r in life["envoy"][c]))
        finally:
            for i in kong.values():
                bench_kong.stop(i)
            for p in (proc, upstream):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        meta["service_metrics"] = rls.metrics()
    md = table(results, life, meta)
    if "envoy_counters" in meta:
        md += (f"\nEnvoy, our filter's `fleet_calls` over the whole run (every configuration of ours, warm-up and the "
               f"checks before it included): {meta['envoy_counters'].get('gatewarden_rate_limit_fleet_calls', '–')}; "
               f"the service's checks during the runs of those configurations: "
               f"{meta['service_checks_during_runs_of_ours_on_envoy']}.\n")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fleet.md").write_text(md)
    (OUT / "fleet.json").write_text(json.dumps({"meta": meta, "runs": results, "life": life}, indent=2))
    if os.environ.get("INSTRUCTIONS") == "1" and envoy_cfgs:
        md += "\n" + instructions(envoy_cfgs)
        (OUT / "fleet.md").write_text(md)
    print(md)
    print(f"written {OUT / 'fleet.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
