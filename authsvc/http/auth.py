"""Guards: bearer access tokens for /v1/me*, admin API keys for /admin/v1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

from flask import Response, current_app, g, request
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.tokens import InvalidAccessToken, token_key_id, verify_access_token
from authsvc.db import utcnow
from authsvc.errors import InvalidAdminKey, InvalidToken, Unauthenticated
from authsvc.http.io import db, deps
from authsvc.models import User
from authsvc.services import admin, sessions, signing, user_tokens
from authsvc.services.admin import AdminIdentity


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


def _published_keys(session: DbSession, kid: str | None) -> dict[str, dict[str, Any]]:
    """Public keys by kid, read from the database only when a token names an unseen kid.

    Keys are never deleted (retired keys stay published), so a cached key stays valid.
    """
    cache: dict[str, dict[str, Any]] = current_app.extensions["authsvc"].jwks_cache
    if kid is not None and kid not in cache:
        cache.update(signing.public_jwks(session))
    return cache


def authenticate_bearer(now: datetime) -> Principal:
    token = bearer_token()
    if token is None:
        raise Unauthenticated()
    settings = deps().settings
    session = db()
    try:
        claims = verify_access_token(
            token,
            public_jwks=_published_keys(session, token_key_id(token)),
            issuer=settings.public_url,
            audience=settings.jwt_audience,
            now=now,
        )
        sessions.active_session(session, session_id=claims.sid, user_id=claims.sub, now=now)
    except (InvalidAccessToken, InvalidToken):
        raise Unauthenticated("The access token is invalid, expired or revoked") from None
    user = session.get(User, claims.sub)
    if user is None or user.disabled_at is not None:
        raise Unauthenticated("The access token is invalid, expired or revoked")
    return Principal(
        user_id=claims.sub,
        session_id=claims.sid,
        auth_time=datetime.fromtimestamp(claims.auth_time, tz=now.tzinfo),
        amr=claims.amr,
    )


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
    session = db()
    try:
        row = user_tokens.find(session, token=token, purpose="mfa_enrollment", now=now)
    except InvalidToken:
        raise Unauthenticated("The enrollment token is invalid, expired or used") from None
    user = session.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        raise Unauthenticated("The enrollment token is invalid, expired or used")
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


def require_admin(view: Callable[..., Response]) -> Callable[..., Response]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        token = bearer_token()
        if token is None:
            raise InvalidAdminKey()
        g.admin = admin.authenticate_key(db(), secret=token, now=utcnow())
        return view(*args, **kwargs)

    return wrapper


def current_admin() -> AdminIdentity:
    return g.admin
