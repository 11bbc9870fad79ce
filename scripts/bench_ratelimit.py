"""Rate-limit configurations of scripts/bench.py (issue 13): our module against Envoy's native
`envoy.filters.http.local_ratelimit`, the same per-client-address limit, 1 and 10,000 clients.

Configurations, NAME_LIMIT_CLIENTS:
  rl_*          our gatewarden_rate_limit.wasm: key `client_address`, the client being the last
                `x-forwarded-for` hop (`client_address.xff_num_trusted_hops: 1`), max_keys 65,536
                (its default); own vm_id per configuration (Envoy keeps shared data per vm_id)
  lrl_*         native local_ratelimit: a wildcard `remote_address` descriptor (one token bucket
                per address), the filter's embedded `rate_limits` with a `remote_address` action
                (Envoy 1.40 warns that route-level rate_limits for this filter are going away),
                the HCM's `xff_num_trusted_hops: 1` (with use_remote_address: the last XFF hop),
                `max_dynamic_descriptors: 65536` (as our max_keys; Envoy's default is 20),
                always_consume_default_token_bucket false, enabled and enforced for 100 %
  lrl20_*       the same with Envoy's default max_dynamic_descriptors (20 buckets, LRU)
  LIMIT open    1,000,000 per second (burst 1,000,000): nothing is denied
        tight   5 per day (burst 5): every address gets its 5, then 429s (GCRA and Envoy's token
                bucket agree: no refill within a run of less than 4.8 hours)
  CLIENTS 1     every request from 10.100.0.0 (x-forwarded-for)
          10k   10,000 addresses 10.100.0.0 .. 10.100.39.15, one after the other (a wrk Lua
                script with the requests formatted once)
All rate-limit listeners (ours and native) use the HCM's xff_num_trusted_hops 1.

Accuracy (admitted / configured): over the configuration's whole lifetime in the run (warm-up and
every round; the check before uses another address): admitted = 2xx answers; configured =
addresses × 5 for `tight`, every request for `open`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

OURS, NATIVE = "rl", "lrl"
IMPLS = (OURS, NATIVE, "lrl20")
LIMITS = ("open", "tight")
CLIENTS = {"1": 1, "10k": 10_000}
CONFIGS = [f"{i}_{lim}_{c}" for lim in LIMITS for c in CLIENTS for i in (OURS, NATIVE)] + ["lrl20_tight_10k"]
MAX_KEYS = 65_536
TIGHT = (5, 86_400)          # units, per seconds (burst = units)
OPEN = (1_000_000, 1)
CHECK_ADDRESS = "192.0.2.200"  # the configuration check's client: never one of the benchmark's
PROBE_ADDRESS = "192.0.2.201"  # Kong: the start-up probe's client

LUA = """-- Rotates x-forwarded-for over N addresses 10.100.0.0, 10.100.0.1, ... (argument: N);
-- the requests are formatted once, in init.
local reqs, n, i = {}, 1, 0
function init(args)
  n = tonumber(args[1]) or 1
  for k = 0, n - 1 do
    local ip = string.format("10.%d.%d.%d", 100 + math.floor(k / 65536), math.floor(k / 256) % 256, k % 256)
    reqs[k + 1] = wrk.format("GET", "/", {["X-Forwarded-For"] = ip})
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
"""


def parts(cfg: str) -> tuple[str, str, int] | None:
    """(impl, limit, clients) of a rate-limit configuration, else None; the native module's
    nat_rl_* as "rl" (the same limit, load, checks and native counterpart as rl_*)."""
    m = re.fullmatch(r"(?:nat_(?=rl_))?(rl|lrl|lrl20)_(open|tight)_(1|10k)(?:_quiet)?(?:@\w+)?", cfg)
    return (m.group(1), m.group(2), CLIENTS[m.group(3)]) if m else None


def address(k: int) -> str:
    """The k-th benchmark client address (as the Lua script makes them)."""
    return f"10.{100 + k // 65536}.{k // 256 % 256}.{k % 256}"


def lua_script(out: Path) -> Path:
    path = out / "rotate_xff.lua"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != LUA:
        path.write_text(LUA)
    return path


def wrk_args(cfg: str, out: Path) -> tuple[list[str], list[str]] | None:
    """(options before the URL, arguments after it) for wrk, or None."""
    p = parts(cfg)
    if not p:
        return None
    return ["-s", str(lua_script(out))], ["--", str(p[2])]


def limit(cfg: str) -> tuple[int, int]:
    p = parts(cfg)
    assert p is not None
    return TIGHT if p[1] == "tight" else OPEN


def policy(cfg: str) -> dict[str, Any]:
    """Our policy: one limit per client address (the last XFF hop)."""
    units, per = limit(cfg)
    return {
        "policy_version": f"bench-{cfg.replace('@', '_')}",
        "mode": "enforce",
        "failure_mode": "deny",
        "client_address": {"xff_num_trusted_hops": 1},
        "max_keys": MAX_KEYS,
        # One rule on "/" named after the configuration: the native module keeps one key table
        # per process for every configuration with the same max_keys (the rule's name is part of
        # each key; the default's is fixed), so nat_rl_tight_1 and nat_rl_tight_10k would
        # otherwise share their clients' buckets.
        "rules": [{"name": f"per_ip_{cfg.replace('@', '_')}", "match": {"path_prefix": "/"},
                   "limits": [{"name": "per_ip", "rate": units, "per_seconds": per, "burst": units}],
                   "key": ["client_address"]}],
    }


def native_filter(cfg: str) -> dict[str, Any]:
    """Envoy's local_ratelimit with the same limit per address (see the module docs)."""
    p = parts(cfg)
    assert p is not None
    units, per = limit(cfg)
    full = {"numerator": 100, "denominator": "HUNDRED"}
    typed: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": cfg.replace("@", "_"),
        # The filter-wide bucket: never the limit (only consumed when no descriptor matches).
        "token_bucket": {"max_tokens": 4_000_000_000, "tokens_per_fill": 4_000_000_000, "fill_interval": "1s"},
        "filter_enabled": {"runtime_key": "bench_rl_enabled", "default_value": full},
        "filter_enforced": {"runtime_key": "bench_rl_enforced", "default_value": full},
        "descriptors": [{"entries": [{"key": "remote_address", "value": ""}],
                         "token_bucket": {"max_tokens": units, "tokens_per_fill": units, "fill_interval": f"{per}s"}}],
        "always_consume_default_token_bucket": False,
        "rate_limits": [{"actions": [{"remote_address": {}}]}],
    }
    if p[0] == NATIVE:
        typed["max_dynamic_descriptors"] = MAX_KEYS
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": typed}


