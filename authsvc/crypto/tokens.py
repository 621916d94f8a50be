"""Random secrets, their stored hashes, and signed access tokens (EdDSA JWT, JWKS).

Access tokens are compact JWS with one fixed algorithm (EdDSA over Ed25519) and the
RFC 9068 type ``at+jwt``. PyJWT writes and verifies them; the header is checked against
what this service issues first, so no header can choose the algorithm or the key type.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm


def new_token(prefix: str, nbytes: int = 32) -> str:
    """A random secret (256 bits by default) with a readable type prefix."""
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


def token_hash(token: str) -> str:
    """What the database stores for a high-entropy token: SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class SigningKeyMaterial:
    kid: str
    private_pem: bytes
    public_jwk: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Signer:
    """A signing key ready to use: the private key already loaded."""

    kid: str
    private_key: Ed25519PrivateKey


def generate_signing_key(kid: str) -> SigningKeyMaterial:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    jwk = json.loads(OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "EdDSA"})
    return SigningKeyMaterial(kid=kid, private_pem=pem, public_jwk=jwk)


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("signing keys are Ed25519")
    return private


def load_signer(material: SigningKeyMaterial) -> Signer:
    return Signer(kid=material.kid, private_key=load_private_key(material.private_pem))


@dataclass(frozen=True, slots=True)
class AccessClaims:
    sub: str
    sid: str
    auth_time: int
    amr: tuple[str, ...]
    iat: int
    exp: int


class InvalidAccessToken(Exception):  # noqa: N818 - named for the outcome
    pass


JWT_TYPE = "at+jwt"


def sign_access_token(
    *,
    key: Signer | SigningKeyMaterial,
    issuer: str,
    audience: str,
    subject: str,
    session_id: str,
    auth_time: datetime,
    amr: tuple[str, ...],
    now: datetime,
    ttl_seconds: int,
) -> str:
    iat = int(now.timestamp())
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl_seconds,
        "auth_time": int(auth_time.timestamp()),
        "sid": session_id,
        "amr": list(amr),
        "jti": secrets.token_urlsafe(12),
    }
    signer = key if isinstance(key, Signer) else load_signer(key)
    return jwt.encode(
        claims,
        signer.private_key,
        algorithm="EdDSA",
        headers={"kid": signer.kid, "typ": JWT_TYPE},
    )


# --- verification ---------------------------------------------------------------------------

