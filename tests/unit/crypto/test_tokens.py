"""Random tokens, their stored hashes, and EdDSA access tokens with a JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from authsvc.crypto.tokens import (
    CLOCK_LEEWAY_SECONDS,
    InvalidAccessToken,
    VerifiedTokenCache,
    generate_signing_key,
    load_signer,
    new_token,
    public_key_from_jwk,
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


def test_a_loaded_signer_signs_the_same_way(key, jwks):
    token = sign(load_signer(key))

    assert jwt.get_unverified_header(token)["kid"] == "kid-1"
    assert verify(token, jwks).sub == "user-1"


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


def resign(key, edit_claims=None, **headers):
    """The claims of a fresh token, edited, signed again with ``key`` by PyJWT."""
    claims = jwt.decode(sign(key), options={"verify_signature": False})
    if edit_claims is not None:
        edit_claims(claims)
    signer = serialization.load_pem_private_key(key.private_pem, password=None)
    return jwt.encode(
        claims, signer, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt", **headers}
    )


def test_a_token_resigned_unchanged_verifies(key, jwks):
    assert verify(resign(key), jwks).sub == "user-1"
    assert verify(resign(key, typ="application/AT+JWT"), jwks).sub == "user-1"


@pytest.mark.parametrize("claim", ["sid", "sub", "exp", "aud", "iss", "iat", "auth_time"])
def test_required_claims(key, jwks, claim):
    token = resign(key, lambda claims: claims.pop(claim))

    with pytest.raises(InvalidAccessToken):
        verify(token, jwks)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update(exp=float(c["exp"])),
        lambda c: c.update(exp=True),
        lambda c: c.update(exp=str(c["exp"])),
        lambda c: c.update(sub=42),
        lambda c: c.update(sid=None),
        lambda c: c.update(amr="pwd"),
        lambda c: c.update(amr=["pwd", 1]),
        lambda c: c.update(nbf=c["iat"] + 90),
        lambda c: c.update(aud=["other-app"]),
    ],
    ids=[
        "float-exp",
        "bool-exp",
        "string-exp",
        "int-sub",
        "null-sid",
        "amr-string",
        "amr-mixed",
        "nbf-future",
        "aud-list-without-us",
    ],
)
def test_claims_of_the_wrong_type_or_time_are_refused(key, jwks, edit):
    with pytest.raises(InvalidAccessToken):
        verify(resign(key, edit), jwks)


def test_clocks_may_differ_by_the_leeway_but_no_more(key, jwks):
    """A token from an instance whose clock is a little ahead verifies; one issued or valid
    only further in the future does not."""
    ahead = utcnow() + timedelta(seconds=CLOCK_LEEWAY_SECONDS - 5)
    assert verify(sign(key, now=ahead), jwks).sub == "user-1"
    with pytest.raises(InvalidAccessToken, match="issued in the future"):
        verify(sign(key, now=ahead + timedelta(seconds=10)), jwks)
    with pytest.raises(InvalidAccessToken, match="not yet valid"):
        verify(resign(key, lambda c: c.update(nbf=c["iat"] + CLOCK_LEEWAY_SECONDS + 5)), jwks)


def test_a_token_living_longer_than_issued_is_refused(key, jwks):
    """With ``max_lifetime``, a token signed (with a leaked key, say) to live for years is
    refused, by the function and by the cache alike; one of the issued lifetime passes."""
    forever = sign(key, ttl_seconds=10**8)
    assert verify(forever, jwks).sub == "user-1"  # no limit given
    with pytest.raises(InvalidAccessToken, match="lifetime"):
        verify(forever, jwks, max_lifetime=600)
    assert verify(sign(key, ttl_seconds=600), jwks, max_lifetime=600).sub == "user-1"
    cache = VerifiedTokenCache()
    options = {"issuer": ISSUER, "audience": AUDIENCE, "now": utcnow(), "max_lifetime": 600}
    key_for = {key.kid: public_key_from_jwk(key.public_jwk)}.get
    with pytest.raises(InvalidAccessToken, match="lifetime"):
        cache.verify(forever, public_key_for=key_for, **options)
    assert len(cache) == 0


def test_an_audience_list_that_names_us_is_accepted(key, jwks):
    token = resign(key, lambda c: c.update(aud=["other-app", AUDIENCE]))

    assert verify(token, jwks).sub == "user-1"


@pytest.mark.parametrize(
    "headers",
    [{"typ": "JWT"}, {"typ": None}, {"crit": ["exp"]}, {"b64": False}],
    ids=["typ-jwt", "no-typ", "crit", "b64"],
)
def test_headers_other_than_ours_are_refused(key, jwks, headers):
    token = resign(key, **headers)

    with pytest.raises(InvalidAccessToken):
        verify(token, jwks)


def test_padded_or_non_canonical_segments_are_refused(key, jwks):
    header, payload, signature = sign(key).split(".")
    # The last character of a 64-byte signature carries 2 unused bits: set one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    variants = [
        f"{header}.{payload}.{signature}==",
        f"{header}=.{payload}.{signature}",
        f"{header}.{payload}.{signature[:-1]}{last}",
        f"{header}.{payload}.{signature}.",
        f" {header}.{payload}.{signature}",
    ]
    for token in variants:
        with pytest.raises(InvalidAccessToken):
            verify(token, jwks)


def test_a_kid_that_is_not_a_string_is_refused(key, jwks):
    _header, payload, signature = sign(key).split(".")
    odd = _b64(json.dumps({"alg": "EdDSA", "kid": ["kid-1"], "typ": "at+jwt"}).encode())

    with pytest.raises(InvalidAccessToken):
        verify(f"{odd}.{payload}.{signature}", jwks)


def test_oversized_tokens_are_refused_before_any_work(key, jwks):
    header, payload, signature = sign(key).split(".")

    with pytest.raises(InvalidAccessToken, match="not a token"):
        verify(f"{header}.{payload}{'A' * 4096}.{signature}", jwks)


# --- the cache of verified tokens ----------------------------------------------------


class Keys:
    """``public_key_for`` over a JWKS, counting look-ups; objects built once per kid."""

    def __init__(self, *materials):
        self.keys = {m.kid: public_key_from_jwk(m.public_jwk) for m in materials}

    def __call__(self, kid):
        return self.keys.get(kid)


def cached(cache, token, keys, **overrides):
    return cache.verify(
        token,
        **{
            "public_key_for": keys,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "now": utcnow(),
            **overrides,
        },
    )


def test_the_cache_returns_the_same_claims_and_still_checks_expiry(key):
    cache, keys = VerifiedTokenCache(), Keys(key)
    token = sign(key)

    first = cached(cache, token, keys)

    assert cached(cache, token, keys) == first
    assert len(cache) == 1
    with pytest.raises(InvalidAccessToken, match="expired"):
        cached(cache, token, keys, now=utcnow() + timedelta(seconds=601))


def test_the_cache_holds_only_tokens_that_verified(key, jwks):
    cache, keys = VerifiedTokenCache(), Keys(key)
    header, payload, _ = sign(key).split(".")
    forged = f"{header}.{payload}.{_b64(bytes(64))}"

    for _ in range(2):
        with pytest.raises(InvalidAccessToken):
            cached(cache, forged, keys)
    with pytest.raises(InvalidAccessToken):
        cached(cache, sign(key), keys, issuer="https://other.example")
    assert len(cache) == 0


def test_a_cached_token_is_verified_again_for_another_key_issuer_or_audience(key):
    cache, keys = VerifiedTokenCache(), Keys(key)
    token = sign(key)
    cached(cache, token, keys)

    impostor = Keys(generate_signing_key(key.kid))  # same kid, another key
    with pytest.raises(InvalidAccessToken):
        cached(cache, token, impostor)
    with pytest.raises(InvalidAccessToken):
        cached(cache, token, Keys())  # the kid is no longer published here
    with pytest.raises(InvalidAccessToken):
        cached(cache, token, keys, issuer="https://other.example")
    with pytest.raises(InvalidAccessToken):
        cached(cache, token, keys, audience="other-app")
    assert cached(cache, token, keys).sub == "user-1"


def test_the_cache_is_bounded(key):
    cache, keys = VerifiedTokenCache(maxsize=3), Keys(key)
    tokens = [sign(key) for _ in range(5)]

    for token in tokens:
        cached(cache, token, keys)

    assert len(cache) == 3
    assert all(cached(cache, token, keys).sub == "user-1" for token in tokens)


def test_the_time_checks_hold_to_the_second(key, jwks):
    """RFC 7519: a token is not accepted on or after ``exp``; a clock ahead by exactly the
    leeway is still within it, for ``iat`` and ``nbf`` alike."""
    token = sign(key)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    at = datetime.fromtimestamp(exp, UTC)
    assert verify(token, jwks, now=at - timedelta(seconds=1)).sub == "user-1"
    with pytest.raises(InvalidAccessToken, match="expired"):
        verify(token, jwks, now=at)

    now = utcnow().replace(microsecond=0)
    edge = now + timedelta(seconds=CLOCK_LEEWAY_SECONDS)
    assert verify(sign(key, now=edge), jwks, now=now).sub == "user-1"
    with pytest.raises(InvalidAccessToken, match="issued in the future"):
        verify(sign(key, now=edge + timedelta(seconds=1)), jwks, now=now)
    start = int(now.timestamp()) + CLOCK_LEEWAY_SECONDS
    assert verify(resign(key, lambda c: c.update(nbf=start)), jwks, now=now).sub == "user-1"
    with pytest.raises(InvalidAccessToken, match="not yet valid"):
        verify(resign(key, lambda c: c.update(nbf=start + 1)), jwks, now=now)


def test_the_cache_checks_not_before_on_every_use(key):
    """A token verified once, while valid, is refused from the cache at a time before its
    ``nbf`` (a clock set back), as it would be without the cache."""
    cache, keys = VerifiedTokenCache(), Keys(key)
    now = utcnow().replace(microsecond=0)
    start = int(now.timestamp())
    token = resign(key, lambda c: c.update(iat=start - 100, nbf=start))
    assert cached(cache, token, keys, now=now).sub == "user-1"
    assert len(cache) == 1
    earlier = now - timedelta(seconds=CLOCK_LEEWAY_SECONDS + 1)
    with pytest.raises(InvalidAccessToken, match="not yet valid"):
        cached(cache, token, keys, now=earlier)
