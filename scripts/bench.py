#!/usr/bin/env python3
"""Benchmark Gatewarden filters against Envoy without filters, the floor filter and native RBAC,
jwt_authn and local_ratelimit, on Envoy and on Kong's engine (nginx + ngx_wasm_module).

One Envoy (--concurrency 1, pinned to one core) with one listener per configuration; wrk (pinned to
the other core) loads one listener at a time, in interleaved rounds with the order rotated, so slow
drifts of the machine hit every configuration alike. Routes answer with direct_response (no
upstream), so the numbers are the cost of Envoy + the filter, not of an upstream server.

Kong (HOSTS has kong, the default; scripts/bench_kong.py): the Wasm configurations and `none` also
run on ../shared/wasmx/bin/nginx ($GATEWARDEN_WASMX), one nginx with one worker per configuration,
pinned to Envoy's core, proxying to this Envoy's `none` listener; they join the same interleaved
rounds with the same wrk settings and get their own table (ratios to that nginx with no filter and
to its floor) and the worker start time (module compile) and memory per configuration. Without an
engine the Kong half is skipped with a message. Not on Kong: rbac_10 and authn_* (Envoy's native
filters), ip_geo_100k (its policy cannot be written in nginx.conf).

Configurations:
  none         router only
  floor        the floor Wasm filter (does nothing): what any Rust Wasm filter costs
  ip_geo_10    ip-geo filter, a rule on "/" with 10 CIDRs in its deny list (the client is not in it)
  ip_geo_100k  same with 100,000 random non-overlapping /24s and /32s
  rbac_10      Envoy's native RBAC filter, DENY policy with the same 10 CIDRs as remote_ip principals
JWT (issue 4), ALG = es256 | rs256, TEMP = cold | warm:
  jwt_ALG_TEMP            our JWT filter (verified-token cache on, its default 1024 entries per worker)
  authn_ALG_TEMP          Envoy's native envoy.filters.http.jwt_authn, no jwt_cache_config
  authn_cache_ALG_TEMP    the same with jwt_cache_config (jwt_cache_size 1024, as ours)
  Both filters get the same provider (issuer, audience, inline JWKS holding a P-256 and an RSA-2048
  key) and require a valid token on every request. cold: every request carries a token not seen
  before (COLD_TOKENS distinct tokens, signed ahead with Python `cryptography`, cycled by a wrk
  Lua script; more than any run sends); warm: WARM_TOKENS tokens reused.
Rate limiting (issue 13; scripts/bench_ratelimit.py has the details):
  rl_LIMIT_CLIENTS        our rate-limit filter, one limit per client address (last XFF hop)
  lrl_LIMIT_CLIENTS       Envoy's native local_ratelimit, the same limit per address
                          (max_dynamic_descriptors 65,536 as our max_keys); lrl20_tight_10k: its
                          default 20
  LIMIT: open (1,000,000/s: nothing denied) | tight (5 per day: most denied);
  CLIENTS: 1 | 10k (x-forwarded-for rotated over 10,000 addresses by a wrk Lua script).
  Reported side by side with ratios ours ÷ native and accuracy (admitted / configured).
  Fleet mode (ours per call and in lease mode vs the native `ratelimit` filter, all on
  gatewarden-ratelimit + Redis) is scripts/bench_fleet.py, which bench.sh runs after this one
  (`fleet`, fleet_* and rls_* names in CONFIGS select it; this script skips them).
Request validation (issue 14; scripts/bench_validate.py has the details), SIZE = 200b | 10kb | 100kb:
  val_SIZE                our validate filter, POST /api/orders with a valid JSON order of SIZE bytes
                          against the example API's createOrder operation
  post_SIZE               no filter, the same POST: val_SIZE's baseline (ratios val ÷ post)
Native module (issue 15; scripts/bench_native.py has the details):
  nat_X                   the Wasm configuration X (ip_geo_*, jwt_*, rl_*, val_*) with Envoy's
                          dynamic-module filter serving the same policy from libgatewarden.so
                          (BENCH_NATIVE_DIR, default target/release); compared with Envoy's filter
                          on the same work and with X (the `native` group and native_ip_geo,
                          native_jwt, native_rl, native_val)
ip_geo_*, jwt_*, rl_*, val_* and nat_* are skipped when their module is not built.

Environment: ROUNDS (5), DURATION (10, seconds per run), WARMUP (2), CONNECTIONS (32),
CONFIGS or BENCH_CONFIGS (comma list, default: the non-JWT set and the rate-limit set; `all`;
`jwt`: none, floor and every JWT configuration; `ratelimit`: none, floor and every rate-limit one;
`validate`: the six validation ones; `native`: the native module's comparisons), HOSTS (envoy,kong), GATEWARDEN_WASMX (the Kong engine's nginx),
BENCH_MODULE_DIR (modules other than target/wasm32-wasip1/release), BENCH_OUT (target/bench),
COLD_TOKENS (20000), WARM_TOKENS (4).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "e2e"))
import bench_native as native  # noqa: E402
import bench_ratelimit as rl  # noqa: E402
import bench_validate as val  # noqa: E402
import ecds  # noqa: E402
from harness import ENVOY_BIN, free_port  # noqa: E402
from harness import module_path as release_module  # noqa: E402


def module_path(filter_name: str) -> Path:
    """A filter's module: $BENCH_MODULE_DIR/gatewarden_<filter>.wasm (a build kept aside, e.g. of one
    commit while the tree is being rebuilt), else the release build."""
    d = os.environ.get("BENCH_MODULE_DIR")
    return Path(d) / f"gatewarden_{filter_name}.wasm" if d else release_module(filter_name)


ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "10"))
WARMUP = int(os.environ.get("WARMUP", "2"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "target" / "bench"))
# ip_geo_10_quiet: the 10-CIDR policy with `decision_header: false`.
BASE_CONFIGS = ["none", "floor", "ip_geo_10", "ip_geo_10_quiet", "ip_geo_100k", "rbac_10"]
JWT_CONFIGS = [f"{flt}_{alg}_{temp}" for alg in ("es256", "rs256") for temp in ("cold", "warm")
               for flt in ("jwt", "authn", "authn_cache")]
ALL_CONFIGS = BASE_CONFIGS + JWT_CONFIGS + rl.CONFIGS + val.CONFIGS + native.CONFIGS
COLD_TOKENS = int(os.environ.get("COLD_TOKENS", "20000"))
WARM_TOKENS = int(os.environ.get("WARM_TOKENS", "4"))


def selected_configs(spec: str) -> list[str]:
    """`all`, `jwt` (none, floor + the JWT set), `ratelimit` (none, floor + the rate-limit set) or
    a comma list of names."""
    groups = {"all": ALL_CONFIGS, "jwt": ["none", "floor"] + JWT_CONFIGS, "ratelimit": ["none", "floor"] + rl.CONFIGS,
              "validate": val.CONFIGS, **native.groups()}
    out: list[str] = []
    for c in (x.strip() for x in spec.split(",")):
        if c == "fleet" or re.fullmatch(r"(fleet_call|fleet_lease|rls)_\w+", c):
            continue  # fleet rate limiting: scripts/bench_fleet.py (bench.sh runs it)
        add = groups.get(c) or ([c] if c else [])
        out += [a for a in add if a not in out]
    return out


CONFIGS = selected_configs(os.environ.get("BENCH_CONFIGS") or os.environ.get("CONFIGS")
                           or ",".join(BASE_CONFIGS + rl.CONFIGS))

WASM_TYPE = ecds.WASM_TYPE
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


# ---------------------------------------------------------------------------------------------
# CIDR sets and policies

def random_cidrs(n: int, seed: int) -> list[str]:
    """n random non-overlapping IPv4 CIDRs, half /24 and half /32, each in a distinct /24 outside
    127.0.0.0/8 (the benchmark client) and outside multicast/reserved space."""
    rng = random.Random(seed)
    chosen: set[int] = set()
    out: list[str] = []
    while len(out) < n:
        block = rng.randrange(1 << 8, 224 << 16)  # /24 index: 0.1.0.0 .. 223.255.255.0
        if block >> 16 == 127 or block in chosen:
            continue
        chosen.add(block)
        base = block << 8
        if len(out) % 2:
            out.append(f"{ipaddress.IPv4Address(base + rng.randrange(1, 255))}/32")
        else:
            out.append(f"{ipaddress.IPv4Address(base)}/24")
    return out


def ip_geo_policy(cidrs: list[str], version: str, decision_header: bool = True) -> dict[str, Any]:
    """A global deny list (the default rule, as RBAC's DENY policy applies to every request): each
    request does a CIDR lookup that finds nothing and is allowed. The ip-geo filter's schema."""
    return {
        "policy_version": version,
        "mode": "enforce",
        "failure_mode": "deny",
        "decision_header": decision_header,
        "default": {"deny": cidrs},
    }


def rbac_filter(cidrs: list[str]) -> dict[str, Any]:
    def principal(c: str) -> dict[str, Any]:
        ip, plen = c.split("/")
        return {"remote_ip": {"address_prefix": ip, "prefix_len": int(plen)}}

    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"bench-deny-list": {
                "permissions": [{"any": True}],
                "principals": [{"or_ids": {"ids": [principal(c) for c in cidrs]}}],
            }}},
        },
    }


