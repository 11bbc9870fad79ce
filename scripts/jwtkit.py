"""Test keys, JWKS documents and signed JWTs for the e2e tests and the demo.

Signs with Python's `cryptography` (pinned in the venv), an implementation independent of the
filter's RustCrypto verifier. Never used by the filters themselves.

    key = SigningKey.generate("ES256", kid="ec-1")
    jwks = jwks_document([key])                        # {"keys": [public JWK]}
    token = key.sign({"iss": "https://idp.test", "aud": "api", "sub": "u1", "exp": exp_in(300)})

As a command, it signs a token with the demo key whose public half deploy/jwks/jwks.json
holds (for the docker-compose setup; a demo key, never a production one):

    .venv/bin/python scripts/jwtkit.py sign '{"sub": "alice", "scope": "orders:read"}'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int, size: int | None = None) -> bytes:
    return n.to_bytes(size or (n.bit_length() + 7) // 8, "big")


def exp_in(seconds: int) -> int:
    """A Unix time `seconds` from now."""
    return int(time.time()) + seconds


@dataclass
class SigningKey:
    """A private key of one algorithm (RS256, ES256 or HS256) and its `kid`."""

    alg: str
    kid: str
    private: Any  # rsa / ec private key, or the HMAC secret (bytes)

    @classmethod
    def generate(cls, alg: str, kid: str) -> "SigningKey":
        if alg == "RS256":
            return cls(alg, kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if alg == "ES256":
            return cls(alg, kid, ec.generate_private_key(ec.SECP256R1()))
        if alg == "HS256":
            return cls(alg, kid, os.urandom(32))
        raise ValueError(f"unsupported alg {alg}")

    @classmethod
    def from_pem(cls, path: str | os.PathLike[str], alg: str, kid: str) -> "SigningKey":
        """An RS256 or ES256 private key from a PEM file."""
        return cls(alg, kid, serialization.load_pem_private_key(Path(path).read_bytes(), None))

    def public_jwk(self) -> dict[str, str]:
        """The JWK a verifier needs (for HS256: the secret itself, as an `oct` key)."""
        if self.alg == "RS256":
            nums = self.private.public_key().public_numbers()
            return {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
                    "n": b64url(_uint(nums.n)), "e": b64url(_uint(nums.e))}
        if self.alg == "ES256":
            nums = self.private.public_key().public_numbers()
            return {"kty": "EC", "kid": self.kid, "crv": "P-256",
                    "x": b64url(_uint(nums.x, 32)), "y": b64url(_uint(nums.y, 32))}
        return {"kty": "oct", "kid": self.kid, "alg": "HS256", "k": b64url(self.private)}

    def _signature(self, signing_input: bytes) -> bytes:
        if self.alg == "RS256":
            return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        if self.alg == "ES256":
            r, s = utils.decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return _uint(r, 32) + _uint(s, 32)
        return hmac.new(self.private, signing_input, hashlib.sha256).digest()

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, header: dict[str, Any] | None = None) -> str:
        """A compact JWS of `claims`; `kid` overrides the key's kid in the header."""
        h = {"alg": self.alg, "typ": "JWT", "kid": kid or self.kid, **(header or {})}
        signing_input = (b64url(json.dumps(h, separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self._signature(signing_input.encode()))


def jwks_document(keys: Iterable[SigningKey]) -> dict[str, list[dict[str, str]]]:
    return {"keys": [k.public_jwk() for k in keys]}


def jwks_bytes(keys: Iterable[SigningKey]) -> bytes:
    return json.dumps(jwks_document(keys)).encode()


def tamper_signature(token: str) -> str:
    """The token with one byte of its signature changed (still valid base64url)."""
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def payload_of(token: str) -> str:
    return token.split(".")[1]


# The demo identity provider of the shipped configs (deploy/policies/jwt.json).
DEMO_KEY_PATH = Path(__file__).resolve().parent.parent / "deploy" / "jwks" / "demo-signing-key.pem"
DEMO_KID = "demo-es256-1"
DEMO_ISSUER = "https://idp.demo.gatewarden.test"
DEMO_AUDIENCE = "orders-api"


def demo_key() -> SigningKey:
    return SigningKey.from_pem(DEMO_KEY_PATH, "ES256", DEMO_KID)


def demo_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": "alice", "tenant": "acme",
            "scope": "orders:read", "iat": now, "exp": now + 3600, **overrides}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] != "sign":
        print("usage: jwtkit.py sign ['{\"sub\": \"alice\", \"scope\": \"orders:read orders:write\"}']",
              file=sys.stderr)
        return 2
    overrides = json.loads(argv[1]) if len(argv) == 2 else {}
    print(demo_key().sign(demo_claims(**overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
