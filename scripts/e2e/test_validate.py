"""End-to-end tests of the request-validation filter (filters/validate) in a real Envoy and in Kong's
engine, against the shipped example API (deploy/policies/openapi/orders-api.yaml / .json, OpenAPI
3.1, and orders-api-3.0.yaml, two of its operations in 3.0's dialect). Every case runs on both hosts
unless marked.

What is shown on each host:
- valid requests (parameters of every kind, JSON bodies, a merge-patch body, a non-JSON body) reach
  the upstream unchanged: the echo upstream sees the exact bytes (sha256) and every header the
  client sent; the only header added is the decision header, and only for requests decided on their
  headers (a body is read after the headers went on);
- each class of invalid request gets its status and its problem+json body: 400 invalid JSON, 400
  schema violation listing the failing instance's JSON pointer and keyword, 400 parameter (path,
  query, header, cookie), 400 missing body, 404 unknown path, 405 with `Allow`, 413, 415; each is
  counted (`denied_<reason>`), logged (reason, rule, policy version); no byte of a refused body
  reaches the upstream (on Envoy the headers of a request that waits for its body have gone on, and
  the router's upstream request is reset when the filter denies: the echo upstream counts the bytes);
- the 3.0 excerpt gives the verdicts of the 3.1 document (nullable, boolean exclusiveMinimum);
- the plain form (body_schema of draft 7, parameters, path_template, allowed_content_types);
- a 5 MB body is refused while the client has sent only a part of it and holds the rest back (the
  gateway cannot have buffered it: the rest was never sent), and the upstream sees nothing;
- chunked bodies: read and decided on Envoy; refused on Kong, whose engine hands no chunked body
  to a filter (503 body_unavailable, by failure_mode);
- Kong: a body over nginx's client_body_buffer_size is spilled to a file the filter cannot read
  (503 body_unavailable); Envoy reads the same body;
- dry_run lets invalid requests through, counted and logged as dry_run_deny;
- live updates under load without a failed request: a policy push (Envoy ECDS, Kong reload) and a
  new copy of a document fetched from its source (no push at all) make a new operation appear and
  an old one go (on Kong a reload's requests wait for the new workers to compile the module: the
  longest wait is reported); a refused update keeps the last good policy on Envoy (Kong: the filter's routes
  fail closed until a good push, as the engine does it) and a refused document keeps the last good
  document on both.

Kong's harness writes policies into nginx.conf, where nginx refuses an argument over 4 KB: there the
3.1 document (6 KB) is fetched from a source (`openapi.source`, the harness's file server), and
the 3.0 excerpt goes inline; on Envoy both go inline (and the YAML text once more, Envoy only).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import select
import socket
from typing import Any, Mapping

import pytest

import harness
from harness import BaseGateway, Response

FILTER = "validate"
HEADER = "x-gatewarden-validate"
DOCS = harness.ROOT / "deploy" / "policies" / "openapi"
ORDERS = json.loads((DOCS / "orders-api.json").read_text())
ORDERS_JSON = (DOCS / "orders-api.json").read_bytes()
ORDERS_YAML = (DOCS / "orders-api.yaml").read_bytes()


def yaml_without_comments(path: Any) -> str:
    """A YAML file's text without its comment lines (the 3.0 excerpt must fit nginx.conf's 4 KB)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.lstrip().startswith("#"))


ORDERS_30_YAML = yaml_without_comments(DOCS / "orders-api-3.0.yaml")
VERSION = "orders-1"
PROBLEM = "application/problem+json"
UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'


def fixed(title: str, status: int, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail},
                      separators=(",", ":")).encode()


# The fixed problem bodies (filters/validate/policy/src/policy.rs): the public contract.
INVALID_JSON = fixed("Bad Request", 400, "the request body is not valid JSON")
BODY_MISSING = fixed("Bad Request", 400, "the request body is required")
TOO_LARGE = fixed("Content Too Large", 413, "the request body is larger than allowed")
UNSUPPORTED = fixed("Unsupported Media Type", 415, "the request content type is not allowed")
NOT_FOUND = fixed("Not Found", 404, "no operation has this path")
NOT_ALLOWED = fixed("Method Not Allowed", 405, "the path has no operation for this method")
BODY_UNAVAILABLE = fixed("Service Unavailable", 503, "the request body cannot be validated")
MAX_BODY = 512 * 1024  # the default max_body_bytes
# A push compiles the module again (Envoy: for the canary VM, its main thread busy meanwhile;
# Kong: in every new worker): up to ~10-18 s each for a 3-5 MB module on a loaded 2-core machine.
PUSH_TIMEOUT = 120.0
# Headers each host adds on the way to the upstream (Envoy also replaces a client's x-request-id).
HOST_ADDED = {"envoy": {"x-forwarded-proto", "x-envoy-external-address", "x-envoy-expected-rq-timeout-ms",
                        "x-request-id"},
              "kong": set()}
# nginx keeps a body in memory up to client_body_buffer_size (else it is spilled to a temp file the
# filter cannot read) and refuses a content-length over client_max_body_size itself (413 before any
# filter): the buffer holds max_body_bytes, and the filter decides on any larger body.
KONG_BODY = {"client_body_buffer_size": "1m", "client_max_body_size": "16m"}

CUSTOMER = "0b8f5c1e-4f7a-4c52-9d55-3a1a2b9c7d10"
CORRELATION = "5d0f7b0e-8a4b-4b8e-9f0e-2f0a6c1d9e33"
IDEMPOTENCY = {"idempotency-key": "order-2026-12-03-0001"}
SESSION = "s3ss10nT0k3nAbCdEfGhIjKl"


def item(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"sku": f"ABC-{i % 10000:04d}", "quantity": 1 + i % 5, "unit_price": 9.5 + i, **extra}


def new_order(items: int = 2, **extra: Any) -> dict[str, Any]:
    return {"customer_id": CUSTOMER, "items": [item(i) for i in range(items)],
            "shipping_address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
                                 "country": "US"},
            "deliver_after": "2026-12-24T09:00:00Z", "note": None, **extra}


