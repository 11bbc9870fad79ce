"""End-to-end tests of safe rollout and approvals in a real Envoy and in Kong's engine (IP/geo filter).

- Canary: a candidate on 10 % of clients. 1,000 distinct clients (x-forwarded-for with
  xff_num_trusted_hops: 1; the test client plays the trusted proxy) see ≈10 % denials from the
  candidate (which denies everything), each client always the same policy, and the filter's
  counters and decision header carry the version that decided.
- Shadow: the candidate is evaluated on all traffic but never enforced; disagreements are
  counted and logged in one line each.
- Approvals: the trust settings are the VM configuration (Envoy: vm_config.configuration, written by
  the harness on every push, as a platform owner's tooling would; Kong: the third argument of the
  `module` directive, which reaches proxy_on_vm_start). A signed policy is accepted; a tampered one
  is refused by on_configure: Envoy keeps the old one serving (ECDS update_rejected); Kong has no
  last good policy: the filter's routes fail closed (503, no_policy) until a signed one arrives.
  Signatures are made here with `cryptography` (an independent Ed25519 and canonical JSON).
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import pytest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import harness
from harness import BaseGateway

FILTER = "ip_geo"
HEADER = "x-gatewarden-ip-geo"
ONE_HOP = {"xff_num_trusted_hops": 1}
UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'


def counters(gw: BaseGateway) -> dict[str, int]:
    return gw.settled_counters(FILTER)


def shadow_lines(gw: BaseGateway, since: int = 0) -> list[dict[str, Any]]:
    return harness.json_records(gw.log(since), "shadow_disagreement")


def client(i: int) -> str:
    return f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def from_client(gw: BaseGateway, ip: str, **headers: str):
    return gw.get("/api", headers={"x-forwarded-for": ip, **headers})


# --------------------------------------------------------------------------------------------
# Canary and shadow


def test_canary_at_ten_percent_puts_about_a_tenth_of_distinct_clients_on_the_candidate(start_gateway):
    policy = {
        "policy_version": "v1",
        "client_address": ONE_HOP,
        "default": {},
        "rollout": {
            "percent": 10,
            "candidate": {"policy_version": "v2", "client_address": ONE_HOP, "default": {"deny": ["0.0.0.0/0"]}},
        },
    }
    gw = start_gateway({FILTER: policy})
    n = 1000
    statuses: dict[str, int] = {}
    for i in range(n):
        ip = client(i)
        r = from_client(gw, ip)
        assert r.status in (200, 403), (ip, r.status, r.text)
        if r.status == 200:
            assert r.upstream_headers[HEADER] == "allow; rule=default; version=v1"
        statuses[ip] = r.status
    on_candidate = sum(1 for s in statuses.values() if s == 403)
    # Binomial(1000, 0.1): mean 100, sd 9.5. Five sd either side: a fair assignment fails this
    # with probability below 1e-6; "everyone" or "no one" or 20 % cannot pass.
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(on_candidate - 100) <= 5 * sd, f"{on_candidate} of {n} clients on the candidate"
    # One client, one policy: a second round gives every client the same answer.
    for i in range(0, n, 7):
        ip = client(i)
        assert from_client(gw, ip).status == statuses[ip], ip
    again = len(range(0, n, 7))
    again_candidate = sum(1 for i in range(0, n, 7) if statuses[client(i)] == 403)
    c = counters(gw)
    assert c["rollout_candidate"] == on_candidate + again_candidate, c
    assert c["rollout_active"] == (n - on_candidate) + (again - again_candidate), c
    assert c["candidate_denied"] == c["denied"] == c["rollout_candidate"], c
    assert c["allowed"] == c["rollout_active"], c
    lines = gw.decisions()
    assert lines and all(l["policy_version"] == "v2" and l["rollout"] == "candidate" for l in lines), lines[:3]


def test_shadow_candidate_is_counted_and_logged_never_enforced(start_gateway):
    policy = {
        "policy_version": "v1",
        "client_address": ONE_HOP,
        "default": {"deny": ["192.0.2.0/24"]},
        "rollout": {
            "shadow": True,
            "candidate": {"policy_version": "v2", "client_address": ONE_HOP,
                          "default": {"deny": ["192.0.2.0/24", "198.51.100.0/24"]}},
        },
    }
    gw = start_gateway({FILTER: policy})
    assert from_client(gw, "192.0.2.1").status == 403  # both deny
    r = from_client(gw, "198.51.100.7", **{"x-request-id": "client-chosen-id"})  # only the candidate would deny
    assert r.status == 200 and r.upstream_headers[HEADER] == "allow; rule=default; version=v1"
    assert from_client(gw, "203.0.113.1").status == 200  # both allow
    c = counters(gw)
    assert (c["shadow_agreed"], c["shadow_disagreed"]) == (2, 1), c
    assert (c["allowed"], c["denied"], c["rollout_candidate"]) == (2, 1, 0), c
    line = harness.poll("shadow disagreement line", lambda: shadow_lines(gw), 5)[0]
    assert line["active"] == "allow" and line["candidate"] == "deny:ip_denied:403", line
    assert (line["active_version"], line["candidate_version"]) == ("v1", "v2"), line
    assert line["client"] == "198.51.100.7", line
    if gw.engine == "envoy":  # Envoy replaces an external client's x-request-id with its own
        assert line["request_id"] and line["request_id"] != "client-chosen-id", line
    else:  # nginx passes the client's on
        assert line["request_id"] == "client-chosen-id", line
    assert len(shadow_lines(gw)) == 1


def test_dry_run_candidate_is_counted_and_never_enforced(start_gateway):
    """A canary whose candidate is in dry run: the clients on it are let through with the
    candidate's would-be denial in the decision header, counted as the candidate's dry-run denials."""
    policy = {
        "policy_version": "v1",
        "client_address": ONE_HOP,
        "default": {},
        "rollout": {
            "percent": 100,
            "candidate": {"policy_version": "v2", "mode": "dry_run", "client_address": ONE_HOP,
                          "default": {"deny": ["0.0.0.0/0"]}},
        },
    }
    gw = start_gateway({FILTER: policy}, ipv6=False)
    before = counters(gw)
    for i in range(5):
        r = from_client(gw, client(i))
        assert r.status == 200, (r.status, r.text)
        assert r.upstream_headers[HEADER] == "dry_run_deny; reason=ip_denied; rule=default; version=v2"
    got = harness.counter_changes(before, counters(gw))
    assert got == {"candidate_dry_run_denied": 5, "dry_run_denied": 5, "dry_run_denied_ip_denied": 5,
                   "rollout_candidate": 5}, got


# --------------------------------------------------------------------------------------------
# Approvals


def keypair(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def canonical(doc: dict[str, Any]) -> bytes:
    """Canonical JSON (README "Approvals"): sorted keys, no whitespace, raw UTF-8. Test documents
    have no floats or control characters, where Python's and serde_json's texts could differ."""
    body = {k: v for k, v in doc.items() if k != "signatures"}
    return b"gatewarden-policy-v1\n" + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                    ensure_ascii=False).encode()


def signed(doc: dict[str, Any], *signers: tuple[str, Ed25519PrivateKey]) -> dict[str, Any]:
    msg = canonical(doc)
    sigs = [{"key_id": k, "sig": base64.b64encode(key.sign(msg)).decode()} for k, key in signers]
    return {**doc, "signatures": sigs}


ALICE, BOB, MALLORY = keypair(1), keypair(2), keypair(9)
TRUST = {
    "trusted_signers": [{"key_id": "alice", "public_key": public_b64(ALICE)},
                        {"key_id": "bob", "public_key": public_b64(BOB)}],
    "required_signatures": 2,
}


def office(version: str, deny: list[str]) -> dict[str, Any]:
    return {"policy_version": version, "client_address": ONE_HOP, "default": {"deny": deny}}


@pytest.mark.hosts("envoy")  # Kong has no "old one": test_tampered_signed_policy_fails_the_route_closed_on_kong
def test_tampered_signed_policy_is_refused_and_the_old_one_keeps_serving(start_gateway):
    v1 = signed(office("v1", ["192.0.2.0/24"]), ("alice", ALICE), ("bob", BOB))
    gw = start_gateway({FILTER: v1}, vm_configurations={FILTER: TRUST})
    assert from_client(gw, "192.0.2.9").status == 403
    assert from_client(gw, "203.0.113.1").upstream_headers[HEADER] == "allow; rule=default; version=v1"

    # Signed v2, then its deny list emptied by someone who can push policy but holds no key.
    tampered = signed(office("v2", ["192.0.2.0/24"]), ("alice", ALICE), ("bob", BOB))
    tampered["default"]["deny"] = []
    before = gw.ecds_counts(FILTER)
    mark = gw.log_mark()
    assert gw.push_policy(FILTER, tampered) == "rejected"
    assert gw.ecds_counts(FILTER)["update_rejected"] == before.get("update_rejected", 0) + 1
    gw.wait_for_log(r"policy refused: signatures: 0 valid signature\(s\) from distinct trusted keys, 2 required",
                    since=mark)
    assert counters(gw)["signature_rejected"] >= 1
    # The old policy v1 still serves.
    assert from_client(gw, "192.0.2.9").status == 403
    assert from_client(gw, "203.0.113.1").upstream_headers[HEADER] == "allow; rule=default; version=v1"

    # One trusted signature plus an untrusted one is not enough either.
    assert gw.push_policy(FILTER, signed(office("v2", []), ("alice", ALICE), ("mallory", MALLORY))) == "rejected"
    assert from_client(gw, "192.0.2.9").status == 403

    # Approved by both: accepted.
    assert gw.push_policy(FILTER, signed(office("v3", []), ("bob", BOB), ("alice", ALICE))) == "success"
    r = from_client(gw, "192.0.2.9")
    assert r.status == 200 and r.upstream_headers[HEADER] == "allow; rule=default; version=v3"


@pytest.mark.hosts("kong")
def test_tampered_signed_policy_fails_the_route_closed_on_kong(start_gateway):
    """The trust settings reach the filter as the `module` directive's VM configuration; a tampered
    policy pushed by reload is refused, and with no last good policy on this host the filter's
    route answers 503 (fixed body, no_policy) until an approved one arrives; a route without the
    filter is not affected."""
    v1 = signed(office("v1", ["192.0.2.0/24"]), ("alice", ALICE), ("bob", BOB))
    gw = start_gateway({FILTER: v1}, vm_configurations={FILTER: TRUST},
                       routes={"/api": [FILTER], "/open": []})
    assert from_client(gw, "192.0.2.9").status == 403
    assert from_client(gw, "203.0.113.1").upstream_headers[HEADER] == "allow; rule=default; version=v1"

    tampered = signed(office("v2", ["192.0.2.0/24"]), ("alice", ALICE), ("bob", BOB))
    tampered["default"]["deny"] = []
    before, mark = counters(gw), gw.log_mark()
    assert gw.push_policy(FILTER, tampered) == "refused"
    gw.wait_for_log_in_every_vm(r"policy refused: signatures: 0 valid signature\(s\) from distinct trusted keys, "
                                r"2 required", since=mark)
    for ip in ("192.0.2.9", "203.0.113.1"):  # refused: the route fails closed for everyone
        r = from_client(gw, ip)
        assert (r.status, r.is_local_body(UNAVAILABLE)) == (503, True), (r.status, r.body)
    assert gw.get("/open").status == 200
    got = harness.counter_changes(before, counters(gw))
    assert got == {"config_rejected": gw.vms, "signature_rejected": gw.vms, "no_policy": 2}, got

    assert gw.push_policy(FILTER, signed(office("v3", []), ("bob", BOB), ("alice", ALICE))) == "success"
    r = from_client(gw, "192.0.2.9")
    assert r.status == 200 and r.upstream_headers[HEADER] == "allow; rule=default; version=v3"


def test_unsigned_policy_is_refused_at_start_and_fails_closed(start_gateway):
    gw = start_gateway({FILTER: office("v1", [])}, vm_configurations={FILTER: TRUST})
    r = from_client(gw, "203.0.113.1")
    assert r.status >= 500, (r.status, r.text)
    if gw.host == "kong":  # the filter's own fail-closed answer (Envoy's is its 500)
        assert (r.status, r.is_local_body(UNAVAILABLE)) == (503, True), (r.status, r.body)
        assert counters(gw)["no_policy"] == 1
    gw.wait_for_log(r"policy refused: signatures: 0 valid signature")
    assert gw.push_policy(FILTER, signed(office("v2", []), ("alice", ALICE), ("bob", BOB))) == "success"
    assert from_client(gw, "203.0.113.1").status == 200


@pytest.mark.parametrize("bad", [{"required_signatures": 1}, "not json"])
def test_invalid_trust_settings_fail_closed(start_gateway, bad):
    gw = start_gateway({FILTER: signed(office("v1", []), ("alice", ALICE), ("bob", BOB))},
                       vm_configurations={FILTER: bad})
    r = from_client(gw, "203.0.113.1")
    assert r.status >= 500, (r.status, r.text)
    gw.wait_for_log(rf"invalid trust settings in {re.escape(gw.trust_source)}")
    if gw.host == "kong":  # the VM stays up without a policy: counted, and the filter's own 503
        assert (r.status, r.is_local_body(UNAVAILABLE)) == (503, True), (r.status, r.body)
        moved = {k: v for k, v in counters(gw).items() if v}
        assert moved == {"trust_config_rejected": gw.vms, "config_rejected": gw.vms, "no_policy": 1}, moved
