"""Guards: bearer access tokens for /v1/me*, admin API keys for /admin/v1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

from flask import Response, g, request

from authsvc.crypto.tokens import InvalidAccessToken, verify_access_token
from authsvc.db import utcnow
from authsvc.errors import InvalidAdminKey, InvalidToken, Unauthenticated
from authsvc.http.io import db, deps
from authsvc.models import User
from authsvc.services import admin, sessions, signing
from authsvc.services.admin import AdminIdentity


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    session_id: str
    auth_time: datetime
    amr: tuple[str, ...]


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate_bearer(now: datetime) -> Principal:
    token = bearer_token()
    if token is None:
        raise Unauthenticated()
    settings = deps().settings
    session = db()
    try:
        claims = verify_access_token(
            token,
            public_jwks=signing.public_jwks(session),
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


def principal() -> Principal:
    return g.principal  # type: ignore[no-any-return]


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
    return g.admin  # type: ignore[no-any-return]
