"""Gatewarden demo: the IP/geo, JWT, rate-limit and validation filters with their example policies, first in Envoy
(the .wasm modules), then in Envoy with the native module (libgatewarden.so, the same policies), then in Kong's
engine (nginx + ngx_wasm_module), all on 127.0.0.1: allowed and denied requests, a JWT-protected route, a rate
limit, request validation (a JSON Schema body, an OpenAPI 3.1 document), a live policy update, a refused bad
update, then stop. Run via scripts/demo.sh (`scripts/demo.sh envoy`, `envoy-native` or `kong` runs one host
only)."""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
import harness  # noqa: E402
from harness import GEO_DB, ROOT, BaseGateway, Gateway, KongGateway  # noqa: E402
from jwtkit import demo_claims, demo_key  # noqa: E402

POLICY = json.loads((ROOT / "deploy/policies/ip_geo.json").read_text())
JWT_POLICY = json.loads((ROOT / "deploy/policies/jwt.json").read_text())
RATE_POLICY = json.loads((ROOT / "deploy/policies/rate_limit.json").read_text())
VALIDATE_POLICY = json.loads((ROOT / "deploy/policies/validate.json").read_text())
ORDERS_API = ROOT / "deploy/policies/openapi/orders-api.yaml"
JWKS = ROOT / "deploy/jwks/jwks.json"
LB = "127.0.0.2"  # plays the load balancer in front of the gateway (policy: xff_num_trusted_hops 1)
HOSTS = {"envoy": "Envoy", "envoy-native": "Envoy with the native module",
         "kong": "Kong's engine (nginx + ngx_wasm_module)"}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(gw: BaseGateway, path: str, client: str, note: str, headers: dict[str, str] | None = None) -> int:
    h = {"x-forwarded-for": client, **(headers or {})}
    r = gw.get(path, headers=h, source=LB)
    if r.status == 200:
        decision = r.upstream_headers.get("x-gatewarden-ip-geo", "") if r.upstream_headers else ""
        detail = f"upstream saw x-gatewarden-ip-geo: {decision}"
    else:
        detail = r.text.strip()
    print(f"  GET {path:<14} from {h['x-forwarded-for']:<22} -> {r.status}  ({note}) {detail}")
    return r.status


def show_jwt(gw: BaseGateway, method: str, path: str, token: str | None, note: str) -> int:
    h = {"x-forwarded-for": "8.8.8.8", **({"authorization": f"Bearer {token}"} if token else {})}
    r = gw.get(path, headers=h, source=LB, method=method)
    if r.status == 200 and r.upstream_headers:
        up = r.upstream_headers
        detail = (f"upstream saw x-user: {up.get('x-user')}, x-tenant: {up.get('x-tenant')}, "
                  f"token forwarded: {'yes' if up.get('authorization') else 'no'}")
    else:
        challenge = r.headers.get("www-authenticate")
        detail = r.text.strip() + (f"  www-authenticate: {challenge}" if challenge else "")
    print(f"  {method:<4} {path:<12} {'with token' if token else 'no token':<10} -> {r.status}  ({note}) {detail}")
    return r.status


def example_policies() -> dict[str, Any]:
    """The example policies with their fetch targets (Envoy cluster names in the shipped files) as
    placeholders the harness fills per host: a cluster on Envoy, `host:port` on Kong."""
    ip_geo, jwt = copy.deepcopy(POLICY), copy.deepcopy(JWT_POLICY)
    ip_geo["geo_database"]["cluster"] = harness.upstream("geo_db")
    for provider in jwt["providers"].values():
        if "remote_jwks" in provider:
            provider["remote_jwks"]["cluster"] = harness.upstream("jwks")
    # The orders API document is fetched (openapi.source) on both hosts: inline it is longer than
    # the 4 KB an nginx.conf argument may be.
    validate = copy.deepcopy(VALIDATE_POLICY)
    for rule in validate["rules"]:
        if "openapi" in rule:
            rule["openapi"].pop("document_file")
            rule["openapi"]["source"] = {"cluster": harness.upstream("jwks"), "path": "/orders-api.yaml", "authority": "docs"}
    return {"ip_geo": ip_geo, "jwt": jwt, "rate_limit": copy.deepcopy(RATE_POLICY), "validate": validate}


def start(host: str, workdir: str) -> BaseGateway:
    filters = example_policies()
    common = dict(geo_files={"country.mmdb": GEO_DB}, jwks_files={"jwks.json": JWKS, "orders-api.yaml": ORDERS_API},
                  ready_timeout=180.0)
    if host == "envoy":
        return Gateway(workdir, filters, **common)
    if host == "envoy-native":
        return harness.NativeGateway(workdir, filters, component_log_levels="dynamic_modules:info", **common)
    # /health has no filter: it shows that a refused policy takes no route down but the filter's own.
    return KongGateway(workdir, filters, routes={"/": ["ip_geo", "jwt", "rate_limit", "validate"], "/health": []},
                       request_headers_in_access=True, **common)


