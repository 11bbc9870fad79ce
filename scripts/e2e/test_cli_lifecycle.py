"""End-to-end test of the policy lifecycle with the `gatewarden` command on a running Envoy (Envoy only).

`gatewarden apply` writes into the ECDS directory Envoy watches (the harness's gw.ecds_dir); each
version must then be enforced by real requests: peers 127.0.0.5 and 127.0.0.6 are denied or allowed
as the applied version says, and the upstream's decision header names the version. Between
versions: an invalid policy is refused by the CLI and nothing changes on disk or in Envoy;
`history` lists the versions; `diff` names the CIDRs that changed; `rollback` brings the previous
version back as a new history entry, and Envoy enforces it.

The CLI binary: $GATEWARDEN_CLI, else target/debug/gatewarden (built here when missing; scripts/test.sh
has built it in `cargo test`).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest


import harness
from harness import Gateway

# `gatewarden apply/diff/rollback` work on the ECDS directory an Envoy watches: Envoy only.
pytestmark = pytest.mark.hosts("envoy")

FILTER = "ip_geo"
HEADER = "x-gatewarden-ip-geo"
A, B = "127.0.0.5", "127.0.0.6"


def cli() -> Path:
    path = harness.cli_path()
    if not path.exists():
        pytest.skip(f"{path} missing")
    return path


def gatewarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cli()), *args], cwd=harness.ROOT, capture_output=True, text=True, timeout=60)


def policy(version: str, deny: str) -> str:
    return f"""# e2e policy {version}
filter: ip_geo
policy_version: "{version}"
rules:
  - name: blocklist
    match: {{ path_prefix: / }}
    deny: ["{deny}/32"]
"""


def wait_update(gw: Gateway, before: dict[str, int], timeout: float = 10.0) -> str:
    """How Envoy took the next ECDS file write: success, rejected or failure."""
    deadline = time.monotonic() + timeout
    while True:
        now = gw.ecds_counts(FILTER)
        for outcome in ("success", "rejected", "failure"):
            if now.get(f"update_{outcome}", 0) > before.get(f"update_{outcome}", 0):
                return outcome
        if time.monotonic() >= deadline:
            raise AssertionError(f"no ECDS update counted within {timeout}s: {now}")
        time.sleep(0.005)


def enforced(gw: Gateway, version: str, denied: str, allowed: str) -> None:
    r = gw.get("/orders", source=denied)
    assert r.status == 403, (version, r.status, r.text)
    r = gw.get("/orders", source=allowed)
    assert r.status == 200, (version, r.status, r.text)
    assert r.upstream_headers is not None
    assert r.upstream_headers.get(HEADER) == f"allow; rule=blocklist; version={version}", r.upstream_headers


def apply(gw: Gateway, file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return gatewarden("apply", str(file), "--to", str(gw.ecds_dir), *gw.cli_target_args(FILTER), *extra)


def test_apply_update_diff_rollback_each_version_enforced(start_gateway, tmp_path: Path):
    gw = start_gateway({FILTER: {"policy_version": "boot", "rules": []}}, ipv6=False)
    assert gw.get("/", source=A).status == 200

    v1, v2, bad = tmp_path / "v1.yaml", tmp_path / "v2.yaml", tmp_path / "bad.yaml"
    v1.write_text(policy("e2e.1", A))
    v2.write_text(policy("e2e.2", B))
    bad.write_text(policy("e2e.bad", "127.0.0.300"))

    before = gw.ecds_counts(FILTER)
    r = apply(gw, v1, "--author", "ann", "-m", "block A")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("applied version 1"), r.stdout
    assert wait_update(gw, before) == "success"
    enforced(gw, "e2e.1", denied=A, allowed=B)

    # Refused by the CLI: nothing written, Envoy sees no update and keeps enforcing v1.
    files = {p: p.read_bytes() for p in gw.ecds_dir.rglob("*") if p.is_file()}
    before = gw.ecds_counts(FILTER)
    r = apply(gw, bad)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert 'rules[0].deny[0]: invalid CIDR "127.0.0.300/32"' in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in gw.ecds_dir.rglob("*") if p.is_file()} == files
    # Envoy takes a pushed file within ~5 ms: a write would have been counted in this window.
    harness.hold("no ECDS update after a refused apply", lambda: gw.ecds_counts(FILTER) == before, 0.3)
    enforced(gw, "e2e.1", denied=A, allowed=B)

    before = gw.ecds_counts(FILTER)
    r = apply(gw, v2, "--author", "bob", "-m", "block B instead")
    assert r.returncode == 0, r.stderr
    assert wait_update(gw, before) == "success"
    enforced(gw, "e2e.2", denied=B, allowed=A)

    r = gatewarden("diff", "--to", str(gw.ecds_dir), "1", "2")
    assert r.returncode == 1, r.stderr
    assert '~ policy_version: "e2e.1" -> "e2e.2"' in r.stdout, r.stdout
    assert f'- deny: item "{A}/32"' in r.stdout and f'+ deny: item "{B}/32"' in r.stdout, r.stdout

    before = gw.ecds_counts(FILTER)
    r = gatewarden("rollback", "--to", str(gw.ecds_dir), "--author", "carol")
    assert r.returncode == 0, r.stderr
    assert "applied version 3" in r.stdout and "(rollback to version 1)" in r.stdout, r.stdout
    assert wait_update(gw, before) == "success"
    enforced(gw, "e2e.1", denied=A, allowed=B)

    r = gatewarden("history", "--to", str(gw.ecds_dir), "--format", "json")
    assert r.returncode == 0, r.stderr
    history = json.loads(r.stdout)
    assert [(h["version"], h["policy_version"], h["author"], h["current"]) for h in history] == [
        (1, "e2e.1", "ann", False), (2, "e2e.2", "bob", False), (3, "e2e.1", "carol", True)]
    assert history[2]["rollback_of"] == 1
    assert history[0]["sha256"] == history[2]["sha256"]
    # Envoy never rejected anything: every write was one whole, valid file.
    assert gw.ecds_counts(FILTER).get("update_rejected", 0) == 0
