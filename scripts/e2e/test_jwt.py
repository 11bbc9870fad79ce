"""End-to-end tests of the JWT filter (filters/jwt) in a real Envoy and in Kong's engine.

Keys and tokens are made here (scripts/jwtkit.py signs with Python's `cryptography`, independent of
the filter's verifier): RS256 and ES256 keys served as a remote JWKS by the harness's JWKS server
(Envoy: behind the bootstrap's `gatewarden_jwks` cluster; Kong: 127.0.0.1:<port>), and an HS256 key
given inline (`local_jwks`).

Each test checks statuses, bodies and `WWW-Authenticate`, the headers the upstream received
(claims, payload, decision header; the token removed), the filter's counters
(gatewarden_jwt_*) and decision log lines, and how often the JWKS server was asked. Each host runs
two workers (Envoy --concurrency 2: one VM per worker plus the main thread's; nginx: two worker
processes, one VM each), and one JWKS fetch (through shared data) serves them all.

Gateways: the read-only scenarios share a module-scoped gateway per host; tests that rotate keys,
break the JWKS server or push policies start their own.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import pytest


import harness
from harness import BaseGateway, Response
from jwtkit import SigningKey, b64url, jwks_bytes, payload_of, tamper_signature

FILTER = "jwt"
HEADER = "x-gatewarden-jwt"
UNAUTHORIZED = b'{"error":"unauthorized","message":"authentication required"}'
FORBIDDEN = b'{"error":"forbidden","message":"access denied by policy"}'
UNAVAILABLE = b'{"error":"unavailable","message":"policy unavailable"}'
REALM = "api"
MISSING_CHALLENGE = f'Bearer realm="{REALM}"'
INVALID_CHALLENGE = f'Bearer realm="{REALM}", error="invalid_token"'
SCOPE_CHALLENGE = f'Bearer realm="{REALM}", error="insufficient_scope"'

ISS, ISS_HS, ISS_PARTNER = "https://idp.test", "https://hs.test", "https://partner.test"
IDP_PATH, PARTNER_PATH = "/idp.json", "/partner.json"
def stripped(gw: BaseGateway, upstream: dict, name: str) -> bool:
    """Whether the filter stripped header `name`: gone on Envoy; on Kong, where nginx's proxy_pass
    still sends a header the module removed, present with an empty value (the glue empties it
    first; README "Kong differences")."""
    return name not in upstream if gw.engine == "envoy" else upstream.get(name, "") == ""
# Three ticks of a filter whose key set is loading (shared_fetch TICK_LOADING, 200 ms): long enough
# for a second fetch, by a worker that missed the first one, to have started.
THREE_TICKS = 0.6

RS = SigningKey.generate("RS256", "rsa-1")
EC = SigningKey.generate("ES256", "ec-1")
EC_NEW = SigningKey.generate("ES256", "ec-2")   # rotated in by the issuer
HS = SigningKey.generate("HS256", "hs-1")       # inline key of a second provider
PARTNER = SigningKey.generate("ES256", "partner-1")
IMPOSTOR = SigningKey.generate("RS256", "rsa-1")  # same kid as RS, another key


def claims(iss: str = ISS, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "aud": "api", "sub": "user-1", "iat": now, "exp": now + 600,
            "org": {"tenant": "acme"}, "roles": ["reader"], "scope": "read", **overrides}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def remote(path: str, **overrides: Any) -> dict[str, Any]:
    return {"cluster": harness.upstream("jwks"), "path": path, **overrides}


def idp(**remote_overrides: Any) -> dict[str, Any]:
    return {"issuer": ISS, "audiences": ["api"], "remote_jwks": remote(IDP_PATH, **remote_overrides),
            "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [{"claim": "sub", "header": "x-user"},
                                 {"claim": "org.tenant", "header": "x-tenant"},
                                 {"claim": "roles", "header": "x-roles"}]}


HS_PROVIDER = {"issuer": ISS_HS, "local_jwks": {"keys": [HS.public_jwk()]},
               "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
               "from_params": ["hs_token"], "from_cookies": ["hs_session"],
               "claim_to_headers": [{"claim": "sub", "header": "x-user"}]}
PARTNER_PROVIDER = {"issuer": ISS_PARTNER, "remote_jwks": remote(PARTNER_PATH),
                    "claim_to_headers": [{"claim": "sub", "header": "x-user"}]}


def policy(version: str, providers: dict[str, Any], requires: Any, failure_mode: str = "deny") -> dict[str, Any]:
    return {
        "policy_version": version,
        "failure_mode": failure_mode,
        "realm": REALM,
        "providers": providers,
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "requires": {"provider": "idp"},
             "scopes": ["admin"]},
            {"name": "tenant", "match": {"path_prefix": "/tenants"}, "requires": {"provider": "idp"},
             "claims": [{"name": "org.tenant", "equals_header": "x-tenant-id"}]},
        ],
        "default": {"requires": requires},
    }


# --------------------------------------------------------------------------------------------
# Helpers


def snapshot(gw: BaseGateway) -> dict[str, int]:
    return harness.counter_snapshot(gw, FILTER)


changes = harness.counter_changes


def counter(gw: BaseGateway, name: str) -> int:
    return gw.counter(FILTER, name)


def jwks_target(gw: BaseGateway) -> str:
    """The fetch target as the filter logs it (Envoy: the cluster; Kong: host:port)."""
    return re.escape(gw.upstream_ref("jwks"))


def assert_unauthorized(r: Response, challenge: str) -> None:
    assert r.status == 401, (r.status, r.text)
    assert r.is_local_body(UNAUTHORIZED), r.body
    assert r.headers.get("content-type") == "application/json", r.headers
    assert r.headers.get("www-authenticate") == challenge, r.headers


def assert_forbidden(r: Response, challenge: str | None) -> None:
    assert r.status == 403, (r.status, r.text)
    assert r.is_local_body(FORBIDDEN), r.body
    assert r.headers.get("www-authenticate") == challenge, r.headers


def assert_allowed(r: Response, rule: str, version: str) -> dict[str, str]:
    assert r.status == 200, (r.status, r.text, r.headers)
    upstream = r.upstream_headers
    assert upstream is not None, r.text
    assert upstream.get(HEADER) == f"allow; rule={rule}; version={version}", upstream
    return upstream


def wait_jwks_loaded(gw: BaseGateway, loads: int, timeout: float = 15.0) -> None:
    gw.wait_for_counter(FILTER, "jwks_loaded", loads, timeout)


# --------------------------------------------------------------------------------------------
# Valid and invalid tokens, requirements, CORS: one Envoy, keys fetched once

MAIN = policy("jwt-1", {"idp": idp(), "hs": HS_PROVIDER}, {"requires_any": [{"provider": "idp"}, {"provider": "hs"}]})
# One trusted proxy in front: the decision log's client is the last x-forwarded-for entry (the peer
# when there is none, as in most tests here).
MAIN["client_address"] = {"xff_num_trusted_hops": 1}
# Envoy's provider_and_audiences: idp's token, with another audience, on /billing only.
MAIN["rules"].insert(0, {"name": "billing", "match": {"path_prefix": "/billing"},
                         "requires": {"provider_and_audiences": {"provider": "idp", "audiences": ["billing"]}}})


@pytest.fixture(scope="module")
def gw(start_module_gateway) -> BaseGateway:
    gateway = start_module_gateway({FILTER: MAIN}, jwks_files={IDP_PATH.lstrip("/"): jwks_bytes([RS, EC])},
                                   concurrency=2)
    wait_jwks_loaded(gateway, gateway.vms)
    return gateway


def test_valid_tokens_pass_with_claims_forwarded(gw: BaseGateway):
    before = snapshot(gw)
    forged = {"x-user": "admin", "x-tenant": "evil", "x-jwt-payload": "e30", HEADER: "allow; forged"}
    for key in (RS, EC):
        token = key.sign(claims())
        upstream = assert_allowed(gw.get("/orders", headers={**bearer(token), **forged}), "default", "jwt-1")
        assert upstream["x-user"] == "user-1", (key.alg, upstream)
        assert upstream["x-tenant"] == "acme"  # nested claim by path
        assert upstream["x-roles"] == b64url(b'["reader"]')  # arrays as base64url JSON
        assert upstream["x-jwt-payload"] == payload_of(token)
        assert stripped(gw, upstream, "authorization"), ("the token is not forwarded by default", upstream)
        assert "forged" not in json.dumps(upstream) and "evil" not in json.dumps(upstream)
        assert token not in gw.log(), "a token is never logged"
    # HS256 with the inline key of the second provider: only its own claim header is set.
    upstream = assert_allowed(gw.get("/orders", headers={**bearer(HS.sign(claims(ISS_HS, sub="svc-7"))), **forged}),
                              "default", "jwt-1")
    assert upstream["x-user"] == "svc-7"
    assert stripped(gw, upstream, "x-tenant") and stripped(gw, upstream, "x-jwt-payload"), upstream
    assert changes(before, snapshot(gw)) == {"allowed": 3, "rq_2xx": 3, "upstream_requests": 3}


def test_a_claim_header_sent_twice_is_replaced_or_refused(gw: BaseGateway):
    """The client sends x-user, a header the filter sets from a claim, twice. Envoy replaces every
    copy. ngx_wasm_module replaces the first and proxy_pass would still forward the other, so there
    the glue fails the request closed (503, host_error) rather than let a forged copy through."""
    token = RS.sign(claims())
    headers = [("authorization", f"Bearer {token}"), ("x-user", "admin"), ("x-user", "root")]
    before, mark = snapshot(gw), gw.log_mark()
    r = gw.get("/orders", headers=headers)
    if gw.engine == "envoy":
        upstream = assert_allowed(r, "default", "jwt-1")
        assert upstream["x-user"] == "user-1", upstream
        assert changes(before, snapshot(gw)) == {"allowed": 1, "rq_2xx": 1, "upstream_requests": 1}
    else:
        assert r.status == 503 and r.is_local_body(UNAVAILABLE), (r.status, r.body)
        assert changes(before, snapshot(gw)) == {"host_error": 1, "rq_5xx": 1}
        gw.wait_for_log(r'\[error\] .*gatewarden jwt: request denied: header "x-user" was sent more than once',
                        since=mark)


def test_missing_token_is_401_without_error(gw: BaseGateway):
    before, mark = snapshot(gw), gw.log_mark()
    assert_unauthorized(gw.get("/orders", source="127.0.0.3"), MISSING_CHALLENGE)
    # A prefix other than Bearer is no token either.
    assert_unauthorized(gw.get("/orders", headers={"authorization": "Basic dXNlcjpwYXNz"}), MISSING_CHALLENGE)
    assert changes(before, snapshot(gw)) == {"denied": 2, "denied_missing": 2, "rq_4xx": 2}
    line = gw.wait_decision(mark, client="127.0.0.3")
    assert {k: line[k] for k in ("filter", "decision", "reason", "rule", "policy_version")} == {
        "filter": "jwt", "decision": "deny", "reason": "missing", "rule": "default", "policy_version": "jwt-1"}
    if gw.engine == "envoy":  # Envoy gives every request an x-request-id; plain nginx sets none
        assert re.fullmatch(r"[0-9a-f-]{36}", line["request_id"]), line
    else:
        assert line["request_id"] == "", line


def test_invalid_tokens_are_401_invalid_token(gw: BaseGateway):
    before, mark = snapshot(gw), gw.log_mark()
    now = int(time.time())
    cases = [
        (tamper_signature(RS.sign(claims())), "bad_signature"),
        (tamper_signature(EC.sign(claims())), "bad_signature"),
        (IMPOSTOR.sign(claims()), "bad_signature"),  # the right kid, another key
        (EC.sign(claims(iat=now - 7200, exp=now - 3600)), "expired"),
        (RS.sign(claims(nbf=now + 3600)), "not_yet_valid"),
        ("not.a.jwt", "malformed"),
    ]
    for i, (token, reason) in enumerate(cases):
        source = f"127.0.2.{i + 1}"
        assert_unauthorized(gw.get("/orders", headers=bearer(token), source=source), INVALID_CHALLENGE)
        assert gw.wait_decision(mark, client=source)["reason"] == reason, (i, reason)
    # A valid token for another audience is authenticated but not authorized: 403, no challenge.
    assert_forbidden(gw.get("/orders", headers=bearer(RS.sign(claims(aud="billing")))), None)
    got = changes(before, snapshot(gw))
    assert got == {"denied": 7, "denied_bad_signature": 3, "denied_expired": 1, "denied_not_yet_valid": 1,
                   "denied_malformed": 1, "denied_audience": 1, "rq_4xx": 7}, got


def test_header_values_that_are_not_utf8_are_decided_on(gw: BaseGateway):
    """Header bytes that are not UTF-8 (HTTP allows obs-text, 0x80-0xFF) in headers the policy
    reads: a token with such a byte is refused as malformed, and such a byte in another header the
    policy reads (x-forwarded-for: the client for the log) changes nothing for a valid token. The
    native module lends the headers it reads from Envoy's map as UTF-8; on such a byte it reads
    them copied instead (invalid bytes replaced), as the .wasm host does."""
    token = RS.sign(claims())
    # A list of pairs goes out as given (bytes as they are).
    r = gw.get("/orders", headers=[("authorization", b"Bearer abc\xff.def.ghi"), ("x-forwarded-for", "203.0.113.9")])
    assert r.status == 401, (r.status, r.body)
    r = gw.get("/orders", headers=[("authorization", f"Bearer {token}"), ("x-forwarded-for", b"203.0.113.9\xff")])
    assert r.status == 200, (r.status, r.body)
    # The gateway goes on serving.
    assert_allowed(gw.get("/orders", headers=bearer(token)), "default", "jwt-1")


def test_scope_and_claim_requirements_are_403(gw: BaseGateway):
    before, mark = snapshot(gw), gw.log_mark()
    reader = RS.sign(claims())
    admin = EC.sign(claims(scope="read admin"))
    assert_forbidden(gw.get("/admin/users", headers=bearer(reader), source="127.0.3.1"), SCOPE_CHALLENGE)
    assert_allowed(gw.get("/admin/users", headers=bearer(admin)), "admin", "jwt-1")
    # The tenant header must equal the token's org.tenant claim.
    assert_allowed(gw.get("/tenants/acme", headers={**bearer(reader), "x-tenant-id": "acme"}), "tenant", "jwt-1")
    assert_forbidden(gw.get("/tenants/other", headers={**bearer(reader), "x-tenant-id": "other"},
                            source="127.0.3.2"), None)
    assert_forbidden(gw.get("/tenants/acme", headers=bearer(reader), source="127.0.3.3"), None)
    # /admin needs the idp provider: a valid token of the other provider is not enough.
    assert_unauthorized(gw.get("/admin/users", headers=bearer(HS.sign(claims(ISS_HS, scope="admin")))),
                        INVALID_CHALLENGE)
    assert changes(before, snapshot(gw)) == {
        "allowed": 2, "denied": 4, "denied_scope": 1, "denied_claim": 2, "denied_issuer": 1,
        "rq_2xx": 2, "rq_4xx": 4, "upstream_requests": 2}
    assert gw.wait_decision(mark, client="127.0.3.1")["rule"] == "admin"
    assert gw.wait_decision(mark, client="127.0.3.2")["reason"] == "claim"


def test_provider_and_audiences_replaces_the_audiences_on_its_route(gw: BaseGateway):
    """A billing-audience idp token passes /billing (verified with idp's remote keys) and not the
    default route, where idp keeps its own audiences; an api-audience token the other way round."""
    before = snapshot(gw)
    billing, api = EC.sign(claims(aud=["billing"])), RS.sign(claims())
    upstream = assert_allowed(gw.get("/billing/invoices", headers=bearer(billing)), "billing", "jwt-1")
    assert upstream["x-user"] == "user-1" and stripped(gw, upstream, "authorization"), upstream
    assert_forbidden(gw.get("/billing/invoices", headers=bearer(api)), None)
    assert_forbidden(gw.get("/orders", headers=bearer(billing)), None)
    assert_allowed(gw.get("/orders", headers=bearer(api)), "default", "jwt-1")
    got = changes(before, snapshot(gw))
    assert got == {"allowed": 2, "denied": 2, "denied_audience": 2, "rq_2xx": 2, "rq_4xx": 2,
                   "upstream_requests": 2}, got


def test_requires_any_logs_the_reason_of_the_token_s_own_provider(gw: BaseGateway):
    """Under requires_any [idp, hs], an hs token that hs refuses is logged and counted with hs's
    reason, not idp's `issuer` (the token is not idp's)."""
    before, mark = snapshot(gw), gw.log_mark()
    now = int(time.time())
    expired = HS.sign(claims(ISS_HS, iat=now - 7200, exp=now - 3600))
    assert_unauthorized(gw.get("/orders", headers=bearer(expired), source="127.0.4.1"), INVALID_CHALLENGE)
    assert gw.wait_decision(mark, client="127.0.4.1")["reason"] == "expired"
    tampered = tamper_signature(HS.sign(claims(ISS_HS)))
    assert_unauthorized(gw.get("/orders", headers=bearer(tampered), source="127.0.4.2"), INVALID_CHALLENGE)
    assert gw.wait_decision(mark, client="127.0.4.2")["reason"] == "bad_signature"
    got = changes(before, snapshot(gw))
    assert got == {"denied": 2, "denied_expired": 1, "denied_bad_signature": 1, "rq_4xx": 2}, got


def test_decision_log_client_follows_client_address(gw: BaseGateway):
    mark = gw.log_mark()
    # xff_num_trusted_hops 1: the client is what the trusted proxy saw, not the proxy (the peer).
    assert_unauthorized(gw.get("/orders", headers={"x-forwarded-for": "6.6.6.6, 203.0.113.77"}, source="127.0.4.3"),
                        MISSING_CHALLENGE)
    assert gw.wait_decision(mark, client="203.0.113.77")["reason"] == "missing"
    # A malformed x-forwarded-for changes no decision: the client is unknown, the detail says why.
    assert_allowed(gw.get("/orders", headers={**bearer(RS.sign(claims())), "x-forwarded-for": "bogus"}),
                   "default", "jwt-1")
    assert_unauthorized(gw.get("/orders", headers={"x-forwarded-for": "10.0.0.9, bogus"}, source="127.0.4.4"),
                        MISSING_CHALLENGE)
    line = gw.wait_decision(mark, detail="client_address=malformed_forwarded_for; peer=127.0.4.4")
    assert (line["client"], line["reason"]) == ("", "missing"), line


def test_forward_false_strips_a_token_in_the_query_or_refuses(gw: BaseGateway):
    """Envoy forwards the query without the token. nginx's proxy_pass sends the original request URI
    whatever :path the filter sets, so on Kong the glue fails such a request closed (503, host_error)
    rather than let the token reach the upstream."""
    token = HS.sign(claims(ISS_HS, sub="svc-8"))
    before, mark = snapshot(gw), gw.log_mark()
    r = gw.get(f"/orders?a=1&hs_token={token}&b=2")
    assert token not in r.text, r.text
    if gw.engine == "envoy":
        upstream = assert_allowed(r, "default", "jwt-1")
        assert r.json()["path"] == "/orders?a=1&b=2", r.json()
        assert upstream["x-user"] == "svc-8"
    else:
        assert r.status == 503 and r.is_local_body(UNAVAILABLE), (r.status, r.body)
        assert changes(before, snapshot(gw)) == {"host_error": 1, "rq_5xx": 1}
        gw.wait_for_log(r"\[error\] .*gatewarden jwt: request denied: the filter must rewrite :path", since=mark)


def test_forward_false_strips_the_token_from_the_cookie(gw: BaseGateway):
    token = HS.sign(claims(ISS_HS, sub="svc-8"))
    r = gw.get("/orders", headers={"cookie": f"theme=dark; hs_session={token}; lang=en"})
    upstream = assert_allowed(r, "default", "jwt-1")
    assert upstream["cookie"] == "theme=dark; lang=en", upstream
    assert upstream["x-user"] == "svc-8"
    assert token not in r.text, r.text


def test_cors_preflight_passes_without_a_token(gw: BaseGateway):
    before = snapshot(gw)
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    r = gw.get("/orders", headers=preflight, method="OPTIONS")
    assert_allowed(r, "default", "jwt-1")
    assert r.json()["method"] == "OPTIONS"
    # Not a preflight (no Access-Control-Request-Method): a token is needed.
    assert_unauthorized(gw.get("/orders", headers={"origin": "https://app.example"}, method="OPTIONS"),
                        MISSING_CHALLENGE)
    # A route without requirements needs no token.
    assert_allowed(gw.get("/public/info"), "public", "jwt-1")
    assert changes(before, snapshot(gw)) == {"allowed": 2, "denied": 1, "denied_missing": 1,
                                             "rq_2xx": 2, "rq_4xx": 1, "upstream_requests": 2}


def test_one_jwks_fetch_serves_every_worker(gw: BaseGateway):
    assert gw.jwks is not None
    harness.hold("one JWKS fetch", lambda: gw.jwks.fetches(IDP_PATH) == 1, THREE_TICKS)
    c = snapshot(gw)
    assert (c["jwks_fetch_started"], c["jwks_fetch_succeeded"], c.get("jwks_fetch_failed", 0)) == (1, 1, 0), c
    assert c["jwks_loaded"] == gw.vms, c
    assert c.get("jwks_load_failed", 0) == 0 and c.get("jwks_fetch_early", 0) == 0, c
    assert gw.jwks.fetches(IDP_PATH) == 1, gw.jwks.requests
    log = gw.log()
    assert len(re.findall(rf"gatewarden jwt: jwks fetched from {jwks_target(gw)} \(\d+ bytes\)", log)) == 1
    assert len(re.findall(r"gatewarden jwt: JWKS generation 1 loaded for idp \(2 keys\)", log)) == gw.vms


# --------------------------------------------------------------------------------------------
# Key rotation, kid floods, scheduled refresh

def test_key_rotation_refetches_once_and_kid_floods_are_bounded(start_gateway):
    p = policy("rot-1", {"idp": idp(cache_duration_seconds=10, unknown_kid_refetch_seconds=5)},
               {"provider": "idp"})
    gw = start_gateway({FILTER: p}, jwks_files={"idp.json": jwks_bytes([RS])}, ipv6=False)
    assert gw.jwks is not None
    wait_jwks_loaded(gw, gw.vms)
    old = RS.sign(claims())
    assert_allowed(gw.get("/", headers=bearer(old)), "default", "rot-1")

    # The issuer adds ec-2 and signs with it: the first such token finds an unknown kid and is
    # refused; the refetch it asks for is brought forward, once, for all workers.
    gw.jwks.put("idp.json", jwks_bytes([RS, EC_NEW]))
    new = EC_NEW.sign(claims(sub="user-2"))
    mark = gw.log_mark()
    assert_unauthorized(gw.get("/", headers=bearer(new), source="127.0.4.1"), INVALID_CHALLENGE)
    assert gw.wait_decision(mark, client="127.0.4.1")["reason"] == "unknown_kid"
    gw.wait_for_counter(FILTER, "jwks_fetch_succeeded", 2, timeout=10)
    wait_jwks_loaded(gw, 2 * gw.vms)
    upstream = assert_allowed(gw.get("/", headers=bearer(new)), "default", "rot-1")
    assert upstream["x-user"] == "user-2"
    assert_allowed(gw.get("/", headers=bearer(old)), "default", "rot-1")
    assert counter(gw, "jwks_fetch_early") == 1
    assert gw.jwks.fetches(IDP_PATH) == 2, gw.jwks.requests

    # A flood of tokens with random kids over many connections (so every worker sees some):
    # all refused, and at most one more early refetch (unknown_kid_refetch_seconds is 5).
    c = gw.settled_counters(FILTER)
    early, fetches, unknown = c["jwks_fetch_early"], gw.jwks.fetches(IDP_PATH), c["denied_unknown_kid"]
    for i in range(60):
        r = gw.get("/", headers=bearer(EC_NEW.sign(claims(), kid=secrets.token_hex(8))))
        assert r.status == 401, (i, r.status)
    # Several ticks of every VM (loaded: 1 s apart): a refetch asked for by the flood would have
    # started within them; at most one may.
    harness.hold("at most one more JWKS fetch", lambda: gw.jwks.fetches(IDP_PATH) <= fetches + 1, 1.5)
    assert gw.settled_counters(FILTER)["denied_unknown_kid"] == unknown + 60
    assert counter(gw, "jwks_fetch_early") <= early + 1
    assert gw.jwks.fetches(IDP_PATH) <= fetches + 1, gw.jwks.requests

    # The issuer withdraws rsa-1; the scheduled refresh (cache_duration_seconds 10) picks that up,
    # and a token of the old key is refused although it was verified (and cached) before.
    gw.jwks.put("idp.json", jwks_bytes([EC_NEW]))
    succeeded = counter(gw, "jwks_fetch_succeeded")
    gw.wait_for_counter(FILTER, "jwks_fetch_succeeded", succeeded + 1, timeout=25)
    wait_jwks_loaded(gw, (succeeded + 1) * gw.vms)
    mark = gw.log_mark()
    assert_unauthorized(gw.get("/", headers=bearer(old), source="127.0.4.2"), INVALID_CHALLENGE)
    assert gw.wait_decision(mark, client="127.0.4.2")["reason"] == "unknown_kid"
    assert_allowed(gw.get("/", headers=bearer(new)), "default", "rot-1")

    # Every fetch went through the gateway once: one per refresh (scheduled or early), not per worker.
    c = snapshot(gw)
    assert gw.jwks.fetches(IDP_PATH) == c["jwks_fetch_started"], (gw.jwks.requests, c)
    assert c["jwks_fetch_started"] <= c["jwks_fetch_succeeded"] + 1, c  # at most one in flight
    assert c["jwks_loaded"] >= c["jwks_fetch_succeeded"] * gw.vms - gw.vms, c
    assert c.get("jwks_fetch_failed", 0) == 0 and c.get("jwks_load_failed", 0) == 0, c


# --------------------------------------------------------------------------------------------
# JWKS endpoint unavailable: failure_mode

def test_jwks_failing_with_failure_mode_deny_then_recovering(start_gateway):
    p = policy("down-deny", {"idp": idp(retry_seconds=1), "hs": HS_PROVIDER},
               {"requires_any": [{"provider": "idp"}, {"provider": "hs"}]})
    gw = start_gateway({FILTER: p}, jwks_files={"idp.json": jwks_bytes([RS])}, jwks_fail_status=503, ipv6=False)
    assert gw.jwks is not None
    gw.wait_for_counter(FILTER, "jwks_fetch_failed", 1, timeout=10)
    gw.wait_for_log(rf"gatewarden jwt: fetching jwks from {jwks_target(gw)} failed: status 503")

    before, mark = snapshot(gw), gw.log_mark()
    token = RS.sign(claims())
    # No key set: a token of the remote provider is refused like a missing one (no error=) ...
    assert_unauthorized(gw.get("/orders", headers=bearer(token), source="127.0.5.1"), MISSING_CHALLENGE)
    assert gw.wait_decision(mark, client="127.0.5.1")["reason"] == "jwks_unavailable"
    # ... while the inline provider and routes without requirements work.
    assert_allowed(gw.get("/orders", headers=bearer(HS.sign(claims(ISS_HS)))), "default", "down-deny")
    assert_allowed(gw.get("/public"), "public", "down-deny")
    got = changes(before, snapshot(gw))
    assert {k: got.get(k, 0) for k in ("allowed", "denied", "denied_jwks_unavailable", "upstream_requests")} == {
        "allowed": 2, "denied": 1, "denied_jwks_unavailable": 1, "upstream_requests": 2}, got
    assert counter(gw, "jwks_loaded") == 0

    # The endpoint recovers: the next retry (retry_seconds 1) loads the keys.
    gw.jwks.fail_status = None
    wait_jwks_loaded(gw, gw.vms, timeout=10)
    assert_allowed(gw.get("/orders", headers=bearer(token)), "default", "down-deny")
    c = snapshot(gw)
    assert gw.jwks.fetches(IDP_PATH) == c["jwks_fetch_started"] == c["jwks_fetch_failed"] + 1, (gw.jwks.requests, c)


def test_jwks_down_with_failure_mode_allow(start_gateway):
    p = policy("down-allow", {"idp": idp()}, {"provider": "idp"}, failure_mode="allow")
    gw = start_gateway({FILTER: p}, jwks_down=True, ipv6=False)
    gw.wait_for_counter(FILTER, "jwks_fetch_failed", 1, timeout=10)
    gw.wait_for_log(rf"gatewarden jwt: fetching jwks from {jwks_target(gw)} failed: (status 503|no response)")
    before = snapshot(gw)
    # The token cannot be verified without keys: the requirement passes (so does the rule's scope
    # check, which needs a verified token), and no claim is forwarded.
    token = RS.sign(claims())
    upstream = assert_allowed(gw.get("/orders", headers=bearer(token)), "default", "down-allow")
    assert "x-user" not in upstream and "x-jwt-payload" not in upstream, upstream
    assert_allowed(gw.get("/admin", headers=bearer(tamper_signature(token))), "admin", "down-allow")
    # A request without any token is still refused: failure_mode concerns the keys, not the token.
    assert_unauthorized(gw.get("/orders"), MISSING_CHALLENGE)
    # (The fetcher keeps retrying meanwhile: its jwks_fetch_* counters move on their own.)
    got = {k: v for k, v in changes(before, snapshot(gw)).items() if not k.startswith("jwks_fetch_")}
    assert got == {"allowed": 2, "denied": 1, "denied_missing": 1, "rq_2xx": 2, "rq_4xx": 1, "upstream_requests": 2}


# --------------------------------------------------------------------------------------------
# A live policy update adding a provider

def test_live_update_adds_a_provider(start_gateway, host):
    v1 = policy("live-1", {"idp": idp()}, {"provider": "idp"})
    gw = start_gateway({FILTER: v1}, ipv6=False, jwks_files={
        "idp.json": jwks_bytes([EC]), "partner.json": jwks_bytes([PARTNER])})
    assert gw.jwks is not None
    wait_jwks_loaded(gw, gw.vms)
    ours, theirs = EC.sign(claims()), PARTNER.sign(claims(ISS_PARTNER, sub="partner-user", aud="partner"))
    assert_allowed(gw.get("/orders", headers=bearer(ours)), "default", "live-1")
    mark = gw.log_mark()
    assert_unauthorized(gw.get("/orders", headers=bearer(theirs), source="127.0.6.1"), INVALID_CHALLENGE)
    assert gw.wait_decision(mark, client="127.0.6.1")["reason"] == "issuer"
    assert gw.jwks.fetches(PARTNER_PATH) == 0

    v2 = policy("live-2", {"idp": idp(), "partner": PARTNER_PROVIDER},
                {"requires_any": [{"provider": "idp"}, {"provider": "partner"}]})
    accepted = counter(gw, "config_accepted")
    mark = gw.log_mark()
    assert gw.push_policy(FILTER, v2) == "success"
    assert counter(gw, "config_accepted") >= accepted + gw.vms
    # The new provider's keys are fetched once. Envoy keeps the old provider's keys in the VMs; on
    # Kong the reload's new VMs start without them and shared data does not survive a reload
    # (test_ip_geo.py::test_policy_update_keeps_the_loaded_database), so they are fetched again,
    # once for both workers.
    loads, idp_fetches = (2 * gw.vms, 1) if harness.engine(host) == "envoy" else (3 * gw.vms, 2)
    wait_jwks_loaded(gw, loads)
    gw.wait_for_log_in_every_vm(r"JWKS generation 1 loaded for partner", since=mark)
    upstream = assert_allowed(gw.get("/orders", headers=bearer(theirs)), "default", "live-2")
    assert upstream["x-user"] == "partner-user"
    upstream = assert_allowed(gw.get("/orders", headers=bearer(ours)), "default", "live-2")
    assert upstream["x-user"] == "user-1"
    harness.hold("no more fetches", lambda: (gw.jwks.fetches(PARTNER_PATH), gw.jwks.fetches(IDP_PATH)) == (1, idp_fetches),
                 THREE_TICKS)
    assert counter(gw, "jwks_loaded") == loads
    assert len(re.findall(r"JWKS generation 1 loaded for partner \(1 keys\)", gw.log())) == gw.vms
    if host == "kong":  # a refused policy fails closed on Kong instead: test_kong.py
        return

    # An update naming an unknown provider is refused; live-2 keeps deciding, keys and all.
    bad = {**v2, "policy_version": "live-bad", "default": {"requires": {"provider": "partnr"}}}
    rejected = counter(gw, "config_rejected")
    assert gw.push_policy(FILTER, bad) == "rejected"
    assert counter(gw, "config_rejected") > rejected
    gw.wait_for_log(rf"\[error\]\[{gw.log_component}\].*gatewarden jwt: policy refused: default\.requires\.provider: "
                    r"unknown provider \"partnr\"", since=mark)
    assert_allowed(gw.get("/orders", headers=bearer(theirs)), "default", "live-2")
    assert_unauthorized(gw.get("/orders"), MISSING_CHALLENGE)


# --------------------------------------------------------------------------------------------
# The shipped example policy with the demo key (what scripts/demo.py and docker compose run)

def test_shipped_policy_with_the_demo_key(start_gateway):
    import jwtkit

    shipped = json.loads((harness.ROOT / "deploy/policies/jwt.json").read_text())
    for provider in shipped["providers"].values():  # the shipped bootstrap's cluster, or Kong's host:port
        if provider.get("remote_jwks", {}).get("cluster") == "gatewarden_jwks":
            provider["remote_jwks"]["cluster"] = harness.upstream("jwks")
    gw = start_gateway({FILTER: shipped}, ipv6=False,
                       jwks_files={"jwks.json": harness.ROOT / "deploy/jwks/jwks.json"})
    wait_jwks_loaded(gw, gw.vms)
    version, realm = shipped["policy_version"], shipped["realm"]
    key = jwtkit.demo_key()
    reader = key.sign(jwtkit.demo_claims(scope="orders:read"))
    writer = key.sign(jwtkit.demo_claims(scope="orders:read orders:write"))
    assert_allowed(gw.get("/shop"), "default", version)
    r = gw.get("/api/orders")
    assert (r.status, r.headers.get("www-authenticate")) == (401, f'Bearer realm="{realm}"')
    upstream = assert_allowed(gw.get("/api/orders", headers=bearer(reader)), "orders-read", version)
    assert (upstream["x-user"], upstream["x-tenant"]) == ("alice", "acme")
    r = gw.get("/api/orders", headers=bearer(reader), method="POST")
    assert (r.status, r.headers.get("www-authenticate")) == (403, f'Bearer realm="{realm}", error="insufficient_scope"')
    assert_allowed(gw.get("/api/orders", headers=bearer(writer), method="POST"), "orders-write", version)
    # The token may come in the access_token cookie too; it is removed before the upstream.
    upstream = assert_allowed(gw.get("/api/tenants/acme", headers={"cookie": f"access_token={reader}; theme=dark",
                                                                  "x-tenant-id": "acme"}), "tenant", version)
    assert upstream["cookie"] == "theme=dark", upstream
    assert gw.get("/api/tenants/other", headers={**bearer(reader), "x-tenant-id": "other"}).status == 403
