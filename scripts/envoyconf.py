#!/usr/bin/env python3
"""Render Gatewarden's Envoy bootstrap template (deploy/envoy/envoy.yaml). Stdlib only.

Used by the e2e harness, the demo and docker users; the rules are in the template's header:
${NAME} placeholders, a block repeated once per filter, optional blocks kept on request.

    python3 scripts/envoyconf.py --out /tmp/gw/envoy.yaml --ecds-dir /tmp/gw/ecds \\
        --filter ip_geo --set LISTEN_PORT=10000 --set UPSTREAM_PORT=8080 [--ipv6]
"""

from __future__ import annotations

import argparse
import os
import re
import string
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "envoy" / "envoy.yaml"

DEFAULTS = {
    "ADMIN_ADDRESS": "127.0.0.1",
    "ADMIN_PORT": "9901",
    "LISTEN_ADDRESS": "127.0.0.1",
    "LISTEN_PORT": "10000",
    "LISTEN_PORT6": "10006",
    "UPSTREAM_HOST": "127.0.0.1",
    "UPSTREAM_PORT": "8080",
    "GEO_DB_HOST": "127.0.0.1",
    "GEO_DB_PORT": "8081",
    "JWKS_HOST": "127.0.0.1",
    "JWKS_PORT": "8082",
    "RLS_HOST": "127.0.0.1",
    "RLS_PORT": "8083",
    "ECDS_DIR": str(ROOT / "deploy" / "envoy" / "ecds"),
}

FILTERS_BLOCK = re.compile(
    r"^[ \t]*# BEGIN gatewarden-filters[^\n]*\n(.*?)^[ \t]*# END gatewarden-filters[^\n]*\n",
    re.S | re.M,
)
OPTIONAL_BLOCK = re.compile(
    r"^[ \t]*# BEGIN optional:(\w+)[^\n]*\n(.*?)^[ \t]*# END optional:\1[^\n]*\n", re.S | re.M
)


def render(
    values: dict[str, object] | None = None,
    filters: list[str] | tuple[str, ...] = ("ip_geo",),
    optional: set[str] | frozenset[str] = frozenset(),
    template: str | None = None,
) -> str:
    """Return the rendered bootstrap.

    values: placeholders (missing ones take DEFAULTS; an unknown ${NAME} left over raises KeyError).
    filters: Gatewarden filter names, in chain order; each needs ECDS_DIR/<name>.json at run time.
      An empty list gives a chain with only the router (a "no filter" baseline).
    optional: names of optional blocks to keep (e.g. {"ipv6"}).
    """
    text = TEMPLATE.read_text() if template is None else template
    merged = {**DEFAULTS, **{k: str(v) for k, v in (values or {}).items()}}

    def expand_filters(m: re.Match[str]) -> str:
        block = m.group(1)
        return "".join(block.replace("${FILTER}", name) for name in filters)

    text, n = FILTERS_BLOCK.subn(expand_filters, text)
    if n != 1:
        raise ValueError("template must contain exactly one gatewarden-filters block")
    text = OPTIONAL_BLOCK.sub(lambda m: m.group(2) if m.group(1) in optional else "", text)
    # Comment lines are left alone: the template's header explains the placeholders.
    return "".join(
        line if line.lstrip().startswith("#") else string.Template(line).substitute(merged)
        for line in text.splitlines(keepends=True)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where to write the rendered bootstrap ('-' for stdout)")
    p.add_argument("--ecds-dir", help="directory of the ECDS files (default: deploy/envoy/ecds)")
    p.add_argument("--filter", action="append", dest="filters",
                   help="Gatewarden filter in the chain, repeatable, in order (default: ip_geo)")
    p.add_argument("--no-filters", action="store_true", help="router only")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="placeholder value")
    p.add_argument("--ipv6", action="store_true", help="also listen on [::1]:LISTEN_PORT6")
    args = p.parse_args(argv)

    values: dict[str, object] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected NAME=VALUE")
        values[name] = value
    if args.ecds_dir:
        values["ECDS_DIR"] = os.path.abspath(args.ecds_dir)
    filters = [] if args.no_filters else (args.filters or ["ip_geo"])
    text = render(values, filters, {"ipv6"} if args.ipv6 else set())
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