def as_bytes(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def document_source(path: str, **overrides: Any) -> dict[str, Any]:
    """`openapi.source` on the harness's file server (the `jwks` one: it serves any file)."""
    return {"cluster": harness.upstream("jwks"), "path": path, "authority": "docs", **overrides}


def orders_rule(host: str, **openapi: Any) -> dict[str, Any]:
    """The example API under /api: inline on Envoy; fetched on Kong (nginx.conf's 4 KB argument)."""
    doc = {"document": ORDERS} if harness.engine(host) == "envoy" else {"source": document_source("/orders-api.json")}
    return {"name": "orders", "match": {"path_prefix": "/api/"}, "openapi": {**doc, **openapi}}


LEGACY_RULE = {"name": "legacy", "match": {"path_prefix": "/legacy/api/"},
               "openapi": {"document": ORDERS_30_YAML, "base_path": "/legacy/api"}}
HOOK_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object", "required": ["event", "id"], "additionalProperties": False,
    "properties": {"event": {"enum": ["push", "refund"]}, "id": {"type": "string", "pattern": "^evt_[0-9a-z]{8}$"},
                   "data": {"type": "object"}}}
HOOKS_RULE = {
    "name": "hooks", "match": {"path_prefix": "/hooks/"}, "path_template": "/hooks/{source}",
    "parameters": [
        {"name": "source", "in": "path", "required": True, "schema": {"enum": ["github", "stripe"]}},
        {"name": "x-hook-signature", "in": "header", "required": True,
         "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}},
        {"name": "attempt", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10}}],
    "body_schema": HOOK_SCHEMA, "allowed_content_types": ["application/json", "application/*+json"],
    "max_body_bytes": 2048}
SIGNATURE = {"x-hook-signature": "sha256=" + "ab" * 32}


def main_policy(host: str, version: str = VERSION, **extra: Any) -> dict[str, Any]:
    rules = [orders_rule(host), LEGACY_RULE, HOOKS_RULE]
    if harness.engine(host) == "envoy":  # the YAML text of the same document (too long for nginx.conf)
        rules.append({"name": "yaml", "match": {"path_prefix": "/yaml/api/"},
                      "openapi": {"document": ORDERS_YAML.decode(), "base_path": "/yaml/api"}})
    return {"policy_version": version, "failure_mode": "deny", "rules": rules, "default": {}, **extra}


def host_kwargs(host: str, **kong: Any) -> dict[str, Any]:
    """Gateway settings: Kong's body buffers (KONG_BODY), and time for each worker (or Envoy VM) to
    compile the module (seen: up to 18 s per nginx worker for a 5 MB build at a load average of 4)."""
    return {"ipv6": False, "ready_timeout": 180.0, **({**KONG_BODY, **kong} if host == "kong" else {})}


def wait_document(gw: BaseGateway, generation: int, since: int = 0) -> None:
    """Until every VM has loaded generation `generation` of the fetched document (each worker loads
    the copy one of them fetched; a request on a worker without one gets 503 document_unavailable)."""
    gw.wait_for_log_in_every_vm(rf"gatewarden validate: OpenAPI document generation {generation} loaded for rule 0",
                                timeout=60, since=since)


@pytest.fixture(scope="module")
def gw(start_module_gateway, host: str) -> BaseGateway:
    gateway = start_module_gateway({FILTER: main_policy(host)}, jwks_files={"orders-api.json": ORDERS_JSON},
                                   **host_kwargs(host))
    if host == "kong":
        wait_document(gateway, 1)
    return gateway


def send(gw: BaseGateway, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
         content_type: str | None = "application/json") -> Response:
    h = dict(headers or {})
    if body is not None and content_type is not None:
        h.setdefault("content-type", content_type)
    return gw.get(path, method=method, body=None if body is None else as_bytes(body), headers=h)


def assert_unchanged(r: Response, method: str, path: str, body: Any, headers: Mapping[str, str],
                     decided_on_headers: bool) -> None:
    """The upstream got the request as the client sent it: method, path and query, the body's bytes,
    every header with its value; the hosts' own headers, and the decision header only when the
    request was decided on its headers (a body is read after the headers went on)."""
    assert r.status == 200, (method, path, r.status, r.text)
    seen = r.json()
    sent = as_bytes(body) if body is not None else b""
    assert (seen["method"], seen["path"]) == (method, path), seen
    assert (seen["body_len"], seen["body_sha256"]) == (len(sent), hashlib.sha256(sent).hexdigest()), seen
    up = seen["headers"]
    expected = {k.lower(): v for k, v in headers.items()}
    if body is not None:
        expected["content-length"] = str(len(sent))
    for name, value in expected.items():
        assert up.get(name) == value, (name, value, up)
    extra = set(up) - set(expected) - {"host", "accept-encoding"} - HOST_ADDED[harness.engine(r.host)]
    if decided_on_headers:
        assert extra == {HEADER}, up
        assert up[HEADER].startswith("allow; rule="), up
    else:
        assert extra == set(), up


def assert_fixed(r: Response, status: int, body: bytes) -> None:
    assert r.status == status, (r.status, r.text)
    assert r.headers.get("content-type") == PROBLEM, r.headers
    assert r.is_local_body(body), r.body


