"""Guards: bearer access tokens for /v1/me*, admin API keys for /admin/v1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

from flask import Response, g, request

from authsvc.crypto.tokens import AccessClaims, InvalidAccessToken, VerifiedTokenCache
from authsvc.db import utcnow
from authsvc.errors import InvalidAdminKey, InvalidToken, Unauthenticated
from authsvc.http.io import client, db, deps, one_statement_db
from authsvc.services import admin, mfa_management, sessions, signing, user_tokens
from authsvc.services.admin import AdminIdentity

REFUSED = "The access token is invalid, expired or revoked"
# Process-wide: an entry is used only with the very key object it was verified with, and
# key objects are cached per database (services.signing), so apps in one process stay apart.
_verified_tokens = VerifiedTokenCache()


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    session_id: str
    auth_time: datetime
    amr: tuple[str, ...]
    # Set when an mfa_enrollment token stands in for a login (enrollment routes only).
    enrollment_token: str | None = None


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def access_claims(now: datetime) -> AccessClaims:
    """The verified claims of the request's access token (signature, type, issuer,
    audience, expiry); the session behind it is not checked here."""
    token = bearer_token()
    if token is None:
        raise Unauthenticated()
    settings = deps().settings
    try:
        return _verified_tokens.verify(
            token,
            # A session only when the key is not cached (GET /v1/me needs none otherwise).
            public_key_for=lambda kid: signing.public_key(
                db(), kid, now=now, token_ttl=settings.access_token_ttl
            ),
            issuer=settings.public_url,
            audience=settings.jwt_audience,
            now=now,
            max_lifetime=int(settings.access_token_ttl.total_seconds()),
        )
    except InvalidAccessToken:
        raise Unauthenticated(REFUSED) from None


def principal_of(claims: AccessClaims, now: datetime) -> Principal:
    return Principal(
        user_id=claims.sub,
        session_id=claims.sid,
        auth_time=datetime.fromtimestamp(claims.auth_time, tz=now.tzinfo),
        amr=claims.amr,
    )


def authenticate_bearer(now: datetime) -> Principal:
    """A valid access token whose session is alive and whose user is enabled (one query)."""
    claims = access_claims(now)
    if not sessions.is_active(db(), session_id=claims.sid, user_id=claims.sub, now=now):
        raise Unauthenticated(REFUSED)
    return principal_of(claims, now)


def require_user(view: Callable[..., Response]) -> Callable[..., Response]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        g.principal = authenticate_bearer(utcnow())
        return view(*args, **kwargs)

    return wrapper


ENROLLMENT_TOKEN_PREFIX = user_tokens.PREFIXES["mfa_enrollment"] + "_"


def authenticate_enrollment(now: datetime) -> Principal:
    """An ``mfa_enrollment`` token from a login that still needs a second factor."""
    token = bearer_token()
    if token is None:
        raise Unauthenticated()
    try:
        # Refused like every login step of a disabled account, or of one whose password a
        # breach response invalidated after this login began; and once the account has a factor.
        row, _ = mfa_management.find_enrollment(db(), token=token, now=now)
    except InvalidToken:
        raise Unauthenticated("The enrollment token is invalid, expired or used") from None
    return Principal(
        user_id=row.user_id,
        session_id="",
        auth_time=row.created_at,
        amr=tuple(user_tokens.context_of(row).get("amr", ())),
        enrollment_token=token,
    )


def require_user_or_enrollment(view: Callable[..., Response]) -> Callable[..., Response]:
    """An access token, or an enrollment token (the factor enrollment routes only)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        token = bearer_token()
        now = utcnow()
        if token is not None and token.startswith(ENROLLMENT_TOKEN_PREFIX):
            g.principal = authenticate_enrollment(now)
        else:
            g.principal = authenticate_bearer(now)
        return view(*args, **kwargs)

    return wrapper


def principal() -> Principal:
    return g.principal


def require_recent_login() -> None:
    """The bearer's login is within the re-auth window (else 403 reauthentication_required):
    a stale or stolen access token, or one refreshed from a stolen refresh token, keeps the
    login's auth_time and cannot make the change."""
    mfa_management.require_recent_login(deps(), auth_time=principal().auth_time, now=utcnow())


def require_recent_login_to_add_a_factor() -> None:
    """A new factor signs in (a passkey alone) or comes with recovery codes, so it needs a
    recent login. An enrollment token is a login step in progress, fresh by construction."""
    if principal().enrollment_token is None:
        require_recent_login()


def require_admin(view: Callable[..., Response]) -> Callable[..., Response]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        token = bearer_token()
        if token is None:
            raise InvalidAdminKey()
        g.admin = admin.authenticate_key(
            db(), deps(), secret=token, now=utcnow(), client=client(), stamp=one_statement_db()
        )
        return view(*args, **kwargs)

    return wrapper


def current_admin() -> AdminIdentity:
    return g.admin
