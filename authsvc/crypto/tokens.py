"""Random secrets, their stored hashes, and signed access tokens (EdDSA JWT, JWKS)."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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


def sign_access_token(
    *,
    key: SigningKeyMaterial,
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
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("signing keys are Ed25519")
    return jwt.encode(
        claims,
        private,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )


def token_key_id(token: str) -> str | None:
    """The ``kid`` a token claims to be signed with (unverified; for key look-up only)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def verify_access_token(
    token: str,
    *,
    public_jwks: dict[str, dict[str, Any]],
    issuer: str,
    audience: str,
    now: datetime,
) -> AccessClaims:
    """Verify signature, issuer, audience and expiry against the published keys."""
    try:
        header = jwt.get_unverified_header(token)
        jwk = public_jwks.get(str(header.get("kid")))
        if jwk is None or header.get("alg") != "EdDSA":
            raise InvalidAccessToken("unknown key")
        public = OKPAlgorithm.from_jwk(json.dumps(jwk))
        claims = jwt.decode(
            token,
            public,  # type: ignore[arg-type]
            algorithms=["EdDSA"],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "sub", "sid", "aud", "iss"], "verify_iat": False},
            leeway=0,
        )
        if claims["exp"] <= int(now.timestamp()):
            raise InvalidAccessToken("expired")
        return AccessClaims(
            sub=str(claims["sub"]),
            sid=str(claims["sid"]),
            auth_time=int(claims["auth_time"]),
            amr=tuple(claims.get("amr") or ()),
            iat=int(claims["iat"]),
            exp=int(claims["exp"]),
        )
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise InvalidAccessToken(str(exc)) from None