def assert_errors(r: Response, status: int, detail: str, errors: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A verbose 400: problem+json listing errors; `errors` are the (pointer, keyword) pairs that must
    be among them. Returns the list."""
    assert r.status == status, (r.status, r.text)
    assert r.headers.get("content-type") == PROBLEM, r.headers
    problem = r.json()
    assert {k: problem.get(k) for k in ("type", "title", "status", "detail")} == {
        "type": "about:blank", "title": "Bad Request", "status": status, "detail": detail}, problem
    listed = problem["errors"]
    assert 1 <= len(listed) <= 10, problem  # max_errors defaults to 10
    for e in listed:
        assert set(e) == {"pointer", "schema", "keyword", "detail"}, e
    got = {(e["pointer"], e["keyword"]) for e in listed}
    for want in errors:
        assert want in got, (want, listed)
    return listed


def body_error(r: Response, *errors: tuple[str, str]) -> list[dict[str, Any]]:
    return assert_errors(r, 400, "the request body does not match the schema", list(errors))


def param_error(r: Response, *errors: tuple[str, str]) -> list[dict[str, Any]]:
    return assert_errors(r, 400, "a request parameter is missing or invalid", list(errors))


def snapshot(gw: BaseGateway) -> dict[str, int]:
    """The filter's counters, the host's response classes and the request body bytes the upstream
    received. Not the upstream's request count: on Envoy a request that waits for its body lets its
    headers go on, and the router starts the upstream request, reset (without a body byte) when the
    filter denies it."""
    out = dict(gw.settled_counters(FILTER))
    out.update(gw.response_classes())
    assert gw.upstream is not None
    out["upstream_body_bytes"] = gw.upstream.body_bytes
    return out


# --------------------------------------------------------------------------------------------
# 1: valid requests reach the upstream unchanged

VALID = [
    # (method, path, body, headers, content type, decided on the headers)
    ("GET", "/api/orders?limit=5&status=paid&tag=gift&tag=express&fields=id,total"
            "&filter%5Bmin_total%5D=10.5&filter%5Bcustomer_id%5D=" + CUSTOMER,
     None, {"x-correlation-id": CORRELATION, "cookie": f"session={SESSION}; theme=dark"}, None, True),
    ("GET", "/api/orders", None, {}, None, True),
    ("GET", "/api/orders/summary?since=2026-12-01T00:00:00Z", None, {}, None, True),
    ("GET", "/api/orders/42", None, {}, None, True),
    ("DELETE", "/api/orders/42", None, {}, None, True),
    ("GET", f"/api/customers/{CUSTOMER}", None, {}, None, True),
    ("POST", "/api/orders", new_order(), {**IDEMPOTENCY, "x-correlation-id": CORRELATION}, "application/json", False),
    ("POST", "/api/orders", new_order(1, coupon="XMAS2026"), IDEMPOTENCY, "application/json; charset=utf-8", False),
    ("PATCH", "/api/orders/42", {"note": "leave at the door"}, {}, "application/merge-patch+json", False),
    # Not JSON, and not parsed: the media type is checked, the bytes are the client's.
    ("POST", "/api/orders/42/attachments", b"%PDF-1.7\n\x00\xff{not json", {}, "application/pdf", False),
    ("PUT", f"/api/customers/{CUSTOMER}", {"email": "ada@example.com", "name": "Ada", "phone": "+441234567890",
                                           "address": {"line1": "2 Side St", "city": "Leeds", "postal_code": "LS1 4AP",
                                                       "country": "GB"}}, {}, "application/json", False),
    ("POST", "/api/customers", {"email": "bob@example.org", "name": "Bob"}, {}, "application/json", False),
    ("POST", "/api/categories", {"name": "root", "children": [{"name": "a", "children": [{"name": "a1", "children": [
        {"name": "a1x"}]}]}, {"name": "b"}]}, {}, "application/json", False),
    ("POST", "/hooks/github?attempt=2", {"event": "push", "id": "evt_0a1b2c3d", "data": {"ref": "main"}},
     SIGNATURE, "application/vnd.github+json", False),
    # Not validated: the default rule.
    ("POST", "/static/upload", b"anything at all", {}, "text/plain", True),
]


@pytest.mark.parametrize("case", range(len(VALID)), ids=[f"{m} {p.split('?')[0]}" for m, p, *_ in VALID])
def test_valid_request_reaches_the_upstream_unchanged(gw: BaseGateway, case: int) -> None:
    method, path, body, headers, ctype, on_headers = VALID[case]
    h = {**headers, **({"content-type": ctype} if ctype else {})}
    before = gw.upstream.count
    r = gw.get(path, method=method, body=None if body is None else as_bytes(body), headers=h)
    assert_unchanged(r, method, path, body, h, on_headers)
    assert gw.upstream.count == before + 1


def test_allowed_requests_are_counted_and_leave_no_decision_line(gw: BaseGateway) -> None:
    before, mark = snapshot(gw), gw.log_mark()
    assert send(gw, "POST", "/api/orders", new_order(), IDEMPOTENCY).status == 200
    assert send(gw, "GET", "/api/orders/7").status == 200
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"allowed": 2, "rq_2xx": 2, "upstream_body_bytes": len(as_bytes(new_order()))}, got
    assert gw.decisions(mark) == []


# --------------------------------------------------------------------------------------------
# 2: each class of invalid request: status, problem body, counter, decision line, no upstream


def test_invalid_json_is_400(gw: BaseGateway) -> None:
    before, mark = snapshot(gw), gw.log_mark()
    for raw in (b'{"customer_id": ', b"\xff\xfe", b'{"a":1} trailing', b"[" * 200 + b"]" * 200):
        assert_fixed(send(gw, "POST", "/api/orders", raw, IDEMPOTENCY), 400, INVALID_JSON)
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"denied": 4, "denied_invalid_json": 4, "rq_4xx": 4}, got
    line = gw.wait_decision(mark, reason="invalid_json")
    assert (line["filter"], line["decision"], line["rule"], line["policy_version"]) == (
        "validate", "deny", "orders", VERSION), line


SCHEMA_VIOLATIONS = [
    # (path, body, content type, [(pointer, keyword)])
    ("/api/orders", new_order(items=0), "application/json", [("/items", "minItems")]),
    ("/api/orders", {**new_order(), "items": [item(0), item(1, quantity=0)]}, "application/json",
     [("/items/1/quantity", "minimum")]),
    ("/api/orders", {**new_order(), "items": [item(0, sku="abc-1")]}, "application/json",
     [("/items/0/sku", "pattern")]),
    ("/api/orders", {**new_order(), "items": [item(0, unit_price=0)]}, "application/json",
     [("/items/0/unit_price", "exclusiveMinimum")]),
    # Mass assignment: fields the client may not set.
    ("/api/orders", {**new_order(), "status": "paid", "total": 0}, "application/json", [("", "additionalProperties")]),
    ("/api/orders", {"items": [item()]}, "application/json", [("", "required")]),
    ("/api/orders", new_order(deliver_after="tomorrow"), "application/json", [("/deliver_after", "format")]),
    ("/api/orders", {**new_order(), "shipping_address": {"line1": "x", "city": "y", "postal_code": "123",
                                                         "country": "usa"}}, "application/json",
     [("/shipping_address/country", "pattern")]),
    ("/api/customers", {"email": "not-an-email", "name": "Eve"}, "application/json", [("/email", "format")]),
    ("/api/customers", {"email": "eve@example.com", "name": "Eve", "credit_limit": 10**6}, "application/json",
     [("", "additionalProperties")]),
    # The recursive schema, three levels down.
    ("/api/categories", {"name": "r", "children": [{"name": "a", "children": [{"name": "", "children": []}]}]},
     "application/json", [("/children/0/children/0/name", "minLength")]),
    ("/api/orders/42", {}, "application/merge-patch+json", [("", "minProperties")]),
    ("/hooks/stripe", {"event": "delete", "id": "evt_0a1b2c3d"}, "application/json", [("/event", "enum")]),
]


@pytest.mark.parametrize("case", range(len(SCHEMA_VIOLATIONS)),
                         ids=[f"{p} {e[0][0] or '/'} {e[0][1]}" for p, _, _, e in SCHEMA_VIOLATIONS])
def test_schema_violation_is_400_naming_the_pointer_and_keyword(gw: BaseGateway, case: int) -> None:
    path, body, ctype, errors = SCHEMA_VIOLATIONS[case]
    method = "PATCH" if ctype.startswith("application/merge-patch") else "POST"
    headers = {**IDEMPOTENCY, **SIGNATURE, "content-type": ctype}
    before, mark = gw.upstream.body_bytes, gw.log_mark()
    listed = body_error(send(gw, method, path, body, headers), *errors)
    assert gw.upstream.body_bytes == before, "no byte of a refused body reaches the upstream"
    line = gw.wait_decision(mark, reason="schema_violation")
    # The first error is in the log (pointer, schema location, keyword), never a client value.
    first = listed[0]
    assert line["detail"] == f"pointer={first['pointer']}; schema={first['schema']}; keyword={first['keyword']}", line


def test_schema_violation_lists_every_error_up_to_the_bound(gw: BaseGateway) -> None:
    """Fifteen bad items: ten errors listed (max_errors' default), each with its own pointer."""
    body = {**new_order(), "items": [item(i, quantity=0) for i in range(15)]}
    listed = body_error(send(gw, "POST", "/api/orders", body, IDEMPOTENCY), ("/items/0/quantity", "minimum"))
    assert len(listed) == 10, listed
    assert len({e["pointer"] for e in listed}) == 10, listed
    for e in listed:
        assert e["schema"].endswith("/minimum") and len(e["detail"]) <= 400, e


def test_client_input_echoed_is_bounded(gw: BaseGateway) -> None:
    """A 100,000-character note over maxLength: the error quotes at most a bounded excerpt."""
    r = send(gw, "POST", "/api/orders", new_order(note="x" * 100_000), IDEMPOTENCY)
    listed = body_error(r, ("/note", "maxLength"))
    assert len(r.body) < 2_000, len(r.body)
    assert all(len(e["detail"]) < 400 for e in listed), listed


PARAMETER_ERRORS = [
    # (method, path, headers, [(pointer, keyword)])
    ("GET", "/api/orders?limit=0", {}, [("/query/limit", "minimum")]),
    ("GET", "/api/orders?limit=101", {}, [("/query/limit", "maximum")]),
    ("GET", "/api/orders?limit=ten", {}, [("/query/limit", "type")]),
    ("GET", "/api/orders?status=lost", {}, [("/query/status", "enum")]),
    ("GET", "/api/orders?tag=Bad%20Tag", {}, [("/query/tag/0", "pattern")]),
    ("GET", "/api/orders?fields=id,password", {}, [("/query/fields/1", "enum")]),
    ("GET", "/api/orders?filter%5Bmin_total%5D=-1", {}, [("/query/filter/min_total", "minimum")]),
    ("GET", "/api/orders?filter%5Bowner%5D=me", {}, [("/query/filter", "additionalProperties")]),
    ("GET", "/api/orders", {"x-correlation-id": "not-a-uuid"}, [("/header/x-correlation-id", "format")]),
    ("GET", "/api/orders", {"cookie": "session=short"}, [("/cookie/session", "pattern")]),
    ("GET", "/api/orders/0", {}, [("/path/orderId", "minimum")]),
    ("GET", "/api/orders/abc", {}, [("/path/orderId", "type")]),
    ("GET", "/api/customers/42", {}, [("/path/customerId", "format")]),
    ("GET", "/api/orders/summary", {}, [("/query/since", "required")]),
    ("POST", "/api/orders", {}, [("/header/idempotency-key", "required")]),
    ("POST", "/hooks/gitlab", SIGNATURE, [("/path/source", "enum")]),
    ("POST", "/hooks/github?attempt=11", SIGNATURE, [("/query/attempt", "maximum")]),
    ("POST", "/hooks/github", {}, [("/header/x-hook-signature", "required")]),
]


@pytest.mark.parametrize("case", range(len(PARAMETER_ERRORS)),
                         ids=[f"{m} {p} {e[0][0]}" for m, p, _, e in PARAMETER_ERRORS])
def test_invalid_parameter_is_400_naming_it(gw: BaseGateway, case: int) -> None:
    method, path, headers, errors = PARAMETER_ERRORS[case]
    body = new_order() if path.startswith("/api") else {"event": "push", "id": "evt_0a1b2c3d"}
    before, mark = gw.upstream.count, gw.log_mark()
    r = send(gw, method, path, body if method == "POST" else None, headers)
    param_error(r, *errors)
    assert gw.upstream.count == before
    gw.wait_decision(mark, reason="invalid_parameter")


def test_missing_body_is_400(gw: BaseGateway) -> None:
    before = snapshot(gw)
    assert_fixed(send(gw, "POST", "/api/orders", None, IDEMPOTENCY), 400, BODY_MISSING)
    assert_fixed(send(gw, "PUT", f"/api/customers/{CUSTOMER}", None), 400, BODY_MISSING)
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"denied": 2, "denied_body_missing": 2, "rq_4xx": 2}, got


def test_unknown_path_is_404_and_unknown_method_405_with_allow(gw: BaseGateway) -> None:
    before, mark = snapshot(gw), gw.log_mark()
    for path in ("/api/invoices", "/api/orders/42/items", "/api/", "/legacy/api/customers", "/hooks/github/extra"):
        assert_fixed(send(gw, "GET", path), 404, NOT_FOUND)
    for method, path, allow in (("PUT", "/api/orders", {"GET", "POST"}),
                                ("POST", "/api/orders/42", {"GET", "PATCH", "DELETE"}),
                                ("DELETE", "/api/customers", {"POST"}),
                                ("GET", "/api/orders/42/attachments", {"POST"})):
        r = send(gw, method, path, None)
        assert_fixed(r, 405, NOT_ALLOWED)
        assert {m.strip() for m in r.headers.get("allow", "").split(",")} == allow, (path, r.headers)
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"denied": 9, "denied_unknown_path": 5, "denied_method_not_allowed": 4, "rq_4xx": 9}, got
    line = gw.wait_decision(mark, reason="method_not_allowed")
    assert (line["rule"], line["policy_version"]) == ("orders", VERSION), line


