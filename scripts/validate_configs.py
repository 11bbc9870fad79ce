#!/usr/bin/env python3
"""Check every Envoy config we ship with `envoy --mode validate` (pip Envoy, same version as the image).

- deploy/envoy/envoy.yaml rendered by scripts/envoyconf.py: default (ip_geo), ip_geo + jwt, and
  floor + ip_geo + jwt + rate_limit + validate + IPv6;
- the same template rendered by deploy/compose/docker/entrypoint.sh (awk + sed) with ip_geo + jwt +
  rate_limit + validate, as
  docker compose does;
- every ECDS resource in deploy/envoy/ecds/*.json, inlined as a static HTTP filter (validate mode does
  not read ECDS files, so this is how their Wasm config gets checked), and likewise the resources
  `gatewarden render --target envoy` writes for examples/policies/*.yaml;
- the benchmark's bootstrap (scripts/bench.py), with every configuration;
- the native module's (libgatewarden.so) bootstrap deploy/envoy-native/envoy.yaml, rendered both ways,
  and its ECDS resources (deploy/envoy-native/ecds/*.json and `gatewarden render --target envoy-native`
  of examples/policies/*.yaml) inlined: validate mode loads the module and runs its configure, so
  these also prove that the native module accepts each policy.
Exit status 1 if any fails. Stdlib only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "e2e"))
import envoyconf  # noqa: E402

ENVOY = ROOT / ".venv" / "bin" / "envoy"
NATIVE_TEMPLATE = ROOT / "deploy" / "envoy-native" / "envoy.yaml"
NATIVE_DIR = ROOT / "target" / "release"  # scripts/build.sh (lib.sh build_native)


def validate(label: str, config: Path, cmd: list[str] | None = None, env: dict[str, str] | None = None) -> bool:
    """Run from the repo root: shipped ECDS files name modules relative to it (target/...)."""
    cmd = cmd or [str(ENVOY), "--mode", "validate", "-c", str(config)]
    p = subprocess.run(cmd + ["--disable-hot-restart", "-l", "error"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=ROOT)
    ok = p.returncode == 0
    print(f"{'ok  ' if ok else 'FAIL'} {label}")
    if not ok:
        print((p.stdout + p.stderr)[-3000:])
    return ok


def main() -> int:
    if not ENVOY.exists():
        print(f"{ENVOY} missing: run scripts/setup.sh", file=sys.stderr)
        return 1
    ok = True
    with tempfile.TemporaryDirectory(prefix="gatewarden-validate-") as tmp:
        t = Path(tmp)
        cases = [("envoy.yaml (ip_geo)", ["ip_geo"], set()),
                 ("envoy.yaml (ip_geo + jwt)", ["ip_geo", "jwt"], set()),
                 ("envoy.yaml (floor + ip_geo + jwt + rate_limit + validate, IPv6)",
                  ["floor", "ip_geo", "jwt", "rate_limit", "validate"],
                  {"ipv6"}),
                 ("envoy.yaml (no filter)", [], set())]
        for i, (label, filters, optional) in enumerate(cases):
            path = t / f"envoy-{i}.yaml"
            path.write_text(envoyconf.render({}, filters, optional))
            ok &= validate(label, path)

        env = dict(os.environ, PATH=f"{ENVOY.parent}:{os.environ.get('PATH', '')}",
                   TEMPLATE=str(ROOT / "deploy" / "envoy" / "envoy.yaml"), OUT=str(t / "docker.yaml"),
                   ECDS_DIR=str(ROOT / "deploy" / "envoy" / "ecds"),  # the container's /gatewarden is the repo
                   FILTERS="ip_geo jwt rate_limit validate")  # as docker-compose.yaml sets it
        ok &= validate("envoy.yaml rendered by docker/entrypoint.sh (ip_geo + jwt + rate_limit + validate)",
                       t / "docker.yaml",
                       ["sh", str(ROOT / "deploy" / "compose" / "docker" / "entrypoint.sh"), "--mode", "validate"], env)

        resources = [(f"ecds/{p.name}", p.stem, json.loads(p.read_text()))
                     for p in sorted((ROOT / "deploy" / "envoy" / "ecds").glob("*.json"))]
        # What `gatewarden render --target envoy` (and `gatewarden apply`) writes for the example policies.
        for policy in sorted((ROOT / "examples" / "policies").glob("*.yaml")):
            out = subprocess.run(gatewarden_cli() + ["render", "--target", "envoy", str(policy)],
                                 cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"FAIL gatewarden render --target envoy {policy.name}: {out.stderr}", file=sys.stderr)
                ok = False
                continue
            resources.append((f"gatewarden render --target envoy examples/policies/{policy.name}",
                              f"render-{policy.stem}", json.loads(out.stdout)))
        for name, stem, doc in resources:
            resource = doc["resources"][0]
            label = f"{name} (inlined)"
            code = resource["typed_config"]["config"]["vm_config"]["code"]["local"]
            if not (ROOT / code["filename"]).exists():
                # Not built yet: still check the resource's structure, with the floor module.
                label += f" with floor module ({Path(code['filename']).name} not built)"
                code["filename"] = str(ROOT / "target/wasm32-wasip1/release/gatewarden_floor.wasm")
            boot = json.loads(json.dumps(STATIC_BOOTSTRAP))
            hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["http_filters"].insert(0, {"name": resource["name"], "typed_config": resource["typed_config"]})
            path = t / f"ecds-{stem}.json"
            path.write_text(json.dumps(boot))
            ok &= validate(label, path)

        ok &= validate_native(t)

        import bench

        bootstrap, _ = bench.build(t / "bench", bench.ALL_CONFIGS)
        path = t / "bench.json"
        path.write_text(json.dumps(bootstrap))
        # The search path too: the benchmark compares the native module as well.
        ok &= validate("bench bootstrap (all configurations)", path,
                       env=dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(NATIVE_DIR)))
    return 0 if ok else 1


def validate_native(t: Path) -> bool:
    """deploy/envoy-native: the bootstrap template (envoyconf.py and entrypoint.sh) and every
    resource for the native module, inlined with the built libgatewarden.so."""
    ok = True
    template = NATIVE_TEMPLATE.read_text()
    path = t / "native-envoy.yaml"
    path.write_text(envoyconf.render({"ECDS_DIR": ROOT / "deploy" / "envoy-native" / "ecds"},
                                     ["ip_geo", "jwt", "rate_limit", "validate"], {"ipv6"}, template=template))
    ok &= validate("envoy-native/envoy.yaml (ip_geo + jwt + rate_limit + validate, IPv6)", path)
    env = dict(os.environ, PATH=f"{ENVOY.parent}:{os.environ.get('PATH', '')}", TEMPLATE=str(NATIVE_TEMPLATE),
               OUT=str(t / "native-docker.yaml"), ECDS_DIR=str(ROOT / "deploy" / "envoy-native" / "ecds"),
               FILTERS="ip_geo jwt rate_limit validate")  # as docker-compose.yaml's envoy-native sets it
    ok &= validate("envoy-native/envoy.yaml rendered by docker/entrypoint.sh", t / "native-docker.yaml",
                   ["sh", str(ROOT / "deploy" / "compose" / "docker" / "entrypoint.sh"), "--mode", "validate"], env)
    if not (NATIVE_DIR / "libgatewarden.so").exists():
        print(f"FAIL {NATIVE_DIR}/libgatewarden.so not built (scripts/build.sh): the native resources are not checked")
        return False
    resources = [(f"envoy-native/ecds/{p.name}", p.stem, json.loads(p.read_text()))
                 for p in sorted((ROOT / "deploy" / "envoy-native" / "ecds").glob("*.json"))]
    for policy in sorted((ROOT / "examples" / "policies").glob("*.yaml")):
        out = subprocess.run(gatewarden_cli() + ["render", "--target", "envoy-native", str(policy)],
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL gatewarden render --target envoy-native {policy.name}: {out.stderr}", file=sys.stderr)
            ok = False
            continue
        resources.append((f"gatewarden render --target envoy-native examples/policies/{policy.name}",
                          f"render-native-{policy.stem}", json.loads(out.stdout)))
    native_env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(NATIVE_DIR))
    for name, stem, doc in resources:
        resource = doc["resources"][0]
        boot = json.loads(json.dumps(STATIC_BOOTSTRAP))
        hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(0, {"name": resource["name"], "typed_config": resource["typed_config"]})
        path = t / f"ecds-{stem}.json"
        path.write_text(json.dumps(boot))
        ok &= validate(f"{name} (inlined, native module)", path, env=native_env)
    return ok


def gatewarden_cli() -> list[str]:
    """The gatewarden command: $GATEWARDEN_CLI, else the debug build, else through cargo."""
    if os.environ.get("GATEWARDEN_CLI"):
        return [os.environ["GATEWARDEN_CLI"]]
    built = ROOT / "target" / "debug" / "gatewarden"
    if built.exists():
        return [str(built)]
    return ["cargo", "run", "--quiet", "-p", "gatewarden", "--"]


STATIC_BOOTSTRAP = {
    "static_resources": {
        "listeners": [{
            "name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                             ".HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }],
        "clusters": [{"name": "gatewarden_geo_db", "type": "STATIC", "load_assignment": {
            "cluster_name": "gatewarden_geo_db", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": 8081}}}}]}]}}],
    },
}


if __name__ == "__main__":
    sys.exit(main())
