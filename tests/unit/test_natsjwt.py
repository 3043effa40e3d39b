"""NATS JWTs for the auth callout: signed by the issuer's nkey, checked against it."""
from __future__ import annotations

import pytest

from shared.nats import jwt as natsjwt


def test_a_signed_token_decodes_and_verifies_against_its_issuer() -> None:
    seed = natsjwt.new_account_seed()
    issuer = natsjwt.public_key(seed)
    assert seed.startswith("SA") and issuer.startswith("A")
    claims = natsjwt.user_claims("UNKEY", "monitor-n1", "$G", ["bulwark.raw.n1"], ["_INBOX.>"], True, 60)
    token = natsjwt.encode(claims, seed)
    decoded = natsjwt.decode(token, issuer=issuer)
    assert decoded["iss"] == issuer and decoded["sub"] == "UNKEY" and decoded["aud"] == "$G"
    assert decoded["nats"]["pub"]["allow"] == ["bulwark.raw.n1"] and decoded["nats"]["resp"] == {"max": 1, "ttl": 0}
    assert len(decoded["jti"]) == 52 and decoded["exp"] - decoded["iat"] == 60


def test_a_tampered_or_foreign_token_is_refused() -> None:
    seed, other = natsjwt.new_account_seed(), natsjwt.new_account_seed()
    token = natsjwt.encode(natsjwt.response_claims("UNKEY", "NSERVER", None, "no"), seed)
    head, body, sig = token.split(".")
    forged = natsjwt.encode({**natsjwt.decode(token), "sub": "UOTHER"}, other)
    with pytest.raises(natsjwt.JwtError, match="issued by"):
        natsjwt.decode(forged, issuer=natsjwt.public_key(seed))
    altered = natsjwt.encode(natsjwt.response_claims("UOTHER", "NSERVER", "a.b.c"), seed)  # same issuer
    with pytest.raises(natsjwt.JwtError, match="signature"):
        natsjwt.decode(f"{head}.{altered.split('.')[1]}.{sig}", issuer=natsjwt.public_key(seed))
    with pytest.raises(natsjwt.JwtError, match="not a JWT"):
        natsjwt.decode("garbage")
    assert natsjwt.decode(token)["nats"] == {"type": "authorization_response", "version": 2, "error": "no"}