def test_body_over_max_body_bytes_is_413_by_content_length(gw: BaseGateway) -> None:
    before = snapshot(gw)
    big = as_bytes(new_order(items=10_000))  # over 512 KiB (and over maxItems: never looked at)
    assert len(big) > MAX_BODY, len(big)
    assert_fixed(send(gw, "POST", "/api/orders", big, IDEMPOTENCY), 413, TOO_LARGE)
    assert_fixed(send(gw, "POST", "/hooks/github", {"event": "push", "id": "evt_0a1b2c3d", "data": {"x": "y" * 3000}},
                      SIGNATURE), 413, TOO_LARGE)
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"denied": 2, "denied_body_too_large": 2, "rq_4xx": 2}, got


def test_wrong_or_missing_content_type_is_415(gw: BaseGateway) -> None:
    before = snapshot(gw)
    body = as_bytes(new_order())
    for ctype in ("text/plain", "application/xml", "application/jsonx", None):
        assert_fixed(send(gw, "POST", "/api/orders", body, IDEMPOTENCY, content_type=ctype), 415, UNSUPPORTED)
    assert_fixed(send(gw, "POST", "/api/orders/42/attachments", body), 415, UNSUPPORTED)  # JSON where a PDF goes
    assert_fixed(send(gw, "POST", "/hooks/github", b"event=push", SIGNATURE, "application/x-www-form-urlencoded"),
                 415, UNSUPPORTED)
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"denied": 6, "denied_unsupported_media_type": 6, "rq_4xx": 6}, got


