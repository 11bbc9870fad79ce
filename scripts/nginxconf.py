#!/usr/bin/env python3
"""Render an nginx.conf for nginx + ngx_wasm_module (the Proxy-Wasm engine inside Kong). Stdlib only.

The e2e harness's Kong host (scripts/e2e/harness.py, KongGateway) renders one per test and
re-renders it for every policy push (`nginx -s reload`); the engine is ../shared/wasmx (see its
README). What it writes:

    daemon off; master_process on; worker_processes N;       # the harness runs nginx as a child
    error_log <prefix>/error.log info; pid <prefix>/nginx.pid;
    wasm {
        module gatewarden_ip_geo /path/gatewarden_ip_geo.wasm ['<VM configuration>'];
        shm_kv * 64m; shm_kv gatewarden 64m;                 # shared data (keys "gatewarden/...")
    }
    http {
        server {                                             # 127.0.0.1:<port> (and [::1]:<port6>)
            location / {                                     # one location per route
                proxy_wasm gatewarden_ip_geo '<policy JSON>';    # the chain, in Envoy's order
                proxy_pass http://gatewarden_upstream/;          # URI part: the location's path
            }
        }
        server { ... }                                       # optional loopback admin server
    }

`proxy_pass` carries a URI part, the location's own path (`location /api { ... proxy_pass
http://gatewarden_upstream/api; }`), so the upstream receives nginx's normalised URI, the one the
filter judged: nginx replaces the part of the normalised URI that matched the location with that
URI part (here the same text) and appends the query string as the client sent it. Without a URI
part nginx would forward the request URI as the client sent it (`/admin/../pub` is judged as /pub
and reaches the upstream as `/admin/../pub`). Seen on nginx 1.27.4: dot segments are resolved,
slashes merged, every percent-escape decoded (`%2F` too) and space, `#`, `%`, `?`, control and
non-ASCII bytes encoded again (scripts/e2e/test_claims.py pins it). A regex or named location
cannot take a URI part, so a route cannot be one.

The module directive's third argument reaches `proxy_on_vm_start` (Envoy's `vm_config.configuration`:
the trust settings of approvals); the `proxy_wasm` argument is the plugin configuration (the policy).
Both are single-quoted nginx strings: `\\` and `'` are escaped (nginx unescapes `\\\\`, `\\'`, `\\"`).
nginx reads a configuration in 4 KB buffers and refuses a longer single argument ("too long
parameter"), so such a policy raises ValueError here instead.

    python3 scripts/nginxconf.py --prefix /tmp/gw --port 8090 --upstream 127.0.0.1:8081 \\
        --filter ip_geo=deploy/policies/ip_geo.json > /tmp/gw/nginx.conf
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ecds import policy_text  # noqa: E402 - one text form for plugin and VM configurations

# nginx's NGX_CONF_BUFFER: an argument longer than this (with its quotes) cannot be parsed.
MAX_ARGUMENT = 4096 - 8


def module_name(filter_name: str) -> str:
    """The nginx module name of a Gatewarden filter (also ngx_wasm_module's metric prefix:
    counters are `pw:<module name>:<metric>`)."""
    return f"gatewarden_{filter_name}"


def quote(text: str) -> str:
    """`text` as a single-quoted nginx argument."""
    quoted = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if len(quoted.encode()) > MAX_ARGUMENT:
        raise ValueError(f"argument of {len(quoted.encode())} bytes: nginx cannot parse one longer than "
                         f"{MAX_ARGUMENT} bytes (too long parameter)")
    return quoted


@dataclass
class Route:
    """A location: `prefix` (nginx `location <prefix>`, or `= /exact`) and its filter chain,
    [(filter name, policy)] in order; an empty chain proxies without any filter."""
    prefix: str
    chain: Sequence[tuple[str, Any]]

    def path(self) -> str:
        """The location's path, which is also the URI part of its `proxy_pass` (see the module
        docs): `/api` for `location /api`, `= /exact` or `^~ /api`."""
        modifier, _, path = self.prefix.rpartition(" ")
        if modifier.strip() not in ("", "=", "^~") or not path.startswith("/"):
            raise ValueError(f"route {self.prefix!r}: a prefix (`/p`, `^~ /p`) or exact (`= /p`) location "
                             "is needed: a regex or named location cannot give proxy_pass a URI part, and "
                             "without one nginx forwards the client's URI unnormalised")
        return path


@dataclass
class Config:
    prefix: Path                                   # scratch dir: logs, pid, temp paths
    port: int                                      # 127.0.0.1:<port>
    upstream: str                                  # host:port that proxy_pass sends to
    modules: Mapping[str, str | os.PathLike[str]]  # filter name -> .wasm path (module gatewarden_<f>)
    routes: Sequence[Route]
    port6: int | None = None                       # also [::1]:<port6>
    vm_configurations: Mapping[str, Any] = field(default_factory=dict)  # filter name -> VM config
    workers: int = 2
    log_level: str = "info"
    request_headers_in_access: bool = False        # proxy_wasm_request_headers_in_access on (as Kong)
    resolver_names: Sequence[str] = ()             # resolver_add 127.0.0.1 <names>
    admin_port: int | None = None                  # loopback server for `admin_locations`
    admin_module: tuple[str, str | os.PathLike[str]] | None = None   # (module name, path)
    admin_locations: Sequence[str] = ()            # exact paths served by admin_module
    access_log: bool = True                        # <prefix>/access.log: "<status> <method> <uri>"
    run_as_root: bool = False                      # `user root;` (workers must write the prefix)
    shm_kv_size: str = "64m"
    master_process: bool = True                    # off: one process serves (e.g. to run under valgrind)
    # Request bodies (nginx defaults when None: 16k and 1m). A filter that reads the body gets it only
    # when it fits client_body_buffer_size (else nginx spills it to a temp file the filter cannot
    # read); a content-length over client_max_body_size gets nginx's own 413 before any filter runs.
    client_body_buffer_size: str | None = None
    client_max_body_size: str | None = None


def render(cfg: Config) -> str:
    prefix = Path(cfg.prefix)
    out: list[str] = []
    w = out.append
    if cfg.run_as_root:
        w("user root;")
    w("daemon off;")
    w(f"master_process {'on' if cfg.master_process else 'off'};")
    w(f"worker_processes {cfg.workers};")
    w(f"error_log {prefix / 'error.log'} {cfg.log_level};")
    w(f"pid {prefix / 'nginx.pid'};")
    # Old workers finish their requests on reload, but not forever.
    w("worker_shutdown_timeout 10s;")
    w("events { worker_connections 1024; }")
    w("")
    w("wasm {")
    names = {module_name(f): Path(p) for f, p in cfg.modules.items()}
    for filter_name, path in cfg.modules.items():
        line = f"    module {module_name(filter_name)} {path}"
        if filter_name in cfg.vm_configurations and cfg.vm_configurations[filter_name] is not None:
            line += " " + quote(policy_text(cfg.vm_configurations[filter_name]))
        w(line + ";")
    if cfg.admin_module is not None:
        name, path = cfg.admin_module
        if name in names:
            raise ValueError(f"admin module name {name!r} clashes with a filter's module")
        w(f"    module {name} {path};")
    w(f"    shm_kv * {cfg.shm_kv_size};")
    w(f"    shm_kv gatewarden {cfg.shm_kv_size};")
    w("}")
    w("")
    w("http {")
    for directive, sub in (("client_body_temp_path", "body"), ("proxy_temp_path", "proxy"),
                           ("fastcgi_temp_path", "fastcgi"), ("uwsgi_temp_path", "uwsgi"),
                           ("scgi_temp_path", "scgi")):
        w(f"    {directive} {prefix / 'tmp' / sub};")
    if cfg.client_body_buffer_size:
        w(f"    client_body_buffer_size {cfg.client_body_buffer_size};")
    if cfg.client_max_body_size:
        w(f"    client_max_body_size {cfg.client_max_body_size};")
    if cfg.resolver_names:
        w(f"    resolver_add 127.0.0.1 {' '.join(cfg.resolver_names)};")
    if cfg.request_headers_in_access:
        w("    proxy_wasm_request_headers_in_access on;")
    w("    log_format gatewarden '$status $request_method $request_uri';")
    w("    access_log off;")
    w("    upstream gatewarden_upstream {")
    w(f"        server {cfg.upstream};")
    w("        keepalive 32;")
    w("    }")
    w("    server {")
    w(f"        listen 127.0.0.1:{cfg.port};")
    if cfg.port6:
        w(f"        listen [::1]:{cfg.port6};")
    if cfg.access_log:
        w(f"        access_log {prefix / 'access.log'} gatewarden;")
    for route in cfg.routes:
        w(f"        location {route.prefix} {{")
        for filter_name, policy in route.chain:
            if filter_name not in cfg.modules:
                raise ValueError(f"route {route.prefix}: filter {filter_name!r} has no module")
            w(f"            proxy_wasm {module_name(filter_name)} {quote(policy_text(policy))};")
        # The URI part makes nginx forward the normalised URI (module docs).
        w(f"            proxy_pass http://gatewarden_upstream{route.path()};")
        w("            proxy_http_version 1.1;")
        w('            proxy_set_header Connection "";')
        w("        }")
    w("    }")
    if cfg.admin_port:
        w("    server {")
        w(f"        listen 127.0.0.1:{cfg.admin_port};")
        w("        large_client_header_buffers 4 64k;")
        for path in cfg.admin_locations:
            if cfg.admin_module is None:
                raise ValueError("admin_locations need admin_module")
            w(f"        location = {path} {{")
            w(f"            proxy_wasm {cfg.admin_module[0]};")
            w("        }")
        w("        location / { return 404; }")
        w("    }")
    w("}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", required=True, help="scratch directory (logs, pid, temp files)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--port6", type=int, help="also listen on [::1]:PORT6")
    p.add_argument("--upstream", required=True, help="host:port to proxy to")
    p.add_argument("--filter", action="append", default=[], metavar="NAME=POLICY_FILE",
                   help="a filter on location /, in chain order (module from --module-dir)")
    p.add_argument("--module-dir", default=str(Path(__file__).resolve().parent.parent / "target/wasm32-wasip1/release"))
    p.add_argument("--vm-config", action="append", default=[], metavar="NAME=FILE",
                   help="VM configuration of a filter's module (e.g. approval trust settings)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--request-headers-in-access", action="store_true")
    args = p.parse_args(argv)

    chain, modules, vm = [], {}, {}
    for item in args.filter:
        name, sep, file = item.partition("=")
        if not sep:
            p.error(f"--filter {item!r}: expected NAME=POLICY_FILE")
        chain.append((name, Path(file).read_text().strip()))
        modules[name] = Path(args.module_dir) / f"{module_name(name)}.wasm"
    for item in args.vm_config:
        name, sep, file = item.partition("=")
        if not sep:
            p.error(f"--vm-config {item!r}: expected NAME=FILE")
        vm[name] = Path(file).read_text().strip()
    cfg = Config(prefix=Path(args.prefix).resolve(), port=args.port, port6=args.port6, upstream=args.upstream,
                 modules=modules, routes=[Route("/", chain)], vm_configurations=vm, workers=args.workers,
                 request_headers_in_access=args.request_headers_in_access)
    sys.stdout.write(render(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