# ---------------------------------------------------------------------------------------------
# JWT: keys, tokens and the two filters' configurations

JWT_ISSUER = "https://issuer.bench.gatewarden"
JWT_AUDIENCE = "bench-api"
JWT_DIR = OUT / "jwt"
JWT_LUA = """-- Cycles through the tokens of the file given after `--`, one per request.
local tokens, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
function request()
  i = i % #tokens + 1
  return wrk.format("GET", "/", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


def jwt_parts(cfg: str) -> tuple[str, str, str] | None:
    """("jwt" | "authn" | "authn_cache", "es256" | "rs256", "cold" | "warm") or None; the native
    module's nat_jwt_* as "jwt" (same tokens and checks; build() gives it the native filter)."""
    m = re.fullmatch(r"(?:nat_(?=jwt_))?(jwt|authn|authn_cache)_(es256|rs256)_(cold|warm)(?:_quiet)?(?:@\w+)?", cfg)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def jwt_material() -> dict[str, Any]:
    """Keys (a P-256 and an RSA-2048 key, as one public JWKS) and token files, made once and
    kept in target/bench/jwt (remade when the tokens expire within a day)."""
    meta_path = JWT_DIR / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["exp"] > time.time() + 86_400 and meta["cold"] >= COLD_TOKENS and meta["warm"] == WARM_TOKENS:
            return meta
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    JWT_DIR.mkdir(parents=True, exist_ok=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ecn, rn = ec_key.public_key().public_numbers(), rsa_key.public_key().public_numbers()
    jwks = {"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "bench-es256", "alg": "ES256", "use": "sig",
         "x": _b64url(ecn.x.to_bytes(32, "big")), "y": _b64url(ecn.y.to_bytes(32, "big"))},
        {"kty": "RSA", "kid": "bench-rs256", "alg": "RS256", "use": "sig", "n": _uint(rn.n), "e": _uint(rn.e)},
    ]}
    now = int(time.time())
    exp = now + 7 * 86_400

    def sign(alg: str, n: int) -> str:
        header = _b64url(json.dumps({"alg": alg.upper(), "typ": "JWT", "kid": f"bench-{alg}"},
                                    separators=(",", ":")).encode())
        claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": f"user-{n}", "iat": now, "exp": exp,
                  "scope": "read write", "jti": f"{alg}-{n}"}
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        if alg == "es256":
            r, s = decode_dss_signature(ec_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            sig = rsa_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{_b64url(sig)}"

    print(f"signing {COLD_TOKENS} ES256 and {COLD_TOKENS} RS256 tokens (once) ...", file=sys.stderr, flush=True)
    for alg in ("es256", "rs256"):
        tokens = [sign(alg, n) for n in range(COLD_TOKENS)]
        (JWT_DIR / f"{alg}-cold.txt").write_text("\n".join(tokens) + "\n")
        (JWT_DIR / f"{alg}-warm.txt").write_text("\n".join(tokens[:WARM_TOKENS]) + "\n")
    (JWT_DIR / "tokens.lua").write_text(JWT_LUA)
    (JWT_DIR / "jwks.json").write_text(json.dumps(jwks))
    meta = {"exp": exp, "cold": COLD_TOKENS, "warm": WARM_TOKENS, "jwks": jwks}
    meta_path.write_text(json.dumps(meta))
    return meta


def jwt_tokens(cfg: str) -> list[str]:
    """The tokens a JWT configuration's requests carry, in order (empty for other configurations)."""
    parts = jwt_parts(cfg)
    if not parts:
        return []
    jwt_material()
    return (JWT_DIR / f"{parts[1]}-{parts[2]}.txt").read_text().split()


def jwt_policy(version: str) -> dict[str, Any]:
    """Our JWT filter: one provider with the inline JWKS; every request needs its valid token."""
    return {
        "policy_version": version,
        "mode": "enforce",
        "failure_mode": "deny",
        "providers": {"bench": {"issuer": JWT_ISSUER, "audiences": [JWT_AUDIENCE],
                                "local_jwks": jwt_material()["jwks"]}},
        "default": {"requires": {"provider": "bench"}},
    }


def authn_filter(cache: bool) -> dict[str, Any]:
    """Envoy's native jwt_authn with the same provider; `cache`: jwt_cache_config as big as ours."""
    provider: dict[str, Any] = {
        "issuer": JWT_ISSUER,
        "audiences": [JWT_AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(jwt_material()["jwks"])},
        "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
        "forward": False,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def ecds_filter(name: str, ecds_dir: Path) -> dict[str, Any]:
    """Same ECDS wiring as deploy/envoy/envoy.yaml."""
    return {
        "name": ecds.resource_name(name),
        "config_discovery": {
            "config_source": {"path_config_source": {"path": str(ecds_dir / f"{name}.json"),
                                                     "watched_directory": {"path": str(ecds_dir)}}},
            "apply_default_config_without_warming": False,
            "type_urls": [WASM_TYPE],
        },
    }


def listener(name: str, port: int, http_filters: list[dict[str, Any]], xff_hops: int = 0) -> dict[str, Any]:
    """Same HCM settings as deploy/envoy/envoy.yaml, but a direct_response route (no upstream);
    `xff_hops`: the HCM's xff_num_trusted_hops (1 for the rate-limit listeners, ours and native)."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": name,
                "use_remote_address": True,
                "skip_xff_append": True,
                "xff_num_trusted_hops": xff_hops,
                "route_config": {"name": name, "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}],
                }]},
                "http_filters": http_filters + [ROUTER],
            },
        }]}],
    }


# ---------------------------------------------------------------------------------------------
# Envoy and wrk

@dataclass
class WasmFilter:
    """The Gatewarden filter a configuration runs, on either host."""
    kind: str          # floor | ip_geo | jwt | rate_limit (nginx module gatewarden_<kind>)
    name: str          # instance name: the configuration, "@" -> "_" (ECDS resource gatewarden.<name>)
    module: Path
    policy: dict[str, Any]
    vm_id: str         # Envoy: instances with one vm_id share a VM per worker


def variant_module(cfg: str, default: str) -> Path:
    """"ip_geo_10@oz": the module named by $BENCH_MODULE_oz (a variant build, e.g. another
    opt-level), compared side by side in one run; without "@", the release module `default`."""
    _, _, variant = cfg.partition("@")
    return Path(os.environ[f"BENCH_MODULE_{variant}"]) if variant else module_path(default)


def wasm_filter(cfg: str, cidrs10: list[str] | None = None) -> WasmFilter | None:
    """The Wasm filter of configuration `cfg`; None for none, rbac_10, Envoy's jwt_authn ones and the
    native module's (the policy of nat_X is the one of X's Wasm filter)."""
    if native.parts(cfg):
        return None
    base, _, variant = cfg.partition("@")
    name = cfg.replace("@", "_")
    if base == "floor":
        return WasmFilter("floor", name, module_path("floor"), {"policy_version": "bench"}, "gatewarden_floor")
    if base.startswith("ip_geo_"):
        size = base.removesuffix("_quiet")
        cidrs = (cidrs10 or random_cidrs(10, seed=10)) if size == "ip_geo_10" else random_cidrs(100_000, seed=100_000)
        policy = ip_geo_policy(cidrs, f"bench-{base}", decision_header=not base.endswith("_quiet"))
        return WasmFilter("ip_geo", name, variant_module(cfg, "ip_geo"), policy,
                          f"gatewarden_ip_geo{'_' + variant if variant else ''}")
    rlp = rl.parts(cfg)
    if rlp and rlp[0] == rl.OURS:
        # Own VM (and so own shared data on Envoy) per configuration: no bucket shared between them.
        return WasmFilter("rate_limit", name, variant_module(cfg, "rate_limit"), rl.policy(cfg), f"gatewarden_{name}")
    vp = val.parts(cfg)
    if vp and vp[0] == val.OURS:
        return WasmFilter("validate", name, variant_module(cfg, "validate"), val.policy(cfg), f"gatewarden_{name}")
    parts = jwt_parts(cfg)
    if parts and parts[0] == "jwt":
        # Own VM per configuration.
        return WasmFilter("jwt", name, variant_module(cfg, "jwt"), jwt_policy(f"bench-{name}"), f"gatewarden_{name}")
    return None


def build(workdir: Path, configs: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
    ecds_dir = workdir / "ecds"
    ecds_dir.mkdir(parents=True, exist_ok=True)
    cidrs10 = random_cidrs(10, seed=10)
    ports: dict[str, int] = {}
    listeners = []
    for cfg in configs:
        ports[cfg] = free_port()
        wasm = wasm_filter(cfg, cidrs10)
        if (twin := native.parts(cfg)):  # the native module with the policy of the Wasm twin
            twin_filter = wasm_filter(twin, cidrs10)
            assert twin_filter is not None
            policy = {**twin_filter.policy, "decision_header": False} if native.quiet(cfg) else twin_filter.policy
            filters: list[dict[str, Any]] = [native.http_filter(twin_filter.kind, policy)]
        elif wasm is not None:
            ecds.push(ecds_dir, wasm.name, wasm.policy, wasm.module, vm_id=wasm.vm_id)
            filters = [ecds_filter(wasm.name, ecds_dir)]
        elif cfg == "none":
            filters = []
        elif cfg == "rbac_10":
            filters = [rbac_filter(cidrs10)]
        elif jwt_parts(cfg):
            filters = [authn_filter(cache=jwt_parts(cfg)[0] == "authn_cache")]  # type: ignore[index]
        elif rl.parts(cfg):
            filters = [rl.native_filter(cfg)]
        elif val.parts(cfg):  # post_*: the validation configurations' baseline, no filter
            filters = []
        else:
            raise SystemExit(f"unknown configuration {cfg!r}; known: {', '.join(ALL_CONFIGS)}")
        if val.parts(cfg):  # the body in before the direct_response (bench_validate.BUFFER_FILTER)
            filters = filters + [val.BUFFER_FILTER]
        listeners.append(listener(cfg, ports[cfg], filters, xff_hops=1 if rl.parts(cfg) else 0))
    admin_port = free_port()
    ports["admin"] = admin_port
    bootstrap = {
        "node": {"id": "gatewarden-bench", "cluster": "gatewarden"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners},
    }
    return bootstrap, ports


def http_status(port: int, path: str = "/", token: str | None = None, headers: dict[str, str] | None = None) -> int:
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_ready(proc: subprocess.Popen[bytes], admin_port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"envoy exited ({proc.returncode}); see {log}")
        try:
            if http_status(admin_port, "/ready") == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"envoy not ready in {timeout}s; see {log}")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc; clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, seconds: int, cpu: str | None, cfg: str = "", connections: int = CONNECTIONS) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"]
    parts = jwt_parts(cfg)
    if parts:  # JWT configurations: every request carries the next token of the configuration's file
        jwt_material()
        cmd[-1:-1] = ["-s", str(JWT_DIR / "tokens.lua")]
        cmd += ["--", str(JWT_DIR / f"{parts[1]}-{parts[2]}.txt")]
    # Rate limiting: x-forwarded-for rotated over the clients; validation: POST a body.
    if (script := rl.wrk_args(cfg, OUT) or val.wrk_args(cfg, OUT)):
        cmd[-1:-1] = script[0]
        cmd += script[1]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rps or not p99:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    return {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)],
            "requests": int(total.group(1)) if total else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}


def ratio_table(results: dict[str, list[dict[str, float]]], skipped: dict[str, str], cpu_label: str) -> list[str]:
    """Medians of each configuration's runs and their ratios to `none` and `floor` (Markdown rows)."""
    med = {c: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p99_ms", "cpu_us_per_req")}
           for c, runs in results.items() if runs}

    def ratio(c: str, base: str, key: str) -> str:
        return f"{med[c][key] / med[base][key]:.2f}" if base in med and med[base][key] else "–"

    lines = [
        f"| configuration | requests/s | p99 ms | {cpu_label} CPU µs/req | rps vs none | rps vs floor "
        "| p99 vs none | p99 vs floor | CPU/req vs none | CPU/req vs floor | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in med:
        bad = int(sum(r["non_2xx"] + r["socket_errors"] for r in results[c]))
        lines.append(f"| {c} | {med[c]['rps']:.0f} | {med[c]['p99_ms']:.2f} | {med[c]['cpu_us_per_req']:.1f} | "
                     f"{ratio(c, 'none', 'rps')} | {ratio(c, 'floor', 'rps')} | {ratio(c, 'none', 'p99_ms')} | "
                     f"{ratio(c, 'floor', 'p99_ms')} | {ratio(c, 'none', 'cpu_us_per_req')} | "
                     f"{ratio(c, 'floor', 'cpu_us_per_req')} | {bad} |")
    for c, why in skipped.items():
        lines.append(f"| {c} | skipped: {why} |" + " |" * 10)
    return lines


def table(results: dict[str, list[dict[str, float]]], meta: dict[str, Any]) -> str:
    lines = [
        f"Envoy {meta['envoy']}, --concurrency 1 on CPU {meta['envoy_cpu']}; "
        f"wrk -t1 -c{CONNECTIONS} -d{DURATION}s on CPU {meta['wrk_cpu']}; "
        f"{ROUNDS} interleaved rounds, medians; direct_response route (no upstream).",
        "Envoy CPU µs/request (CPU time of the Envoy process over requests served) is the steadiest",
        "column when other work shares the machine; requests/s and p99 move with any load on it.",
        "",
    ] + ratio_table(results, meta["skipped"], "Envoy")
    return "\n".join(lines) + "\n"


def check_config(cfg: str, port: int, log: Path) -> None:
    """GET / must answer 200 (with the configuration's first token); a JWT configuration must also
    refuse a request without a token (401), so the benchmark measures an enforcing filter."""
    if rl.parts(cfg):
        rl.check(cfg, port, log, lambda p, h: http_status(p, headers=h))
        return
    if val.parts(cfg):
        val.check(cfg, port, log)
        return
    tokens = jwt_tokens(cfg)
    status = http_status(port, token=tokens[0] if tokens else None)
    if status != 200:
        raise SystemExit(f"{cfg}: GET / answered {status}, not 200: the benchmark would measure "
                         f"denials (policy or config wrong?); see {log}")
    if tokens and (status := http_status(port)) != 401:
        raise SystemExit(f"{cfg}: GET / without a token answered {status}, not 401; see {log}")


def selected_hosts(spec: str) -> list[str]:
    hosts = [h.strip() for h in spec.split(",") if h.strip()]
    bad = [h for h in hosts if h not in ("envoy", "kong")]
    if bad or not hosts:
        raise SystemExit(f"HOSTS={spec!r}: expected a comma list of envoy, kong")
    return hosts


def main() -> int:
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (scripts/setup.sh)")
    if not ENVOY_BIN.exists():
        raise SystemExit(f"{ENVOY_BIN} missing (scripts/setup.sh)")
    hosts = selected_hosts(os.environ.get("HOSTS", "envoy,kong"))
    if not CONFIGS:
        print("bench.py: no configuration of its own selected (fleet ones: scripts/bench_fleet.py)", file=sys.stderr)
        return 0
    skipped: dict[str, str] = {}
    configs = []
    for c in CONFIGS:
        need = ("ip_geo" if c.startswith("ip_geo_") else "floor" if c == "floor"
                else "jwt" if c.startswith("jwt_") and "@" not in c
                else "rate_limit" if c.startswith("rl_") and "@" not in c
                else "validate" if c.startswith("val_") and "@" not in c
                else "native" if native.parts(c) else None)
        if c not in ALL_CONFIGS and "@" not in c:
            raise SystemExit(f"unknown configuration {c!r}; known: {', '.join(ALL_CONFIGS)}")
        if need == "native" and not native.module().exists():
            skipped[c] = f"{native.module().name} not built"
        elif need and need != "native" and not module_path(need).exists():
            skipped[c] = f"{module_path(need).name} not built"
        else:
            configs.append(c)
    kong_configs: list[str] = []
    kong_skipped: dict[str, str] = {}
    kong_missing = None
    if "kong" in hosts:
        import bench_kong
        kong_missing = bench_kong.missing()
        if kong_missing:
            print(f"Kong half skipped: {kong_missing}", file=sys.stderr, flush=True)
        else:
            for c in CONFIGS:
                why = skipped.get(c) or bench_kong.unsupported(c)
                if why:
                    kong_skipped[c] = why
                else:
                    kong_configs.append(c)
    envoy_configs = configs if "envoy" in hosts else []
    # Kong's upstream is this Envoy's `none` listener (direct_response): with HOSTS=kong, Envoy runs
    # only for that.
    upstream_configs = envoy_configs if not kong_configs or "none" in envoy_configs else ["none"] + envoy_configs
    ncpu = os.cpu_count() or 1
    envoy_cpu, wrk_cpu = ("0", "1") if ncpu >= 2 and shutil.which("taskset") else (None, None)

    workdir = OUT / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    bootstrap, ports = build(workdir, upstream_configs)
    cfg_path = workdir / "envoy-bench.json"
    cfg_path.write_text(json.dumps(bootstrap))
    log = workdir / "envoy.log"
    cmd = [str(ENVOY_BIN), "-c", str(cfg_path), "--concurrency", "1", "--disable-hot-restart",
           "--base-id", str(os.getpid() % 100_000 + 200_000), "-l", "warning"]
    if envoy_cpu is not None:
        cmd = ["taskset", "-c", envoy_cpu] + cmd
    version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", version)
    meta: dict[str, Any] = {"envoy": m.group(1) if m else "?", "hosts": hosts,
                            "envoy_cpu": envoy_cpu or "any", "wrk_cpu": wrk_cpu or "any", "skipped": skipped}
    results: dict[str, list[dict[str, float]]] = {c: [] for c in envoy_configs}
    kong_results: dict[str, list[dict[str, float]]] = {}
    kong: dict[str, Any] = {}  # configuration -> bench_kong.Instance
    tally = rl.Tally()  # rate limiting: requests sent and admitted over every run
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=native.env())
    try:
        wait_ready(proc, ports["admin"], log)
        for c in envoy_configs:
            check_config(c, ports[c], log)
        # Kong: one nginx per configuration, started one after the other (each start timed alone).
        for c in kong_configs:
            try:
                kong[c] = bench_kong.start(c, workdir, f"127.0.0.1:{ports['none']}", envoy_cpu)
            except ValueError as e:  # not expressible in nginx.conf (ip_geo_100k: too long)
                kong_skipped[c] = str(e).replace("|", "/")
                continue
            kong_results[c] = []
            i = kong[c]
            print(f"kong {c:12s} worker started in {i.start_ms:7.0f} ms (spawn -> first 200); compile "
                  + (", ".join(f"{mod} {ms} ms" for mod, ms in i.module_ms.items()) or "none")
                  + f"; RSS {i.rss_kb_start / 1024:.1f} MB", file=sys.stderr, flush=True)
        # (host, configuration, port, pid whose CPU time is charged)
        items = [("envoy", c, ports[c], proc.pid) for c in envoy_configs]
        items += [("kong", c, kong[c].port, kong[c].worker) for c in kong]
        if WARMUP:
            for host, c, port, _ in items:
                tally.add(host, c, run_wrk(port, WARMUP, wrk_cpu, c))
        for rnd in range(ROUNDS if items else 0):
            order = items[rnd % len(items):] + items[:rnd % len(items)]
            for host, c, port, pid in order:
                cpu_before = cpu_seconds(pid)
                r = run_wrk(port, DURATION, wrk_cpu, c)
                used = cpu_seconds(pid) - cpu_before
                r["cpu_us_per_req"] = used * 1e6 / r["requests"] if r["requests"] else 0.0
                (results if host == "envoy" else kong_results)[c].append(r)
                tally.add(host, c, r)
                print(f"round {rnd + 1}/{ROUNDS} {host:5s} {c:16s} {r['rps']:9.0f} rps  p99 {r['p99_ms']:7.2f} ms  "
                      f"{'envoy' if host == 'envoy' else 'nginx worker'} {r['cpu_us_per_req']:6.1f} CPU-us/req"
                      + (f"  non-2xx {r['non_2xx']:.0f}" if r["non_2xx"] else ""), file=sys.stderr, flush=True)
        for i in kong.values():
            i.rss_kb_after = bench_kong.rss_kb(i.worker)
    finally:
        for i in kong.values():
            bench_kong.stop(i)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    md = table(results, meta) if envoy_configs else ""
    out: dict[str, Any] = {"meta": meta, "runs": results}
    if "kong" in hosts:
        kong_meta = {"nginx": bench_kong.version() if not kong_missing else None, "missing": kong_missing,
                     "cpu": envoy_cpu or "any", "wrk_cpu": wrk_cpu or "any", "skipped": kong_skipped,
                     "upstream": f"Envoy {meta['envoy']} `none` listener (direct_response), same process"}
        out["kong"] = {"meta": kong_meta, "runs": kong_results, "workers": bench_kong.worker_json(kong)}
        md += ("\n" if md else "") + (bench_kong.table(kong_results, kong, kong_meta) if not kong_missing
                                       else f"Kong engine: skipped: {kong_missing}\n")
    if any(rl.parts(c) for c in CONFIGS):
        md += "\n" + rl.table({"envoy": results, "kong": kong_results}, tally)
        out["rate_limit_accuracy"] = tally.json()
    if any(val.parts(c) for c in CONFIGS):
        md += "\n" + val.table({"envoy": results, "kong": kong_results})
    if any(native.parts(c) for c in envoy_configs):
        md += "\n" + native.table(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(md)
    (OUT / "results.json").write_text(json.dumps(out, indent=2))
    print(md)
    print(f"written {OUT / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