# --------------------------------------------------------------------------------------------
# 3: the 3.0 dialect gives the 3.1 verdicts; the YAML text gives the JSON's (Envoy)

DIALECT = [
    # (body, content type, path suffix, method, the (pointer, keyword) of a 400 or None)
    (new_order(note=None), "application/json", "/orders", "POST", None),
    (new_order(note="ring twice"), "application/json", "/orders", "POST", None),
    (new_order(note=7), "application/json", "/orders", "POST", ("/note", "type")),
    ({**new_order(), "items": [item(0, unit_price=0.01)]}, "application/json", "/orders", "POST", None),
    ({**new_order(), "items": [item(0, unit_price=0)]}, "application/json", "/orders", "POST",
     ("/items/0/unit_price", "exclusiveMinimum")),
    ({**new_order(), "items": [item(0, unit_price=-1)]}, "application/json", "/orders", "POST",
     ("/items/0/unit_price", "exclusiveMinimum")),
    ({"note": None}, "application/merge-patch+json", "/orders/9", "PATCH", None),
    ({"note": False}, "application/merge-patch+json", "/orders/9", "PATCH", ("/note", "type")),
]


def dialect_verdicts(gw: BaseGateway, prefix: str) -> list[tuple[int, str | None]]:
    """(status, the failing pointer) of each DIALECT request; the expected keyword must be listed
    (a translated 3.0 schema may name `minimum` beside `exclusiveMinimum`)."""
    out: list[tuple[int, str | None]] = []
    for body, ctype, suffix, method, want in DIALECT:
        r = send(gw, method, prefix + suffix, trim30(body), {**IDEMPOTENCY, "content-type": ctype})
        if r.status != 400:
            out.append((r.status, None))
            continue
        listed = body_error(r, want) if want else r.json()["errors"]
        assert len({e["pointer"] for e in listed}) == 1, listed
        out.append((400, listed[0]["pointer"]))
    return out


def trim30(body: dict[str, Any]) -> dict[str, Any]:
    """An order without what the 3.0 excerpt leaves out (its NewOrder has no address or date)."""
    return {k: v for k, v in body.items() if k not in ("shipping_address", "deliver_after")}


def test_openapi_30_document_gives_the_verdicts_of_31(gw: BaseGateway) -> None:
    want = [(400, e[0]) if e else (200, None) for *_, e in DIALECT]
    assert dialect_verdicts(gw, "/api") == want
    assert dialect_verdicts(gw, "/legacy/api") == want


@pytest.mark.hosts("envoy")
def test_yaml_text_of_the_document_gives_the_verdicts_of_its_json(gw: BaseGateway) -> None:
    for method, path, body, headers, ctype, _ in VALID[:13]:
        h = {**headers, **({"content-type": ctype} if ctype else {})}
        a = gw.get(path, method=method, body=None if body is None else as_bytes(body), headers=h)
        b = gw.get(path.replace("/api/", "/yaml/api/", 1), method=method,
                   body=None if body is None else as_bytes(body), headers=h)
        assert (a.status, b.status) == (200, 200), (path, a.text, b.text)
    for method, path, headers, errors in PARAMETER_ERRORS[:15]:
        body = new_order() if method == "POST" else None
        b = send(gw, method, path.replace("/api/", "/yaml/api/", 1), body, headers)
        param_error(b, *errors)


# --------------------------------------------------------------------------------------------
# 4: big and streamed bodies

FIVE_MB = 5 * 1024 * 1024


def open_request(gw: BaseGateway, head: str) -> socket.socket:
    sock = socket.create_connection((gw.host_address, gw.port), timeout=10)
    sock.sendall(head.encode())
    return sock


def read_response(gw: BaseGateway, sock: socket.socket, timeout: float = 10.0) -> Response:
    """The response on `sock` (waits up to `timeout` s for it: the test's bound, not a measurement)."""
    sock.settimeout(timeout)
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        body = resp.read()
    finally:
        resp.close()
        gw._count_requests(1)
    return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, gw.host)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_5mb_body_is_refused_while_most_of_it_is_not_sent(gw: BaseGateway, report) -> None:
    """The client announces 5 MB, sends 64 KiB and holds the rest back: the 413 arrives anyway, so
    the gateway decided without the body (if it buffered the whole body first, it would wait for
    bytes that never come and the read would time out). The upstream sees nothing."""
    before = snapshot(gw)
    head = (f"POST /api/orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
            f"idempotency-key: {IDEMPOTENCY['idempotency-key']}\r\ncontent-length: {FIVE_MB}\r\n\r\n")
    sock = open_request(gw, head)
    try:
        sent = 64 * 1024
        sock.sendall(b"[" + b" " * (sent - 1))
        r = read_response(gw, sock)
    finally:
        sock.close()
    assert_fixed(r, 413, TOO_LARGE)
    report(f"validate on {gw.host}: 413 for a 5 MiB content-length after {sent} bytes of the body were sent")
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"denied": 1, "denied_body_too_large": 1, "rq_4xx": 1}, got


