#!/usr/bin/env python3
"""Render a Gatewarden policy into the ECDS resource Envoy watches, and write it atomically. Stdlib only.

The ECDS file is a DiscoveryResponse in JSON holding one TypedExtensionConfig named
`gatewarden.<filter>` that wraps either
- (`--target wasm`, the default) an `envoy.extensions.filters.http.wasm.v3.Wasm` filter whose plugin
  `configuration` is the policy JSON (a google.protobuf.StringValue), or
- (`--target envoy-native`) an `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`
  of the native module `gatewarden` (libgatewarden.so, found through Envoy's environment variable
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH) with `filter_name` <filter> and the same policy JSON as its
  `filter_config` (a google.protobuf.StringValue). The bootstrap's config_discovery must list that
  type in its `type_urls`.
Envoy's watched_directory reloads the file when a file is moved into the directory, so writes go to
a temp file in the same directory, then rename(2) over the watched file: Envoy never sees a
half-written file, and each push is one reload.

    python3 scripts/ecds.py --filter ip_geo --policy deploy/policies/ip_geo.json \\
        --module target/wasm32-wasip1/release/gatewarden_ip_geo.wasm --ecds-dir /tmp/gw/ecds
    python3 scripts/ecds.py --target envoy-native --filter ip_geo --policy deploy/policies/ip_geo.json \\
        --ecds-dir /tmp/gw/ecds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
DYNAMIC_MODULE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"
# The native module's name: Envoy loads lib<name>.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
NATIVE_MODULE_NAME = "gatewarden"
TARGETS = ("wasm", "envoy-native")


def resource_name(filter_name: str) -> str:
    """ECDS resource name; the HTTP filter in the bootstrap has the same name."""
    return f"gatewarden.{filter_name}"


def policy_text(policy: Any) -> str:
    """The plugin configuration bytes: a str/bytes is used verbatim (to test invalid configs), else JSON."""
    if isinstance(policy, bytes):
        return policy.decode()
    if isinstance(policy, str):
        return policy
    return json.dumps(policy, separators=(",", ":"), ensure_ascii=False)


def resource(filter_name: str, policy: Any, module: str | os.PathLike[str], *,
             vm_id: str | None = None, vm_configuration: Any = None) -> dict[str, Any]:
    """The ECDS DiscoveryResponse (as a dict) configuring `filter_name` with `policy` from `module`.

    root_id and vm_id default to `gatewarden_<filter>`. Filters with the same vm_id (and module)
    share one VM per worker, each with its own root context; pass vm_id to run several instances
    of one module (e.g. the benchmark's ip_geo_10 and ip_geo_100k) in one VM.

    vm_configuration: the VM configuration (`vm_config.configuration`), e.g. the trust settings of
    approvals {"trusted_signers": [...], "required_signatures": N}; a dict is sent as JSON. It is
    the platform owner's, not the policy author's: pass the same value on every push of a filter
    (a different value starts a new VM).
    """
    text = policy_text(policy)
    version = policy.get("policy_version") if isinstance(policy, dict) else None
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    ident = vm_id or f"gatewarden_{filter_name}"
    vm_config: dict[str, Any] = {
        "vm_id": ident,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": os.fspath(module)}},
    }
    if vm_configuration is not None:
        vm_config["configuration"] = {"@type": STRING_VALUE_TYPE, "value": policy_text(vm_configuration)}
    return {
        "version_info": f"{version or 'raw'}-{digest}",
        "resources": [
            {
                "@type": EXTENSION_TYPE,
                "name": resource_name(filter_name),
                "typed_config": {
                    "@type": WASM_TYPE,
                    "config": {
                        "name": resource_name(filter_name),
                        "root_id": ident,
                        "vm_config": vm_config,
                        "configuration": {"@type": STRING_VALUE_TYPE, "value": text},
                        # A VM that fails (or panics) rejects requests rather than skipping the filter.
                        "failure_policy": "FAIL_CLOSED",
                    },
                },
            }
        ],
    }


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory + fsync + rename."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def native_resource(filter_name: str, policy: Any, *, module_name: str = NATIVE_MODULE_NAME) -> dict[str, Any]:
    """The ECDS DiscoveryResponse (as a dict) configuring `filter_name` with `policy` in the native
    module (`envoy-native`; Envoy loads lib<module_name>.so). The same policy JSON as the Wasm
    filter's plugin configuration, as the `filter_config` string. There is no VM configuration:
    the module reads the approvals' trust settings from the file named by GATEWARDEN_TRUST_FILE in
    Envoy's environment. `do_not_close`: Envoy never unloads the module, whose process-wide state
    (rate-limit buckets, trust settings) outlives any one configuration; what `gatewarden render
    --target envoy-native` writes (cli/src/hosts/envoy_native.rs)."""
    text = policy_text(policy)
    version = policy.get("policy_version") if isinstance(policy, dict) else None
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return {
        "version_info": f"{version or 'raw'}-{digest}",
        "resources": [
            {
                "@type": EXTENSION_TYPE,
                "name": resource_name(filter_name),
                "typed_config": {
                    "@type": DYNAMIC_MODULE_TYPE,
                    "dynamic_module_config": {"name": module_name, "do_not_close": True},
                    "filter_name": filter_name,
                    "filter_config": {"@type": STRING_VALUE_TYPE, "value": text},
                },
            }
        ],
    }


def push(ecds_dir: str | os.PathLike[str], filter_name: str, policy: Any,
         module: str | os.PathLike[str] | None, *, vm_id: str | None = None, vm_configuration: Any = None,
         target: str = "wasm") -> Path:
    """Render and atomically write `<ecds_dir>/<filter>.json`; returns its path. target "wasm"
    (`module`: the .wasm file) or "envoy-native" (module, vm_id and vm_configuration unused)."""
    path = Path(ecds_dir) / f"{filter_name}.json"
    if target == "envoy-native":
        res = native_resource(filter_name, policy)
    elif target == "wasm":
        if module is None:
            raise ValueError("a Wasm filter's ECDS resource needs the module's path")
        res = resource(filter_name, policy, module, vm_id=vm_id, vm_configuration=vm_configuration)
    else:
        raise ValueError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    write_atomic(path, json.dumps(res, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filter", required=True, help="filter name, e.g. ip_geo (resource gatewarden.<filter>)")
    p.add_argument("--policy", required=True, help="policy JSON file ('-' for stdin)")
    p.add_argument("--target", choices=TARGETS, default="wasm",
                   help="the Wasm filter (default) or the native Envoy module (libgatewarden.so)")
    p.add_argument("--module", help="path of the .wasm module as Envoy will see it (--target wasm)")
    p.add_argument("--raw", action="store_true", help="pass the policy bytes verbatim, unparsed")
    p.add_argument("--vm-config", help="file whose content becomes vm_config.configuration "
                   "(e.g. the trust settings of approvals)")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--ecds-dir", help="write <dir>/<filter>.json")
    dest.add_argument("--out", help="write this file ('-' for stdout)")
    args = p.parse_args(argv)

    text = sys.stdin.read() if args.policy == "-" else Path(args.policy).read_text()
    policy: Any = text
    if not args.raw:
        try:
            policy = json.loads(text)
        except json.JSONDecodeError as e:
            p.error(f"{args.policy}: not JSON ({e}); use --raw to push it anyway")
    if args.target == "wasm" and not args.module:
        p.error("--module is required with --target wasm")
    if args.target == "envoy-native" and (args.module or args.vm_config):
        p.error("--module and --vm-config are Wasm settings; the native module is found by "
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH and reads its trust settings from GATEWARDEN_TRUST_FILE")
    vm_configuration = Path(args.vm_config).read_text() if args.vm_config else None
    if args.ecds_dir:
        print(push(args.ecds_dir, args.filter, policy, args.module, vm_configuration=vm_configuration,
                   target=args.target))
    else:
        res = (native_resource(args.filter, policy) if args.target == "envoy-native"
               else resource(args.filter, policy, args.module, vm_configuration=vm_configuration))
        body = json.dumps(res, indent=2) + "\n"
        if args.out == "-":
            sys.stdout.write(body)
        else:
            write_atomic(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
