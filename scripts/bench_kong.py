"""The Kong half of scripts/bench.py: the same configurations on Kong's Proxy-Wasm engine
(nginx + ngx_wasm_module on Wasmtime, ../shared/wasmx or $GATEWARDEN_WASMX).

One nginx per configuration, `worker_processes 1`, pinned to the same CPU as the bench Envoy
(wrk runs on the other one, with the same settings). Each has one location `/` with the
configuration's filter (`proxy_wasm gatewarden_<filter> '<policy>'`, the same policy as on Envoy,
`proxy_wasm_request_headers_in_access on` as Kong runs filters) that proxy_passes to the bench
Envoy's `none` listener: the Envoy process of the same run answers every Kong request with its
direct_response "ok\\n" (nginx's `return` is no substitute: it answers before a filter's denial
takes effect). `none` on Kong is that nginx with no filter (no wasm module loaded at all).

One nginx per configuration (not one with many servers) so that each worker's start time (it
compiles its module when it starts) and memory are that module's. They are started one after the
other, before any load, each timed from spawn to its first 200 answer; the worker's log lines
"successfully loaded "<module>" module in <N>ms" give the compile time alone.

Not on this host: Envoy's native filters (rbac_10, authn_*), and ip_geo_100k: nginx cannot parse
a configuration argument over 4 KB ("too long parameter"; nginxconf.MAX_ARGUMENT) and a
100,000-CIDR policy is ~2 MB (Kong itself hands filter configurations over through its Lua bridge,
not nginx.conf).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
import bench  # noqa: E402
import nginxconf  # noqa: E402
from harness import _die_with_parent, engine_missing, free_port, wasmx_bin  # noqa: E402

LOADED = re.compile(r'successfully loaded "([^"]+)" module in (\d+)ms')
START_TIMEOUT = float(os.environ.get("KONG_START_TIMEOUT", "180"))


def missing() -> str | None:
    """Why the Kong half cannot run here (None: it can)."""
    return engine_missing("kong")


def unsupported(cfg: str) -> str | None:
    """Why configuration `cfg` has no Kong counterpart (None: it has)."""
    base = cfg.partition("@")[0]
    if base.startswith("nat_"):
        return "Envoy's dynamic module"
    if base == "rbac_10" or (bench.jwt_parts(cfg) or ("",))[0] in ("authn", "authn_cache"):
        return "Envoy's native filter"
    if (bench.rl.parts(cfg) or ("",))[0] in ("lrl", "lrl20"):
        return "Envoy's native filter"
    return None


@dataclass
class Instance:
    """One nginx (master + one worker) serving one configuration."""
    cfg: str
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]
    worker: int = 0
    start_ms: float = 0.0                                      # spawn -> first 200 answer
    module_ms: dict[str, int] = field(default_factory=dict)    # module -> compile/load ms (log)
    rss_kb_start: int = 0                                      # worker RSS after its first request
    rss_kb_after: int = 0                                      # ... after the run

    @property
    def log(self) -> Path:
        return self.workdir / "error.log"


def render(cfg: str, workdir: Path, port: int, upstream: str, master: bool = True) -> str:
    """The nginx.conf of configuration `cfg` (ValueError: not expressible in nginx.conf); master=False:
    `master_process off`, one process serves (valgrind does not reach a forked worker)."""
    wasm = bench.wasm_filter(cfg)
    modules = {wasm.kind: wasm.module} if wasm else {}
    chain = [(wasm.kind, wasm.policy)] if wasm else []
    return nginxconf.render(nginxconf.Config(
        prefix=workdir, port=port, upstream=upstream, modules=modules, routes=[nginxconf.Route("/", chain)],
        workers=1, log_level="info", request_headers_in_access=True, access_log=False,
        run_as_root=os.geteuid() == 0, master_process=master,
        # Validation configurations (and their baselines): the body in memory, where the filter reads it.
        client_body_buffer_size=bench.val.BUFFER if bench.val.parts(cfg) else None))


def worker_of(master: int) -> int:
    """The worker process of an nginx master (0 while there is none)."""
    try:
        kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return 0
    return int(kids[0]) if kids else 0


def rss_kb(pid: int) -> int:
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def start(cfg: str, out: Path, upstream: str, cpu: str | None, wrapper: list[str] | None = None,
          timeout: float | None = None, master: bool = True) -> Instance:
    """Start the nginx of configuration `cfg` and wait for its first 200 answer (ValueError: the
    configuration cannot be expressed in nginx.conf). `wrapper`: a command nginx runs under
    (valgrind); `timeout`: for the first answer (default START_TIMEOUT); master=False: no master
    process (Instance.worker is then the one nginx process)."""
    nginx = wasmx_bin()
    assert nginx is not None
    workdir = out / f"kong-{cfg.replace('@', '_')}"
    port = free_port()
    text = render(cfg, workdir, port, upstream, master)
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    cmd = [str(nginx), "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    cmd = (wrapper or []) + cmd
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    tokens = bench.jwt_tokens(cfg)
    t0 = time.monotonic()
    with open(workdir / "nginx.out", "wb") as out_f:
        # daemon off + master_process on: the child is the master; SIGTERM if this process dies.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_f, stderr=subprocess.STDOUT,
                                cwd=workdir, preexec_fn=_die_with_parent)
    inst = Instance(cfg, workdir, port, proc)
    try:
        wait_first_answer(inst, tokens[0] if tokens else None, t0, timeout or START_TIMEOUT)
        inst.worker = worker_of(proc.pid) if master else proc.pid
        inst.rss_kb_start = rss_kb(inst.worker)
        inst.module_ms = {m: int(ms) for m, ms in LOADED.findall(inst.log.read_text(errors="replace"))}
        bench.check_config(cfg, port, inst.log)  # 200 with a token, 401 without (JWT)
    except BaseException:
        stop(inst)
        raise
    return inst


def wait_first_answer(inst: Instance, token: str | None, t0: float, timeout: float) -> None:
    """Poll until GET / answers 200 (the worker has compiled its module and configured the filter);
    inst.start_ms = spawn -> that answer."""
    deadline = t0 + timeout
    # Rate limiting: probe from an address of its own (a request that timed out client-side still
    # spends a token once the worker is up; a 429 is an answer too).
    probe = {"X-Forwarded-For": bench.rl.PROBE_ADDRESS} if bench.rl.parts(inst.cfg) else None
    while True:
        if inst.proc.poll() is not None:
            raise SystemExit(f"kong {inst.cfg}: nginx exited ({inst.proc.returncode}); see {inst.log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"kong {inst.cfg}: no answer within {timeout}s; see {inst.log}")
        try:
            status = bench.http_status(inst.port, token=token, headers=probe)
        except OSError:  # not listening yet, or the worker still compiling past urllib's timeout
            time.sleep(0.005)
            continue
        if status != 200 and not (probe and status == 429):
            raise SystemExit(f"kong {inst.cfg}: GET / answered {status}, not 200; see {inst.log}")
        inst.start_ms = (time.monotonic() - t0) * 1e3
        return


def stop(inst: Instance) -> None:
    """Stop an nginx and its worker (by pid)."""
    worker = inst.worker or worker_of(inst.proc.pid)
    if inst.proc.poll() is None:
        inst.proc.terminate()  # SIGTERM: fast shutdown, the master stops its worker
        try:
            inst.proc.wait(10)
        except subprocess.TimeoutExpired:
            inst.proc.kill()
            inst.proc.wait()
    if worker:
        try:
            if b"nginx" in Path(f"/proc/{worker}/cmdline").read_bytes():
                os.kill(worker, 9)
        except OSError:
            pass


def version() -> str:
    nginx = wasmx_bin()
    out = subprocess.run([str(nginx), "-V"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\S+)", out)
    return m.group(1) if m else "?"


def worker_table(instances: dict[str, Instance]) -> str:
    """Worker start and memory per configuration (Markdown)."""
    none = instances.get("none")
    lines = [
        "Worker start and memory (Kong engine, one worker each): compile = the worker's "
        "\"successfully loaded ... module in N ms\"; start = nginx spawned -> first 200 answer; "
        "RSS of the worker after its first request and after the run.",
        "",
        "| configuration | module | compile ms | start ms | RSS MB start | RSS MB after run | RSS over none MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c, i in instances.items():
        mods = ", ".join(i.module_ms) or "–"
        ms = ", ".join(str(v) for v in i.module_ms.values()) or "–"
        over = f"{(i.rss_kb_after - none.rss_kb_after) / 1024:.1f}" if none and c != "none" else "–"
        lines.append(f"| {c} | {mods} | {ms} | {i.start_ms:.0f} | {i.rss_kb_start / 1024:.1f} | "
                     f"{i.rss_kb_after / 1024:.1f} | {over} |")
    return "\n".join(lines) + "\n"


def worker_json(instances: dict[str, Instance]) -> dict[str, Any]:
    return {c: {"module_ms": i.module_ms, "start_ms": round(i.start_ms, 1), "rss_kb_start": i.rss_kb_start,
                "rss_kb_after": i.rss_kb_after} for c, i in instances.items()}



def table(results: dict[str, list[dict[str, float]]], instances: dict[str, Instance], meta: dict[str, Any]) -> str:
    """The Kong table (ratios to nginx with no filter and to the floor) and the worker table."""
    lines = [
        f"Kong engine: nginx {meta['nginx']} + ngx_wasm_module (Wasmtime), worker_processes 1 on CPU "
        f"{meta['cpu']}, one nginx per configuration; same wrk settings on CPU {meta['wrk_cpu']}, same "
        f"interleaved rounds as Envoy; proxy_pass (keepalive) to the upstream: {meta['upstream']}, "
        "which shares the gateway's CPU. `none` = that nginx, no filter.",
        "nginx worker CPU µs/request (CPU time of the one worker over requests served) excludes the upstream;",
        "requests/s and p99 include it and move with any load on the machine.",
        "",
    ] + bench.ratio_table(results, meta["skipped"], "nginx worker")
    return "\n".join(lines) + "\n\n" + worker_table(instances)