def test_chunked_body_of_5mb_stops_at_the_limit(gw: BaseGateway, host: str, report) -> None:
    """A chunked body (no content-length): Envoy reads it up to max_body_bytes and answers 413 once
    it grows past, while the client holds back the rest of its 5 MB; Kong's engine hands no chunked
    body to a filter, so the request is refused at once by failure_mode (503 body_unavailable)."""
    before = snapshot(gw)
    head = (f"POST /api/orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
            f"idempotency-key: {IDEMPOTENCY['idempotency-key']}\r\ntransfer-encoding: chunked\r\n\r\n")
    sock = open_request(gw, head)
    sent = 0
    try:
        if harness.engine(host) == "envoy":
            piece = b" " * (64 * 1024)
            # Past the limit by one chunk, far from 5 MB; no more once the answer is there (Envoy
            # closes the connection after it).
            while sent <= MAX_BODY and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk(piece))
                sent += len(piece)
        r = read_response(gw, sock)
    finally:
        sock.close()
    report(f"validate on {host}: a chunked 5 MiB body answered {r.status} after {sent} bytes were sent")
    got = harness.counter_changes(before, snapshot(gw))
    if harness.engine(host) == "envoy":
        assert_fixed(r, 413, TOO_LARGE)
        assert got == {"denied": 1, "denied_body_too_large": 1, "body_too_large": 1, "rq_4xx": 1}, got
    else:
        assert_fixed(r, 503, BODY_UNAVAILABLE)
        assert got == {"denied": 1, "denied_body_unavailable": 1, "body_unavailable": 1, "rq_5xx": 1}, got


@pytest.mark.hosts("envoy")
@pytest.mark.wasm_only("Proxy-Wasm lets the headers of a request that waits for its body go on; the native module "
                       "holds them until the body is decided (test_the_native_module_holds_the_request_until_its_body_is_decided)")
def test_an_upstream_answer_before_the_body_goes_on_and_the_body_never_does(gw: BaseGateway) -> None:
    """Envoy sends the headers of a request that waits for its body on to the upstream; one that
    answers on the headers alone (here a 401) has its answer passed to the client, counted
    `answered_before_body`, and not one byte of the held body reaches it (the client has sent a
    part and holds the rest)."""
    before = snapshot(gw)
    head = (f"POST /api/orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
            f"idempotency-key: {IDEMPOTENCY['idempotency-key']}\r\nx-echo-answer-early: 401\r\n"
            f"content-length: 4096\r\n\r\n")
    sock = open_request(gw, head)
    try:
        sock.sendall(b'{"customer_id": ')
        r = read_response(gw, sock)
    finally:
        sock.close()
    assert (r.status, r.body) == (401, b"answered before the body\n"), (r.status, r.body)
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"answered_before_body": 1, "rq_4xx": 1}, got


