"""The shipped validation policy (deploy/policies/validate.json) on a real Envoy, as a user deploys
it: the policy names its OpenAPI document (`openapi.document_file`), and the `gatewarden` command
inlines it (`render-json`, as `apply` and `render` do) before the filter sees it.

Each case is one request of the example repo's test file (examples/tests/validate.test.yaml runs
the same policy in the Wasm host); here the statuses come from Envoy 1.40 with the release module.
Envoy only: the inlined document is longer than the 4,094 bytes nginx.conf allows one parameter
(Kong's engine fetches its document instead: test_validate.py).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

import harness

FILTER = "validate"
SIGNATURE = "sha256=" + "0" * 64
ORDER = {"customer_id": "3f0c6a2e-8a8e-4a59-9d87-2b1f5c6d7e80", "items": [{"sku": "ABC-1234", "quantity": 2}]}
JSON = {"content-type": "application/json"}
NEW_ORDER = {**JSON, "idempotency-key": "order-2026-12-03-0001"}
HOOK = {**JSON, "x-signature": SIGNATURE}
EVENT = {"event": "payment.failed", "payment_id": "pay_12345678", "amount": 1, "currency": "EUR"}

# (method, path, headers, body, status, reason); reason None: the request reached the upstream.
CASES: list[tuple[str, str, dict[str, str], Any, int, str | None]] = [
    ("POST", "/hooks/payments", HOOK, EVENT, 200, None),
    ("POST", "/hooks/payments", HOOK, {"event": "payment.sent"}, 400, "schema_violation"),
    ("POST", "/hooks/payments", JSON, EVENT, 400, "invalid_parameter"),
    ("POST", "/hooks/payments", {**HOOK, "content-type": "text/plain"}, "hello", 415, "unsupported_media_type"),
    ("POST", "/hooks/payments", HOOK, "x" * 20_000, 413, "body_too_large"),
    ("POST", "/hooks/payments", HOOK, "{not json", 400, "invalid_json"),
    ("POST", "/api/orders", NEW_ORDER, ORDER, 200, None),
    ("POST", "/api/orders", NEW_ORDER, {**ORDER, "status": "paid"}, 400, "schema_violation"),
    ("POST", "/api/orders", JSON, ORDER, 400, "invalid_parameter"),
    ("GET", "/api/orders/0", {}, None, 400, "invalid_parameter"),
    ("GET", "/api/orders/7", {}, None, 200, None),
    ("GET", "/api/invoices", {}, None, 404, "unknown_path"),
    ("PUT", "/api/orders", {}, None, 405, "method_not_allowed"),
    ("GET", "/elsewhere", {}, None, 200, None),
]


def shipped_policy() -> dict[str, Any]:
    out = subprocess.run([str(harness.cli_path()), "render-json", "--filter", FILTER, "deploy/policies/validate.json"],
                         cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout
    policy = json.loads(out)
    assert policy["rules"][1]["openapi"]["document"]["openapi"] == "3.1.0", "the document is inlined"
    return policy


@pytest.fixture(scope="module")
def gw(start_module_gateway) -> harness.BaseGateway:
    return start_module_gateway({FILTER: shipped_policy()}, ipv6=False)


@pytest.mark.hosts("envoy")
@pytest.mark.parametrize("method,path,headers,body,status,reason", CASES, ids=[f"{c[0]} {c[1]} {c[4]}" for c in CASES])
def test_shipped_policy_on_envoy(gw: harness.BaseGateway, method: str, path: str, headers: dict[str, str], body: Any,
                                 status: int, reason: str | None) -> None:
    data = None if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    r = gw.get(path, headers, method=method, body=data, timeout=10)
    assert r.status == status, r.text
    if reason is None:
        return
    assert r.headers.get("content-type") == "application/problem+json", r.headers
    problem = json.loads(r.text)
    assert problem["status"] == status, problem
    if reason in ("schema_violation", "invalid_parameter"):
        fields = {"pointer", "schema", "keyword", "detail"}
        assert problem["errors"] and all(fields <= set(e) for e in problem["errors"]), problem
