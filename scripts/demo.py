"""Gatewarden demo: Envoy on 127.0.0.1 with the IP/geo and JWT filters and their example policies:
allowed and denied requests, a JWT-protected route, a live policy update, a refused bad update, then
stop. Run via scripts/demo.sh."""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
import harness  # noqa: E402
from harness import GEO_DB, ROOT, Gateway  # noqa: E402
from jwtkit import demo_claims, demo_key  # noqa: E402

POLICY = json.loads((ROOT / "envoy-config/policies/ip_geo.json").read_text())
JWT_POLICY = json.loads((ROOT / "envoy-config/policies/jwt.json").read_text())
JWKS = ROOT / "envoy-config/jwks/jwks.json"
LB = "127.0.0.2"  # plays the load balancer in front of Envoy (policy: xff_num_trusted_hops 1)


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(gw: Gateway, path: str, client: str, note: str, headers: dict[str, str] | None = None) -> int:
    h = {"x-forwarded-for": client, **(headers or {})}
    r = gw.get(path, headers=h, source=LB)
    if r.status == 200:
        decision = r.upstream_headers.get("x-gatewarden-ip-geo", "") if r.upstream_headers else ""
        detail = f"upstream saw x-gatewarden-ip-geo: {decision}"
    else:
        detail = r.text.strip()
    print(f"  GET {path:<14} from {h['x-forwarded-for']:<22} -> {r.status}  ({note}) {detail}")
    return r.status


def show_jwt(gw: Gateway, method: str, path: str, token: str | None, note: str) -> int:
    h = {"x-forwarded-for": "8.8.8.8", **({"authorization": f"Bearer {token}"} if token else {})}
    r = gw.get(path, headers=h, source=LB, method=method)
    if r.status == 200 and r.upstream_headers:
        up = r.upstream_headers
        detail = (f"upstream saw x-user: {up.get('x-user')}, x-tenant: {up.get('x-tenant')}, "
                  f"no authorization header: {'authorization' not in up}")
    else:
        challenge = r.headers.get("www-authenticate")
        detail = r.text.strip() + (f"  www-authenticate: {challenge}" if challenge else "")
    print(f"  {method:<4} {path:<12} {'with token' if token else 'no token':<10} -> {r.status}  ({note}) {detail}")
    return r.status


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gatewarden-demo-") as tmp, \
            Gateway(tmp, {"ip_geo": POLICY, "jwt": JWT_POLICY}, geo_files={"country.mmdb": GEO_DB},
                    jwks_files={"jwks.json": JWKS}) as gw:
        say(f"Envoy {gw.port} up with gatewarden_ip_geo.wasm (policy {POLICY['policy_version']}) "
            f"and gatewarden_jwt.wasm (policy {JWT_POLICY['policy_version']})")
        # One VM per worker plus the main thread's: each loads the database on its next tick.
        vms = gw.concurrency + 1
        gw.wait_for_stat("wasmcustom.gatewarden_ip_geo_geo_db_loaded", vms, timeout=30)
        print(f"  geo database fetched {gw.geo_db.fetches('/country.mmdb')} time(s) over HTTP, "
              f"loaded by all {vms} VMs through shared data")
        gw.wait_for_stat("wasmcustom.gatewarden_jwt_jwks_loaded", vms, timeout=30)
        print(f"  JWKS fetched {gw.jwks.fetches('/jwks.json')} time(s) through cluster gatewarden_jwks, "
              f"loaded by all {vms} VMs")

        say("requests (the load balancer at 127.0.0.2 adds the client to x-forwarded-for)")
        expect = [
            show(gw, "/shop", "8.8.8.8", "US: allowed") == 200,
            show(gw, "/shop", "5.160.0.1", "IR: embargo") == 403,
            show(gw, "/shop", "175.45.176.1", "KP: embargo") == 403,
            show(gw, "/admin/users", "10.1.2.3", "office network") == 200,
            show(gw, "/admin/users", "8.8.8.8", "not the office") == 403,
            show(gw, "/admin/users", "10.1.2.3, 8.8.8.8", "spoofed left entry ignored") == 403,
            show(gw, "/shop", "1.1.1.1", "AU: allowed for now") == 200,
        ]

        say("JWT-protected route /api/orders (token signed with the demo key; needs scope orders:read, "
            "writes need orders:write)")
        token = demo_key().sign(demo_claims(sub="alice", tenant="acme", scope="orders:read"))
        expect += [
            show_jwt(gw, "GET", "/api/orders", None, "no token") == 401,
            show_jwt(gw, "GET", "/api/orders", token, "valid token") == 200,
            show_jwt(gw, "POST", "/api/orders", token, "lacks scope orders:write") == 403,
        ]

        say("live update: add AU to the embargo (ECDS file rewritten atomically)")
        updated = copy.deepcopy(POLICY)
        updated["policy_version"] = "2026-11-23.2"
        updated["rules"][1]["deny_countries"].append("AU")
        t0 = time.monotonic()
        outcome = gw.push_policy("ip_geo", updated)
        print(f"  Envoy: {outcome} in {1000 * (time.monotonic() - t0):.0f} ms (no restart)")
        expect.append(show(gw, "/shop", "1.1.1.1", "AU: now denied") == 403)
        expect.append(show(gw, "/shop", "8.8.8.8", "US: still allowed") == 200)

        say("bad update: a typo in a CIDR is refused, the last good policy keeps serving")
        broken = copy.deepcopy(updated)
        broken["policy_version"] = "2026-11-23.3"
        broken["rules"][0]["allow"].append("10.0.0.0/33")
        outcome = gw.push_policy("ip_geo", broken)
        m = gw.wait_for_log(r"policy refused: .*")
        print(f"  Envoy: {outcome} (update_rejected={gw.ecds_counts('ip_geo')['update_rejected']})")
        print(f"  filter log: {m.group(0)}")
        expect.append(show(gw, "/shop", "1.1.1.1", "policy .2 still enforced") == 403)
        expect.append(show(gw, "/admin/users", "10.1.2.3", "policy .2 still enforced") == 200)

        say("what operators see")
        for f in ("ip_geo", "jwt"):
            line = [ln for ln in gw.log().splitlines() if f'"gatewarden":"decision","filter":"{f}"' in ln][-1]
            print(f"  {f} decision log line:", line[line.index("{"):])
        harness.settle_counters()  # per-request counters reach Envoy on the filters' next tick
        for name, value in sorted(gw.stats(r"wasmcustom\.gatewarden_(ip_geo|jwt)_").items()):
            if value:
                print(f"  {name} = {value}")
        say("stopping Envoy")
    ok = all(expect)
    print("\ndemo " + ("finished: every response was as expected" if ok else "FAILED: see the responses above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
