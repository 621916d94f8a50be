"""The signed-in user's profile (GET /v1/me), read in one statement with the session check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session as DbSession

from authsvc.db import OneStatement
from authsvc.services import recovery, totp, webauthn
from authsvc.services.sessions import USERS, live_session_of


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    email: str
    email_verified: bool
    created_at: datetime
    password_set_at: datetime | None
    mfa_methods: tuple[str, ...]
    password_change_required: bool
    recovery_codes_remaining: int = 0
    recovery_codes_low: bool = False  # a second factor, and at most 3 unused recovery codes


_users = USERS.c

_PROFILE = OneStatement(
    live_session_of(
        _users.id,
        _users.email,
        _users.email_verified_at,
        _users.created_at,
        _users.password_set_at,
        _users.password_change_required,
        totp.active_exists(_users.id).label("has_totp"),
        webauthn.credentials_exist(_users.id).label("has_webauthn"),
        recovery.remaining_count(_users.id).label("codes_left"),
    )
)


def profile(
    db: Engine | DbSession | Connection, *, session_id: str, user_id: str, now: datetime
) -> Profile | None:
    """The profile of ``user_id``, or None unless ``session_id`` is a live session of that
    user and the user is enabled: the bearer guard's rule, checked by the same statement.
    ``db``: see ``OneStatement.first``."""
    row = _PROFILE.first(db, {"session_id": session_id, "user_id": user_id, "now": now})
    if row is None:
        return None
    enrolled = (("totp", row.has_totp), ("webauthn", row.has_webauthn))
    methods = [name for name, has in enrolled if has]
    second_factor = bool(methods)
    codes_left = int(row.codes_left or 0)
    if second_factor and codes_left > 0:
        methods.append("recovery_code")
    return Profile(
        id=row.id,
        email=row.email,
        email_verified=row.email_verified_at is not None,
        created_at=row.created_at,
        password_set_at=row.password_set_at,
        mfa_methods=tuple(methods),
        password_change_required=bool(row.password_change_required),
        recovery_codes_remaining=codes_left,
        recovery_codes_low=second_factor and recovery.is_low(codes_left),
    )
