"""Random tokens, their stored hashes, and EdDSA access tokens with a JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from authsvc.crypto.tokens import (
    InvalidAccessToken,
    generate_signing_key,
    new_token,
    sign_access_token,
    token_hash,
    verify_access_token,
)
from authsvc.db import utcnow

ISSUER, AUDIENCE = "https://id.example", "my-app"


def test_new_tokens_carry_their_prefix_and_256_bits():
    token = new_token("rt")

    prefix, _, secret = token.partition("_")
    assert prefix == "rt"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert len({new_token("rt") for _ in range(100)}) == 100


def test_token_hash_is_sha256_hex():
    assert token_hash("rt_abc") == hashlib.sha256(b"rt_abc").hexdigest()
    assert token_hash("rt_abc") != token_hash("rt_abd")
    assert token_hash("\ud800") == hashlib.sha256(b"\xed\xa0\x80").hexdigest()  # no crash


@pytest.fixture(scope="module")
def key():
    return generate_signing_key("kid-1")


@pytest.fixture
def jwks(key):
    return {key.kid: key.public_jwk}


def sign(key, **overrides):
    now = utcnow()
    claims = {
        "key": key,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "subject": "user-1",
        "session_id": "session-1",
        "auth_time": now - timedelta(seconds=30),
        "amr": ("pwd", "otp", "mfa"),
        "now": now,
        "ttl_seconds": 600,
        **overrides,
    }
    return sign_access_token(**claims)


def verify(token, jwks, **overrides):
    return verify_access_token(
        token,
        **{
            "public_jwks": jwks,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "now": utcnow(),
            **overrides,
        },
    )


def test_round_trip(key, jwks):
    now = utcnow()
    token = sign(key, now=now)

    claims = verify(token, jwks)

    assert claims.sub == "user-1"
    assert claims.sid == "session-1"
    assert claims.amr == ("pwd", "otp", "mfa")
    assert claims.iat == int(now.timestamp())
    assert claims.exp == claims.iat + 600
    assert claims.auth_time == int((now - timedelta(seconds=30)).timestamp())


def test_header_and_public_jwk(key):
    header = jwt.get_unverified_header(sign(key))

    assert header == {"alg": "EdDSA", "kid": "kid-1", "typ": "at+jwt"}
    assert key.public_jwk["kty"] == "OKP"
    assert key.public_jwk["crv"] == "Ed25519"
    assert {"kid", "use", "alg", "x"} <= set(key.public_jwk)
    assert "d" not in key.public_jwk
    assert b"PRIVATE KEY" in key.private_pem


def test_pyjwt_verifies_it_with_the_public_jwk_alone(key):
    public = jwt.PyJWK.from_dict(key.public_jwk)

    claims = jwt.decode(
        sign(key), public.key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER
    )

    assert claims["sub"] == "user-1"
    assert claims["jti"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"issuer": "https://evil.example"},
        {"audience": "other-app"},
        {"now": utcnow() - timedelta(seconds=601)},
    ],
    ids=["issuer", "audience", "expired"],
)
def test_claims_that_do_not_match_are_refused(key, jwks, overrides):
    with pytest.raises(InvalidAccessToken):
        verify(sign(key, **overrides), jwks)


def test_expiry_is_checked_against_the_given_now(key, jwks):
    token = sign(key)

    with pytest.raises(InvalidAccessToken):
        verify(token, jwks, now=utcnow() + timedelta(seconds=601))
    assert verify(token, jwks, now=utcnow() + timedelta(seconds=590)).sub == "user-1"


def test_unknown_key_ids_are_refused(key):
    other = generate_signing_key("kid-2")

    with pytest.raises(InvalidAccessToken):
        verify(sign(key), {other.kid: other.public_jwk})


def test_another_key_under_a_known_kid_is_refused(key, jwks):
    impostor = generate_signing_key("kid-1")

    with pytest.raises(InvalidAccessToken):
        verify(sign(impostor), jwks)


def test_tampered_payloads_are_refused(key, jwks):
    header, payload, signature = sign(key).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")

    with pytest.raises(InvalidAccessToken):
        verify(f"{header}.{forged}.{signature}", jwks)


def test_alg_none_and_hmac_confusion_are_refused(key, jwks):
    claims = jwt.decode(sign(key), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "kid-1"})
    # HS256 keyed with the public key's bytes: the classic algorithm-confusion forgery.
    hmac_signed = _hs256(claims, key.public_jwk["x"].encode())

    for token in (unsigned, hmac_signed):
        with pytest.raises(InvalidAccessToken):
            verify(token, jwks)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hs256(claims: dict, secret: bytes) -> str:
    header = _b64(json.dumps({"alg": "HS256", "kid": "kid-1", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "...", "eyJ.eyJ.sig"])
def test_garbage_is_refused(jwks, token):
    with pytest.raises(InvalidAccessToken):
        verify(token, jwks)


@pytest.mark.parametrize("claim", ["sid", "sub", "exp", "aud", "iss", "iat"])
def test_required_claims(key, jwks, claim):
    claims = jwt.decode(sign(key), options={"verify_signature": False})
    del claims[claim]
    signer = serialization.load_pem_private_key(key.private_pem, password=None)
    token = jwt.encode(claims, signer, algorithm="EdDSA", headers={"kid": "kid-1"})

    with pytest.raises(InvalidAccessToken):
        verify(token, jwks)