MAX_ACCESS_TOKEN_LENGTH = 4096  # ours are about 600 characters
_TYPES = frozenset({JWT_TYPE, "application/" + JWT_TYPE})
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REQUIRED = ("iss", "sub", "aud", "exp", "iat", "sid", "auth_time")
# Expiry and nbf are checked by _check_time, also for tokens verified before.
_DECODE_OPTIONS: Any = {
    "require": list(_REQUIRED),
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


def read_key_id(token: str) -> str:
    """The kid of a token whose header is ours (EdDSA, type at+jwt, no ``crit`` or ``b64``);
    nothing else in it is trusted yet. Padding is refused: what we issue has none."""
    if not isinstance(token, str) or len(token) > MAX_ACCESS_TOKEN_LENGTH or "=" in token:
        raise InvalidAccessToken("not a token")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidAccessToken(str(exc)) from None
    kid, typ = header.get("kid"), header.get("typ")
    if header.get("alg") != "EdDSA" or not isinstance(kid, str):
        raise InvalidAccessToken("unsupported algorithm or no key id")
    if not _KEY_ID.fullmatch(kid):  # ours are ids (base64url); the kid is looked up by value
        raise InvalidAccessToken("not one of our key ids")
    if not isinstance(typ, str) or typ.lower() not in _TYPES:
        raise InvalidAccessToken("not an access token")
    if "crit" in header or "b64" in header:
        raise InvalidAccessToken("unsupported header parameter")
    return kid


def _int(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    if type(value) is not int:  # bool is an int subclass; floats are not issued
        raise InvalidAccessToken(f"{name} is not an integer")
    return value


def _str(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str):
        raise InvalidAccessToken(f"{name} is not a string")
    return value


def _verify(
    token: str, *, public_key: Ed25519PublicKey, issuer: str, audience: str
) -> tuple[AccessClaims, int | None]:
    """Signature (PyJWT, EdDSA only), issuer, audience and claim types: everything but time.
    Returns the claims and ``nbf``."""
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=["EdDSA"],
            issuer=issuer,
            audience=audience,
            options=_DECODE_OPTIONS,
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidAccessToken(str(exc)) from None
    amr = claims.get("amr") or []
    if not isinstance(amr, list) or not all(isinstance(v, str) for v in amr):
        raise InvalidAccessToken("amr is not a list of strings")
    verified = AccessClaims(
        sub=_str(claims, "sub"),
        sid=_str(claims, "sid"),
        auth_time=_int(claims, "auth_time"),
        amr=tuple(amr),
        iat=_int(claims, "iat"),
        exp=_int(claims, "exp"),
    )
    return verified, (_int(claims, "nbf") if "nbf" in claims else None)


# Clocks of the instances that sign and verify may differ this much (iat and nbf).
CLOCK_LEEWAY_SECONDS = 30


def _check_lifetime(claims: AccessClaims, max_lifetime: int | None) -> None:
    """A token may not claim to live longer than the service issues them for: one signed
    with a leaked key cannot outlast the key's retirement that way."""
    if max_lifetime is not None and claims.exp - claims.iat > max_lifetime:
        raise InvalidAccessToken("lifetime longer than issued")


def _check_time(claims: AccessClaims, nbf: int | None, now: datetime) -> AccessClaims:
    current = int(now.timestamp())
    if claims.exp <= current:
        raise InvalidAccessToken("expired")
    if claims.iat > current + CLOCK_LEEWAY_SECONDS:
        raise InvalidAccessToken("issued in the future")
    if nbf is not None and nbf > current + CLOCK_LEEWAY_SECONDS:
        raise InvalidAccessToken("not yet valid")
    return claims


@lru_cache(maxsize=64)
def _public_key(x: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 key of an OKP JWK (objects are cached by key bytes)."""
    x = jwk.get("x")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(x, str):
        raise InvalidAccessToken("not an Ed25519 JWK")
    try:
        return _public_key(x)
    except (ValueError, TypeError):
        raise InvalidAccessToken("not an Ed25519 JWK") from None


def verify_access_token(
    token: str,
    *,
    public_jwks: Mapping[str, Mapping[str, Any]] | None = None,
    public_key_for: Callable[[str], Ed25519PublicKey | None] | None = None,
    issuer: str,
    audience: str,
    now: datetime,
    max_lifetime: int | None = None,
) -> AccessClaims:
    """Verify signature, type, issuer, audience, expiry and required claims, and that the
    token lives at most ``max_lifetime`` seconds (``exp - iat``) when that is given.

    The key comes from ``public_key_for(kid)`` (a cache, say) or from ``public_jwks`` by kid.
    """
    if public_key_for is None:
        jwks = public_jwks or {}

        def public_key_for(kid: str) -> Ed25519PublicKey | None:
            jwk = jwks.get(kid)
            return public_key_from_jwk(jwk) if jwk is not None else None

    public_key = public_key_for(read_key_id(token))
    if public_key is None:
        raise InvalidAccessToken("unknown key")
    claims, nbf = _verify(token, public_key=public_key, issuer=issuer, audience=audience)
    _check_lifetime(claims, max_lifetime)
    return _check_time(claims, nbf, now)


@dataclass(frozen=True, slots=True)
class _Verified:
    kid: str
    public_key: Ed25519PublicKey
    issuer: str
    audience: str
    claims: AccessClaims
    nbf: int | None


class VerifiedTokenCache:
    """Access tokens this process has verified, so that a client's next request with the
    same token skips the signature check (the costliest step of the bearer guard).

    Only tokens that passed every check enter. A hit counts only for the same issuer and
    audience and while ``public_key_for(kid)`` still returns the very key object the token
    was verified with; expiry and ``nbf`` are checked against ``now`` on every call. The
    oldest entry leaves when ``maxsize`` is reached.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self._maxsize = maxsize
        self._entries: dict[str, _Verified] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def verify(
        self,
        token: str,
        *,
        public_key_for: Callable[[str], Ed25519PublicKey | None],
        issuer: str,
        audience: str,
        now: datetime,
        max_lifetime: int | None = None,
    ) -> AccessClaims:
        hit = self._entries.get(token)
        if (
            hit is not None
            and hit.issuer == issuer
            and hit.audience == audience
            and public_key_for(hit.kid) is hit.public_key
        ):
            return _check_time(hit.claims, hit.nbf, now)
        kid = read_key_id(token)
        public_key = public_key_for(kid)
        if public_key is None:
            raise InvalidAccessToken("unknown key")
        claims, nbf = _verify(token, public_key=public_key, issuer=issuer, audience=audience)
        _check_lifetime(claims, max_lifetime)
        _check_time(claims, nbf, now)
        with self._lock:
            if len(self._entries) >= self._maxsize:
                del self._entries[next(iter(self._entries))]
            self._entries[token] = _Verified(
                kid=kid,
                public_key=public_key,
                issuer=issuer,
                audience=audience,
                claims=claims,
                nbf=nbf,
            )
        return claims
