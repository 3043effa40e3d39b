"""NATS JWTs (ed25519 nkeys) for the auth callout: sign user and response claims, read requests.

Format (nats-io/jwt v2): ``base64url(header).base64url(claims).base64url(signature)`` without padding,
header ``{"typ": "JWT", "alg": "ed25519-nkey"}``, the signature by the issuer's nkey over the first two
parts, and ``jti`` the base32 SHA-256 of the claims serialised without it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import nkeys

__all__ = ["JwtError", "new_account_seed", "public_key", "encode", "decode", "user_claims", "response_claims"]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class JwtError(ValueError):
    """A token that is not a well-formed (or well-signed) NATS JWT."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account nkey seed (``SA...``): the callout's issuer key."""
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode())


def public_key(seed: str) -> str:
    """The public nkey (``A...``) of ``seed``."""
    return str(nkeys.from_seed(seed.encode()).public_key.decode())


def _verify_key(public: str) -> Any:
    """The ed25519 key of a public nkey: base32 of prefix byte, 32 key bytes, CRC-16."""
    from nacl.signing import VerifyKey

    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    if len(raw) != 35:
        raise JwtError(f"not a public nkey: {public!r}")
    return VerifyKey(raw[1:33])


def encode(claims: dict[str, Any], seed: str) -> str:
    """Sign ``claims`` (``iss`` set to the seed's public key, ``jti`` computed) with ``seed``."""
    kp = nkeys.from_seed(seed.encode())
    body = {**claims, "iss": kp.public_key.decode()}
    body.pop("jti", None)
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(kp.sign(signing_input.encode()))}"


def decode(token: str, issuer: str | None = None) -> dict[str, Any]:
    """The claims of ``token``; with ``issuer``, the token must be signed by that public nkey."""
    try:
        head, body, sig = token.split(".")
        header = json.loads(_unb64(head))
        claims: dict[str, Any] = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwtError(f"not a JWT: {exc}") from None
    if header.get("alg") not in ("ed25519-nkey", "ed25519"):
        raise JwtError(f"unsupported JWT algorithm {header.get('alg')!r}")
    if issuer is not None:
        if claims.get("iss") != issuer:
            raise JwtError(f"JWT issued by {claims.get('iss')!r}, not {issuer!r}")
        try:
            _verify_key(issuer).verify(f"{head}.{body}".encode(), _unb64(sig))
        except Exception as exc:  # nacl's BadSignatureError, or a malformed key or signature
            raise JwtError(f"bad JWT signature: {type(exc).__name__}") from None
    return claims


def user_claims(user_nkey: str, name: str, account: str, publish: list[str], subscribe: list[str],
                responses: bool, ttl_seconds: int) -> dict[str, Any]:
    """A user JWT's claims: who (``sub``: the connection's nkey), where (``aud``: account), what it may do."""
    now = int(time.time())
    nats: dict[str, Any] = {"pub": {"allow": publish}, "sub": {"allow": subscribe}, "type": "user", "version": 2}
    if responses:
        nats["resp"] = {"max": 1, "ttl": 0}
    return {"sub": user_nkey, "name": name, "aud": account, "iat": now, "exp": now + ttl_seconds, "nats": nats}


def response_claims(user_nkey: str, server_id: str, user_jwt: str | None, error: str = "") -> dict[str, Any]:
    """An authorization response: the user JWT, or an error that refuses the connection."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if user_jwt:
        nats["jwt"] = user_jwt
    else:
        nats["error"] = error or "not authorized"
    return {"sub": user_nkey, "aud": server_id, "iat": int(time.time()), "nats": nats}
