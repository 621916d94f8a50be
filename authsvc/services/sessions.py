"""Logins as sessions (refresh-token families): issue, rotate, revoke, list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.tokens import new_token, sign_access_token, token_hash
from authsvc.db import rowcount
from authsvc.errors import InvalidToken, NotFound
from authsvc.models import RefreshToken, Session, User
from authsvc.services import audit, signing
from authsvc.services.context import Client, Deps


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 token type name, not a secret


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    created_at: datetime
    last_used_at: datetime
    auth_time: datetime
    amr: tuple[str, ...]
    ip: str | None
    user_agent: str | None
    current: bool


def _access_token(
    session: DbSession, deps: Deps, *, login: Session, now: datetime
) -> tuple[str, int]:
    ttl = int(deps.settings.access_token_ttl.total_seconds())
    token = sign_access_token(
        key=signing.active_key(session, deps.keyring, now=now),
        issuer=deps.settings.public_url,
        audience=deps.settings.jwt_audience,
        subject=login.user_id,
        session_id=login.id,
        auth_time=login.auth_time,
        amr=tuple(login.amr.split()),
        now=now,
        ttl_seconds=ttl,
    )
    return token, ttl


def _new_refresh_token(session: DbSession, *, login: Session, now: datetime) -> str:
    secret = new_token("rt")
    session.add(RefreshToken(session_id=login.id, token_hash=token_hash(secret), created_at=now))
    return secret


def start_session(
    session: DbSession,
    deps: Deps,
    *,
    user: User,
    amr: tuple[str, ...],
    client: Client,
    now: datetime,
) -> TokenPair:
    login = Session(
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        auth_time=now,
        amr=" ".join(amr),
        ip=client.ip or None,
        user_agent=client.user_agent[:256] or None,
        expires_at=now + deps.settings.refresh_token_ttl,
    )
    session.add(login)
    session.flush()
    refresh = _new_refresh_token(session, login=login, now=now)
    access, ttl = _access_token(session, deps, login=login, now=now)
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=ttl, session_id=login.id
    )


def rotate_refresh_token(
    session: DbSession, deps: Deps, *, refresh_token: str, client: Client, now: datetime
) -> TokenPair:
    """Spend a refresh token for a new pair; a spent token presented again kills its family."""
    row = session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh_token))
    )
    if row is None:
        raise InvalidToken()
    login = session.get(Session, row.session_id)
    if login is None or login.revoked_at is not None or login.expires_at <= now:
        raise InvalidToken()
    spent = rowcount(
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
        )
    )
    if spent != 1:
        revoke(session, session_ids=[login.id], reason="refresh_token_reuse", now=now)
        audit.record(
            session,
            type="session.refresh_reuse",
            outcome="revoked",
            now=now,
            client=client,
            user_id=login.user_id,
            details={"session_id": login.id},
        )
        raise InvalidToken("The refresh token was already used; its session is revoked")
    user = session.get(User, login.user_id)
    if user is None or user.disabled_at is not None:
        raise InvalidToken()
    login.last_used_at = now
    refresh = _new_refresh_token(session, login=login, now=now)
    access, ttl = _access_token(session, deps, login=login, now=now)
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=ttl, session_id=login.id
    )


def revoke(session: DbSession, *, session_ids: list[str], reason: str, now: datetime) -> int:
    result = session.execute(
        update(Session)
        .where(Session.id.in_(session_ids), Session.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    return rowcount(result)


def revoke_all_for_user(session: DbSession, *, user_id: str, reason: str, now: datetime) -> int:
    result = session.execute(
        update(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    return rowcount(result)


def logout(session: DbSession, *, refresh_token: str, client: Client, now: datetime) -> None:
    row = session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh_token))
    )
    if row is None:
        raise InvalidToken()
    login = session.get(Session, row.session_id)
    if login is None:
        raise InvalidToken()
    if revoke(session, session_ids=[login.id], reason="logout", now=now):
        audit.record(
            session,
            type="session.logout",
            outcome="success",
            now=now,
            client=client,
            user_id=login.user_id,
            details={"session_id": login.id},
        )


def active_session(session: DbSession, *, session_id: str, user_id: str, now: datetime) -> Session:
    """The session behind an access token, if it is still alive (bearer guard)."""
    login = session.get(Session, session_id)
    if (
        login is None
        or login.user_id != user_id
        or login.revoked_at is not None
        or login.expires_at <= now
    ):
        raise InvalidToken()
    return login


def list_sessions(
    session: DbSession, *, user_id: str, current_session_id: str, now: datetime
) -> list[SessionInfo]:
    rows = session.scalars(
        select(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None), Session.expires_at > now)
        .order_by(Session.created_at.desc())
    )
    return [
        SessionInfo(
            id=row.id,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            auth_time=row.auth_time,
            amr=tuple(row.amr.split()),
            ip=row.ip,
            user_agent=row.user_agent,
            current=row.id == current_session_id,
        )
        for row in rows
    ]


def revoke_session(
    session: DbSession, *, user_id: str, session_id: str, client: Client, now: datetime
) -> None:
    login = session.get(Session, session_id)
    if login is None or login.user_id != user_id or login.revoked_at is not None:
        raise NotFound("No such session")
    revoke(session, session_ids=[login.id], reason="user", now=now)
    audit.record(
        session,
        type="session.revoked",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"session_id": login.id},
    )
