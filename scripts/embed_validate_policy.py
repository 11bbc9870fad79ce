#!/usr/bin/env python3
"""Embed the shipped validation policy, with its OpenAPI document inlined, where a host takes the
policy itself rather than a file. Stdlib only.

deploy/policies/validate.json names its OpenAPI document (`openapi.document_file`, relative to the
policy); the `gatewarden` command inlines it (cli/src/include.rs). The Kong declarative config, the
Istio WasmPlugin and the ECDS resource need the inlined policy, so this writes it there:

- deploy/kong/kong.yaml: the `config:` of the `gatewarden_validate` filter, between the lines
  `# BEGIN generated: ...` and `# END generated` (JSON, which YAML reads as it is);
- deploy/istio/wasmplugin-validate.yaml: its `pluginConfig:`, between the same markers;
- deploy/envoy/ecds/validate.json: `gatewarden render --target envoy` (what `gatewarden apply` and
  scripts/ecds.py write).

    scripts/embed_validate_policy.py            # rewrite the three files
    scripts/embed_validate_policy.py --check    # exit 1 if one differs (cli/tests/validate.rs checks too)

The CLI: $GATEWARDEN_CLI, else target/debug/gatewarden (built with `cargo build -q -p gatewarden`
when missing). Run by scripts/gen-schemas.sh.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_reference import cli  # noqa: E402  (the gatewarden binary, built if missing)

ROOT = Path(__file__).resolve().parent.parent
POLICY = "deploy/policies/validate.json"
MODULE = "target/wasm32-wasip1/release/gatewarden_validate.wasm"
BEGIN = re.compile(r"^(?P<indent> *)# BEGIN generated: .*$", re.M)
END = "# END generated"




def gatewarden(*args: str) -> str:
    return subprocess.run([cli(), *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def embed(text: str, key: str, policy: dict) -> str:
    """`text` with the block between the markers replaced by `key: <policy as indented JSON>`."""
    m = BEGIN.search(text)
    if not m:
        raise SystemExit(f"no '# BEGIN generated:' line for {key}")
    indent = m.group("indent")
    end = text.find(f"{indent}{END}", m.end())
    if end < 0:
        raise SystemExit(f"no '{END}' line after the BEGIN line for {key}")
    body = json.dumps(policy, indent=2, ensure_ascii=False).replace("\n", "\n" + indent + "  ")
    block = f"{m.group(0)}\n{indent}{key}: {body}\n"
    return text[:m.start()] + block + text[end:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 when a file differs from what it would be")
    args = p.parse_args()
    policy = json.loads(gatewarden("render-json", "--filter", "validate", POLICY))
    outputs = {
        "deploy/kong/kong.yaml": lambda t: embed(t, "config", policy),
        "deploy/istio/wasmplugin-validate.yaml": lambda t: embed(t, "pluginConfig", policy),
        "deploy/envoy/ecds/validate.json": lambda _t: gatewarden(
            "render", "--target", "envoy", "--filter", "validate", "--module", MODULE, POLICY),
    }
    stale = []
    for rel, make in outputs.items():
        path = ROOT / rel
        old = path.read_text() if path.exists() else ""
        new = make(old)
        if new != old:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
                print(f"wrote {rel}")
    if args.check and stale:
        print("stale (run scripts/embed_validate_policy.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