@pytest.mark.hosts("envoy-native")
def test_the_native_module_holds_the_request_until_its_body_is_decided(gw: BaseGateway) -> None:
    """The native module holds the request headers while it waits for the body (Proxy-Wasm cannot:
    its headers go on first): the upstream sees nothing of a request whose body has not been
    decided. Here an upstream that answers on the headers alone (401) sees the request only once
    the whole body came and validated; the filter counts it allowed, not answered before its body."""
    before = snapshot(gw)
    requests_before = gw.upstream.count
    body = as_bytes(new_order())
    head = (f"POST /api/orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
            f"idempotency-key: {IDEMPOTENCY['idempotency-key']}\r\nx-echo-answer-early: 401\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    sock = open_request(gw, head)
    try:
        sock.sendall(body[:16])
        harness.hold("the upstream sees nothing while the body is held",
                     lambda: gw.upstream.count == requests_before, seconds=1.0)
        sock.sendall(body[16:])
        r = read_response(gw, sock)
    finally:
        sock.close()
    assert (r.status, r.body) == (401, b"answered before the body\n"), (r.status, r.body)
    assert gw.upstream.count == requests_before + 1
    got = harness.counter_changes(before, snapshot(gw))
    assert got.get("allowed") == 1, got
    assert "answered_before_body" not in got and not any(k.startswith("denied") for k in got), got


@pytest.mark.hosts("envoy")
def test_envoys_own_413_past_its_buffer_limit_goes_on(start_gateway) -> None:
    """A rule that reads bodies larger than the listener's per_connection_buffer_limit_bytes (1 MiB
    by default): Envoy answers 413 itself when the body it buffers for the filter passes the limit.
    That local reply refuses the request as the filter would have, so it reaches the client (not a
    503), counted as `body_too_large`; nothing reaches the upstream."""
    rule = {**HOOKS_RULE, "max_body_bytes": 4 * 1024 * 1024}
    gw = start_gateway({FILTER: {"policy_version": "limit-1", "rules": [rule], "default": {}}}, **host_kwargs("envoy"))
    before = snapshot(gw)
    big = as_bytes({"event": "push", "id": "evt_0a1b2c3d", "data": {"x": "y" * (1536 * 1024)}})
    r = send(gw, "POST", "/hooks/github", big, SIGNATURE)
    assert r.status == 413, (r.status, r.text)
    got = harness.counter_changes(before, snapshot(gw))
    assert got.get("body_too_large") == 1 and got.get("upstream_body_bytes", 0) == 0, got
    assert not any(k.startswith("denied") for k in got), got


@pytest.mark.hosts("envoy")
def test_chunked_bodies_are_read_whole_on_envoy(gw: BaseGateway) -> None:
    data = as_bytes(new_order(items=300))
    pieces = [data[i:i + 997] for i in range(0, len(data), 997)]

    def post_chunked(body_pieces: list[bytes]) -> Response:
        head = (f"POST /api/orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n"
                f"idempotency-key: {IDEMPOTENCY['idempotency-key']}\r\ntransfer-encoding: chunked\r\n\r\n")
        sock = open_request(gw, head)
        try:
            for p in body_pieces:
                sock.sendall(chunk(p))
            sock.sendall(b"0\r\n\r\n")
            return read_response(gw, sock)
        finally:
            sock.close()

    r = post_chunked(pieces)
    assert r.status == 200, r.text
    seen = r.json()
    assert (seen["body_len"], seen["body_sha256"]) == (len(data), hashlib.sha256(data).hexdigest()), seen
    bad = as_bytes({**new_order(), "items": [item(0), item(1, quantity=0)]})
    body_error(post_chunked([bad[:10], bad[10:]]), ("/items/1/quantity", "minimum"))
    assert_fixed(post_chunked([]), 400, BODY_MISSING)


def test_body_over_nginx_buffer_is_unavailable_on_kong_and_read_on_envoy(start_gateway, host: str) -> None:
    """nginx's default client_body_buffer_size (16k): a 100 KB body is spilled to a temp file the
    filter cannot read, and failure_mode deny refuses it (503 body_unavailable); Envoy reads it."""
    policy = {"policy_version": "spill-1", "rules": [LEGACY_RULE], "default": {}}
    gw = start_gateway({FILTER: policy}, ipv6=False, ready_timeout=180.0)  # nginx default buffers
    body = trim30(new_order(items=2000))
    assert 100_000 < len(as_bytes(body)) < MAX_BODY
    r = send(gw, "POST", "/legacy/api/orders", body, IDEMPOTENCY)
    if harness.engine(host) == "envoy":
        assert_unchanged(r, "POST", "/legacy/api/orders", body, {**IDEMPOTENCY, "content-type": "application/json"},
                         decided_on_headers=False)
    else:
        assert_fixed(r, 503, BODY_UNAVAILABLE)
        assert gw.settled_counters(FILTER)["denied_body_unavailable"] == 1
    # A small body fits the buffer on both.
    assert send(gw, "POST", "/legacy/api/orders", trim30(new_order()), IDEMPOTENCY).status == 200


# --------------------------------------------------------------------------------------------
# 5: dry run


def test_dry_run_lets_invalid_requests_through_and_counts_them(start_gateway, host: str) -> None:
    policy = {"policy_version": "dry-1", "mode": "dry_run", "rules": [LEGACY_RULE, HOOKS_RULE], "default": {}}
    gw = start_gateway({FILTER: policy}, **host_kwargs(host))
    before, mark = snapshot(gw), gw.log_mark()
    bad = {"customer_id": CUSTOMER, "items": [item(0, quantity=0)]}
    r = send(gw, "POST", "/legacy/api/orders", bad, IDEMPOTENCY)
    assert_unchanged(r, "POST", "/legacy/api/orders", bad, {**IDEMPOTENCY, "content-type": "application/json"}, False)
    r = send(gw, "GET", "/legacy/api/nothing")
    assert r.status == 200 and r.upstream_headers[HEADER] == (
        "dry_run_deny; reason=unknown_path; rule=legacy; version=dry-1"), r.text
    r = send(gw, "POST", "/hooks/github", b"{not json", SIGNATURE)
    assert r.status == 200 and r.json()["body_len"] == 9, r.text
    got = harness.counter_changes(before, snapshot(gw))
    assert got == {"dry_run_denied": 3, "dry_run_denied_schema_violation": 1, "dry_run_denied_unknown_path": 1,
                   "dry_run_denied_invalid_json": 1, "rq_2xx": 3, "upstream_body_bytes": len(as_bytes(bad)) + 9}, got
    line = gw.wait_decision(mark, reason="schema_violation")
    assert (line["decision"], line["rule"], line["policy_version"]) == ("dry_run_deny", "legacy", "dry-1"), line
    assert line["detail"].startswith("pointer=/items/0/quantity;"), line


# --------------------------------------------------------------------------------------------
# 6: live updates under load; refused updates


def with_operation_changes(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with a new operation (GET /returns/{returnId}) and without DELETE /orders/{orderId}."""
    new = json.loads(json.dumps(doc))
    new["info"]["version"] = "1.5.0"
    new["paths"]["/orders/{orderId}"].pop("delete")
    new["paths"]["/returns/{returnId}"] = {"get": {
        "operationId": "getReturn",
        "parameters": [{"name": "returnId", "in": "path", "required": True, "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "The return."}}}}
    return new


SMALL_V1 = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "paths": {"/orders/{orderId}": {"parameters": [{"name": "orderId", "in": "path", "required": True,
                                                            "schema": {"type": "integer", "minimum": 1}}],
                                            "get": {"responses": {"200": {"description": "ok"}}},
                                            "delete": {"responses": {"204": {"description": "ok"}}}}}}


def small_policy(version: str, doc: Any) -> dict[str, Any]:
    return {"policy_version": version, "rules": [{"name": "orders", "match": {"path_prefix": "/api/"},
                                                  "openapi": {"document": doc, "base_path": "/api"}}], "default": {}}


def run_update_under_load(gw: BaseGateway, update, report, what: str) -> None:
    """A valid GET under load while `update()` runs (it returns once every VM has the new
    document): the new operation appears, the removed one goes, and no request of the load fails.
    The client waits up to 120 s for an answer: on Kong a reload's new workers compile the module
    before they answer (9-18 s seen on a loaded machine), so requests wait meanwhile; the longest
    wait is reported."""
    assert gw.get("/api/returns/5").status == 404
    assert gw.get("/api/orders/7", method="DELETE").status == 200
    load = harness.LoadGenerator(gw.host_address, gw.port, "/api/orders/7", duration=110, threads=4, timeout=120.0,
                                 on_start=gw._load_started, on_done=gw._load_done)
    with load:
        update()
        load.stop()
    result = load.result
    report(f"validate on {gw.host}, {what}: {result}")
    assert result.requests > 0 and result.failures == 0, str(result)
    r = gw.get("/api/orders/7", method="DELETE")
    assert r.status == 405 and r.is_local_body(NOT_ALLOWED), (r.status, r.text)


def test_policy_push_changes_the_operations_under_load(start_gateway, host: str, report) -> None:
    """Envoy: ECDS; Kong: a reload (new workers, the old ones finish their requests)."""
    gw = start_gateway({FILTER: small_policy("push-1", SMALL_V1)}, **host_kwargs(host))
    v2 = with_operation_changes(SMALL_V1)

    def push() -> None:  # returns once every VM has the new policy (Envoy: ECDS success; Kong: new workers)
        assert gw.push_policy(FILTER, small_policy("push-2", v2), timeout=PUSH_TIMEOUT) == "success"

    run_update_under_load(gw, push, report, "policy push")
    r = gw.get("/api/orders/7")
    assert r.upstream_headers[HEADER] == "allow; rule=orders; version=push-2", r.text


def test_document_source_update_changes_the_operations_under_load(start_gateway, host: str, report) -> None:
    """The document is fetched (`openapi.source`, refreshed every 10 s): a new copy on the server is
    taken by every worker without a push or a reload."""
    source = document_source("/orders-api.json", refresh_seconds=10)
    policy = {"policy_version": "src-1", "rules": [{"name": "orders", "match": {"path_prefix": "/api/"},
                                                    "openapi": {"source": source}}], "default": {}}
    gw = start_gateway({FILTER: policy}, jwks_files={"orders-api.json": ORDERS_JSON}, **host_kwargs(host))
    wait_document(gw, 1)
    v2 = json.dumps(with_operation_changes(ORDERS)).encode()

    def update() -> None:
        mark = gw.log_mark()
        gw.jwks.put("orders-api.json", v2)
        wait_document(gw, 2, since=mark)

    run_update_under_load(gw, update, report, "document source refresh")


def test_refused_document_from_the_source_keeps_the_last_good_one(start_gateway, host: str) -> None:
    source = document_source("/orders-api.yaml", refresh_seconds=10)
    policy = {"policy_version": "src-2", "rules": [{"name": "orders", "match": {"path_prefix": "/api/"},
                                                    "openapi": {"source": source}}], "default": {}}
    gw = start_gateway({FILTER: policy}, jwks_files={"orders-api.yaml": ORDERS_YAML}, **host_kwargs(host))
    wait_document(gw, 1)
    mark = gw.log_mark()
    bad = ORDERS_YAML.replace(b"type: integer, minimum: 1 }", b"type: integr, minimum: 1 }", 1)
    assert bad != ORDERS_YAML
    gw.jwks.put("orders-api.yaml", bad)
    # The worker that fetches compiles the copy before publishing it: refused there, at the path
    # inside the document, quoting the bad value; never published, so no VM loads it.
    gw.wait_for_log(r"gatewarden validate: fetching openapi from \S+ failed: invalid content: "
                    r"rules\[0\]\.openapi\.source\.components\.parameters\.OrderId\.schema\.type: .*\"integr\"",
                    since=mark, timeout=60)
    assert "generation 2 loaded" not in gw.log(mark)
    # The last good document decides: the old operations, the old parameter schema.
    assert gw.get("/api/orders/7").status == 200
    param_error(gw.get("/api/orders/0"), ("/path/orderId", "minimum"))


@pytest.mark.hosts("envoy")  # Kong has no "keep the last good policy": the next test
def test_refused_policy_update_keeps_the_last_good_policy(gw: BaseGateway) -> None:
    bad_doc = with_operation_changes(ORDERS)
    bad_doc["components"]["schemas"]["OrderItem"]["properties"]["quantity"]["minimum"] = "one"
    bad = main_policy("envoy", version="orders-bad")
    bad["rules"][0]["openapi"]["document"] = bad_doc
    rejected, mark = gw.counter(FILTER, "config_rejected"), gw.log_mark()
    assert gw.push_policy(FILTER, bad, timeout=PUSH_TIMEOUT) == "rejected"
    gw.wait_for_log(rf"\[error\]\[{gw.log_component}\].*gatewarden validate: policy refused: rules\[0\]\.openapi.*OrderItem",
                    since=mark)
    assert gw.counter(FILTER, "config_rejected") > rejected
    # The last good policy decides: no new operation, the old ones as before.
    assert_fixed(send(gw, "GET", "/api/returns/5"), 404, NOT_FOUND)
    r = send(gw, "GET", "/api/orders/7")
    assert r.status == 200 and r.upstream_headers[HEADER] == f"allow; rule=orders; version={VERSION}", r.text
    body_error(send(gw, "POST", "/api/orders", {**new_order(), "items": [item(0, quantity=0)]}, IDEMPOTENCY),
               ("/items/0/quantity", "minimum"))


@pytest.mark.hosts("kong")
def test_refused_policy_fails_the_filters_routes_closed_on_kong(start_gateway) -> None:
    routes = {"/api/": [FILTER], "/": []}
    gw = start_gateway({FILTER: small_policy("k-1", SMALL_V1)}, routes=routes, **host_kwargs("kong"))
    assert gw.get("/api/orders/7").status == 200
    bad_doc = json.loads(json.dumps(SMALL_V1))
    bad_doc["openapi"] = "2.0"
    mark = gw.log_mark()
    assert gw.push_policy(FILTER, small_policy("k-bad", bad_doc), timeout=PUSH_TIMEOUT) == "refused"
    gw.wait_for_log_in_every_vm(r"gatewarden validate: policy refused: rules\[0\]\.openapi.*2\.0", since=mark)
    r = gw.get("/api/orders/7")
    assert r.status == 503 and r.is_local_body(UNAVAILABLE), (r.status, r.body)
    r = gw.get("/open")  # a route without the filter
    assert r.status == 200 and HEADER not in (r.upstream_headers or {}), r.text
    assert gw.push_policy(FILTER, small_policy("k-2", SMALL_V1), timeout=PUSH_TIMEOUT) == "success"
    r = gw.get("/api/orders/7")
    assert r.status == 200 and r.upstream_headers[HEADER] == "allow; rule=orders; version=k-2", r.text


def test_policy_text_fits_where_it_must() -> None:
    """Kong's policies go into nginx.conf, whose arguments are at most 4 KB: the main policy there
    (the 3.1 document by source, the 3.0 excerpt inline) must fit, or every Kong case would fail at
    start with a less clear message."""
    import nginxconf

    text = json.dumps(main_policy("kong"), separators=(",", ":"))
    assert len(nginxconf.quote(text).encode()) <= nginxconf.MAX_ARGUMENT