def run(gw: BaseGateway, host: str) -> list[bool]:
    name = HOSTS[host]
    native = host == "envoy-native"
    versions = {f: p["policy_version"] for f, p in
                (("ip_geo", POLICY), ("jwt", JWT_POLICY), ("rate_limit", RATE_POLICY), ("validate", VALIDATE_POLICY))}
    if native:
        say(f"{name} on port {gw.port}: libgatewarden.so, one shared object serving "
            + ", ".join(f"{f} (policy {v})" for f, v in versions.items())
            + " by filter_name; no Wasm VM, the same policy documents")
    else:
        say(f"{name} on port {gw.port} with "
            + ", ".join(f"gatewarden_{f}.wasm (policy {v})" for f, v in versions.items()))
    # Wasm: every VM (one per worker) loads the database and key set from shared data on its next
    # tick. Native: one copy per process, fetched on the main thread, read by every worker.
    gw.wait_for_counter("ip_geo", "geo_db_loaded", gw.vms, timeout=30)
    loaded = "one copy for every worker (no VM)" if native else f"loaded by all {gw.vms} VMs through shared data"
    print(f"  geo database fetched {gw.geo_db.fetches('/country.mmdb')} time(s) over HTTP from "
          f"{gw.upstream_ref('geo_db')}, {loaded}")
    gw.wait_for_counter("jwt", "jwks_loaded", gw.vms, timeout=30)
    loaded = "one copy for every worker" if native else f"loaded by all {gw.vms} VMs"
    print(f"  JWKS fetched {gw.jwks.fetches('/jwks.json')} time(s) from {gw.upstream_ref('jwks')}, {loaded}")

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

    say("rate limit: POST /login admits 5 per minute per client (login-minute), IETF RateLimit headers")
    statuses = []
    for i in range(6):
        r = gw.get("/login", headers={"x-forwarded-for": "8.8.4.4"}, source=LB, method="POST")
        statuses.append(r.status)
        if r.status == 429:
            print(f"  POST /login #{i + 1} from 8.8.4.4 -> 429  retry-after: {r.headers.get('retry-after')}  "
                  f"ratelimit: {r.headers.get('ratelimit')}\n    {r.headers.get('content-type')} {r.text.strip()}")
        else:
            print(f"  POST /login #{i + 1} from 8.8.4.4 -> {r.status}")
    expect.append(statuses == [200] * 5 + [429])
    r = gw.get("/login", headers={"x-forwarded-for": "9.9.9.9"}, source=LB, method="POST")
    print(f"  POST /login    from 9.9.9.9 -> {r.status}  (another client, its own bucket)")
    expect.append(r.status == 200)

    say("request validation: a JSON Schema webhook body, and the orders API's OpenAPI 3.1 document (fetched once, "
        f"{'one copy for every worker' if native else 'shared by all VMs'})")
    if native:  # one copy per process: loaded once
        gw.wait_for_counter("validate", "openapi_loaded", 1, timeout=60)
    else:
        gw.wait_for_log_in_every_vm(r"gatewarden validate: OpenAPI document generation 1 loaded for rule 1", timeout=60)
    hook = {"event": "payment.succeeded", "payment_id": "pay_8f3Kq2LmZ", "amount": 1999, "currency": "EUR"}
    signed = {"x-forwarded-for": "8.8.8.8", "x-signature": "sha256=" + "ab" * 32, "content-type": "application/json"}
    checks = [
        ("POST", "/hooks/payments", signed, json.dumps(hook), "a valid webhook", 200),
        ("POST", "/hooks/payments", signed, json.dumps({**hook, "amount": -5, "admin": True}), "mass assignment", 400),
        ("POST", "/hooks/payments", signed, "{not json", "not JSON", 400),
        ("POST", "/hooks/payments", {**signed, "content-type": "text/plain"}, json.dumps(hook), "wrong type", 415),
        ("GET", "/api/orders?limit=20", {"x-forwarded-for": "8.8.8.8", "authorization": f"Bearer {token}"}, None,
         "OpenAPI: valid query", 200),
        ("GET", "/api/orders?limit=5000", {"x-forwarded-for": "8.8.8.8", "authorization": f"Bearer {token}"}, None,
         "OpenAPI: limit over its maximum", 400),
        ("GET", "/api/invoices", {"x-forwarded-for": "8.8.8.8", "authorization": f"Bearer {token}"}, None,
         "OpenAPI: no such path", 404),
    ]
    for method, path, headers, body, note, want in checks:
        r = gw.get(path, headers=headers, source=LB, method=method, body=body.encode() if body else None)
        detail = "" if r.status == 200 else f"\n    {r.headers.get('content-type')} {r.text.strip()}"
        print(f"  {method:<4} {path:<22} -> {r.status}  ({note}){detail}")
        expect.append(r.status == want)

    envoy = host in ("envoy", "envoy-native")
    how = "ECDS file rewritten atomically" if envoy else "nginx -s reload: new workers, no restart"
    say(f"live update: add AU to the embargo ({how})")
    updated = copy.deepcopy(gw.filters["ip_geo"])
    updated["policy_version"] = "2026-11-23.2"
    updated["rules"][1]["deny_countries"].append("AU")
    loaded = gw.counter("ip_geo", "geo_db_loaded")
    t0 = time.monotonic()
    outcome = gw.push_policy("ip_geo", updated)
    print(f"  {name}: {outcome} in {1000 * (time.monotonic() - t0):.0f} ms")
    expect.append(outcome == "success")
    if not envoy:  # the new workers load the database again, from shared data
        gw.wait_for_counter("ip_geo", "geo_db_loaded", loaded + gw.vms, timeout=30)
    expect.append(show(gw, "/shop", "1.1.1.1", "AU: now denied") == 403)
    expect.append(show(gw, "/shop", "8.8.8.8", "US: still allowed") == 200)

    say("bad update: a typo in a CIDR is refused loudly")
    broken = copy.deepcopy(updated)
    broken["policy_version"] = "2026-11-23.3"
    broken["rules"][0]["allow"].append("10.0.0.0/33")
    mark = gw.log_mark()
    outcome = gw.push_policy("ip_geo", broken)
    m = gw.wait_for_log(r"policy refused: [^,\n]*", since=mark)
    print(f"  filter log: {m.group(0)}")
    if envoy:
        print(f"  Envoy: {outcome} (update_rejected={gw.ecds_counts('ip_geo')['update_rejected']}): "
              "the last good policy keeps serving")
        expect.append(outcome == "rejected")
        expect.append(show(gw, "/shop", "1.1.1.1", "policy .2 still enforced") == 403)
        expect.append(show(gw, "/admin/users", "10.1.2.3", "policy .2 still enforced") == 200)
    else:
        print(f"  {name}: {outcome}. A reload starts new workers with no last good policy, so the filter "
              "fails its own routes closed (503) and every other route keeps serving; "
              "`gatewarden render --target kong|nginx` refuses such a policy before it gets here")
        expect.append(outcome == "refused")
        expect.append(show(gw, "/shop", "8.8.8.8", "IP/geo route fails closed") == 503)
        r = gw.get("/health", source=LB)
        print(f"  GET /health (no filter)                         -> {r.status}  (still serving)")
        expect.append(r.status == 200)
        good = copy.deepcopy(updated)
        good["policy_version"] = "2026-11-23.4"
        loaded = gw.counter("ip_geo", "geo_db_loaded")
        outcome = gw.push_policy("ip_geo", good)
        print(f"  the fixed policy: {outcome}")
        expect.append(outcome == "success")
        gw.wait_for_counter("ip_geo", "geo_db_loaded", loaded + gw.vms, timeout=30)
        expect.append(show(gw, "/shop", "1.1.1.1", "policy .4 enforced") == 403)

    say("what operators see")
    for f in ("ip_geo", "jwt", "rate_limit", "validate"):
        record = [r for r in harness.json_records(gw.log()) if r.get("filter") == f][-1]
        print(f"  {f} decision log line:", json.dumps(record, separators=(",", ":")))
    for f in ("ip_geo", "jwt", "rate_limit", "validate"):
        for counter, value in sorted(harness.counter_snapshot(gw, f).items()):
            if value and counter not in ("upstream_requests",) and not counter.startswith("rq_"):
                print(f"  gatewarden_{f}_{counter} = {value}")
    if native:
        print("  (in Envoy's /stats as dynamicmodulescustom.gatewarden_<filter>_<outcome>; the Wasm build's are "
              "wasmcustom.gatewarden_<filter>_<outcome>)")
    if envoy and gw.proc is not None:
        status = Path(f"/proc/{gw.proc.pid}/status")
        rss = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmRSS:")), None)
        if rss is not None:
            what = "four filters, no VM" if native else f"four filters, {gw.vms} VMs each"
            print(f"  Envoy's resident memory: {int(rss) / 1024:.0f} MB ({what}, {gw.concurrency} workers)")
    say(f"stopping {name}")
    return expect


def main() -> int:
    hosts = sys.argv[1:] or list(HOSTS)
    unknown = [h for h in hosts if h not in HOSTS]
    if unknown:
        print(f"unknown host {unknown[0]!r}: one of {', '.join(HOSTS)}", file=sys.stderr)
        return 2
    expect: list[bool] = []
    for host in hosts:
        if host == "kong" and harness.engine_missing("kong"):
            print(f"\nskipping Kong: {harness.engine_missing('kong')}")
            continue
        with tempfile.TemporaryDirectory(prefix=f"gatewarden-demo-{host}-") as tmp, start(host, tmp) as gw:
            expect += run(gw, host)
    ok = bool(expect) and all(expect)
    print("\ndemo " + ("finished: every response was as expected" if ok else "FAILED: see the responses above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