def per_client(clients: int, runs: list[int]) -> list[int]:
    """Requests each client sent over `runs` (requests per wrk run): every run starts the
    rotation again at the first address."""
    counts = [0] * clients
    for sent in runs:
        q, r = divmod(sent, clients)
        for k in range(clients):
            counts[k] += q + (1 if k < r else 0)
    return counts


def configured(cfg: str, runs: list[int]) -> float:
    """What the limit lets through of the requests of `runs` over the configuration's
    lifetime: all for `open`; for `tight`, each client's first 5."""
    p = parts(cfg)
    assert p is not None
    if p[1] == "open":
        return float(sum(runs))
    return float(sum(min(n, TIGHT[0]) for n in per_client(p[2], runs)))


def counterpart(cfg: str) -> str | None:
    """The native configuration that ours compares with."""
    p = parts(cfg)
    if not p or p[0] != OURS:
        return None
    return f"{NATIVE}_{p[1]}_{'1' if p[2] == 1 else '10k'}"


class Tally:
    """Requests sent and admitted per (host, configuration), over every wrk run."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, str], int] = {}
        self.admitted: dict[tuple[str, str], int] = {}
        self.runs: dict[tuple[str, str], list[int]] = {}

    def add(self, host: str, cfg: str, run: dict[str, float]) -> None:
        if not parts(cfg):
            return
        k = (host, cfg)
        self.sent[k] = self.sent.get(k, 0) + int(run["requests"])
        self.runs.setdefault(k, []).append(int(run["requests"]))
        self.admitted[k] = self.admitted.get(k, 0) + int(run["requests"] - run["non_2xx"])

    def accuracy(self, host: str, cfg: str) -> float | None:
        k = (host, cfg)
        if k not in self.sent:
            return None
        conf = configured(cfg, self.runs[k])
        return self.admitted[k] / conf if conf else None

    def json(self) -> dict[str, Any]:
        return {f"{h}/{c}": {"sent": s, "admitted": self.admitted[(h, c)], "configured": configured(c, self.runs[(h, c)])}
                for (h, c), s in self.sent.items()}


def median_of(results: dict[str, dict[str, list[dict[str, float]]]], host: str, cfg: str, key: str) -> float | None:
    """The median of `key` over the runs of `cfg` on `host`, None without runs."""
    import statistics
    runs = results.get(host, {}).get(cfg) or []
    return statistics.median(r[key] for r in runs) if runs else None


def fmt(v: float | None, spec: str) -> str:
    """`v` formatted, or a dash when there is no figure."""
    return format(v, spec) if v is not None else "–"


def rat(a: float | None, b: float | None) -> str:
    """a ÷ b to two decimals, or a dash."""
    return f"{a / b:.2f}" if a is not None and b else "–"


def table(results: dict[str, dict[str, list[dict[str, float]]]], tally: Tally) -> str:
    """Ours against native, side by side (Markdown); `results`: host -> configuration -> runs.
    On Kong's engine, which has no native counterpart, the ratios are to that host's floor."""
    def med(host: str, cfg: str, key: str) -> float | None:
        return median_of(results, host, cfg, key)

    lines = [
        "Rate limiting: ours (`rl_*`) against Envoy's local_ratelimit (`lrl_*`, max_dynamic_descriptors 65,536;",
        "`lrl20_*`: its default 20), the same limit per client address (last x-forwarded-for hop). open: 1,000,000/s,",
        "nothing denied; tight: 5 per day, most denied. Accuracy = admitted / configured over the configuration's",
        "lifetime (warm-up and every round; configured: every request for open, each address's first 5 for tight).",
        "Ratios: ours ÷ the baseline (Envoy: the native filter on the same limit and clients; Kong's engine: its floor).",
        "",
        "| host | configuration | requests/s | p99 ms | CPU µs/req | accuracy | sent | admitted | baseline | rps ÷ base "
        "| p99 ÷ base | CPU/req ÷ base |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for host, per_cfg in results.items():
        for cfg in per_cfg:
            if not parts(cfg) or not per_cfg[cfg]:
                continue
            nat = counterpart(cfg) if host == "envoy" else "floor" if parts(cfg)[0] == OURS else None
            acc = tally.accuracy(host, cfg)
            k = (host, cfg)
            row = [host, cfg, fmt(med(host, cfg, "rps"), ".0f"), fmt(med(host, cfg, "p99_ms"), ".2f"),
                   fmt(med(host, cfg, "cpu_us_per_req"), ".1f"), fmt(acc, ".4f"),
                   str(tally.sent.get(k, "–")), str(tally.admitted.get(k, "–"))]
            if nat:
                row += [nat] + [rat(med(host, cfg, m), med(host, nat, m)) for m in ("rps", "p99_ms", "cpu_us_per_req")]
            else:
                row += ["", "", "", ""]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def check(cfg: str, port: int, log: Path, status: Any) -> None:
    """The configuration enforces: `open` answers 200; `tight` answers 200 five times, then
    429, to a client address the benchmark never uses. `status(port, headers)` -> HTTP status."""
    p = parts(cfg)
    assert p is not None
    hdr = {"X-Forwarded-For": CHECK_ADDRESS}
    want = [200] * (TIGHT[0] if p[1] == "tight" else 6) + ([429] if p[1] == "tight" else [])
    got = [status(port, hdr) for _ in want]
    if got != want:
        raise SystemExit(f"{cfg}: statuses {got}, expected {want}: the benchmark would not measure the "
                         f"configured limit; see {log}")
