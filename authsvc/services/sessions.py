"""Logins as sessions (refresh-token families): issue, rotate, revoke, list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.tokens import Signer, new_token, sign_access_token, token_hash
from authsvc.db import OneStatement, UTCDateTime, new_id, rowcount
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


# Core tables: the hot paths below skip the ORM (no identity map, no unit of work).
SESSIONS = cast("Table", Session.__table__)
USERS = cast("Table", User.__table__)
REFRESH_TOKENS = cast("Table", RefreshToken.__table__)
_sessions, _users, _refresh_tokens = SESSIONS.c, USERS.c, REFRESH_TOKENS.c


def live_sessions(*columns: ColumnElement[Any]) -> Select[Any]:
    """``columns`` of sessions joined with their users, only the sessions that are alive
    (not revoked, not expired at the bound ``now``) and whose user is enabled."""
    return (
        select(*columns)
        .select_from(SESSIONS.join(USERS, _users.id == _sessions.user_id))
        .where(
            _sessions.revoked_at.is_(None),
            _sessions.expires_at > bindparam("now"),
            _users.disabled_at.is_(None),
        )
    )


def live_session_of(*columns: ColumnElement[Any]) -> Select[Any]:
    """``live_sessions`` narrowed to the bound ``session_id`` of the bound ``user_id``: what
    an access token's ``sid`` and ``sub`` name."""
    return live_sessions(*columns).where(
        _sessions.id == bindparam("session_id"), _sessions.user_id == bindparam("user_id")
    )


_IS_ACTIVE = live_session_of(_sessions.id)


def is_active(session: DbSession, *, session_id: str, user_id: str, now: datetime) -> bool:
    """Whether the session behind an access token is still alive (bearer guard)."""
    found = session.execute(
        _IS_ACTIVE, {"session_id": session_id, "user_id": user_id, "now": now}
    ).first()
    return found is not None


def _access_token(
    deps: Deps,
    signer: Signer,
    *,
    user_id: str,
    session_id: str,
    auth_time: datetime,
    amr: str,
    expires_at: datetime,
    now: datetime,
) -> tuple[str, int]:
    """An access token that ends no later than its session: relying apps that verify it
    offline keep accepting it to its ``exp``, which must not pass the session's absolute end."""
    ttl = min(
        int(deps.settings.access_token_ttl.total_seconds()),
        int(expires_at.timestamp()) - int(now.timestamp()),
    )
    token = sign_access_token(
        key=signer,
        issuer=deps.settings.public_url,
        audience=deps.settings.jwt_audience,
        subject=user_id,
        session_id=session_id,
        auth_time=auth_time,
        amr=tuple(amr.split()),
        now=now,
        ttl_seconds=ttl,
    )
    return token, ttl


_INSERT_REFRESH_TOKEN = insert(REFRESH_TOKENS)
_INSERT_SESSION = insert(SESSIONS)


def _start_in_one_statement() -> Any:
    """PostgreSQL: the session and its first refresh token in one statement, the session's
    INSERT a data-modifying CTE (its row is there when the token's foreign key is checked, at
    the end of the statement): one round trip fewer on every login."""
    started = (
        insert(SESSIONS)
        .values(
            id=bindparam("id"),
            user_id=bindparam("user_id"),
            created_at=bindparam("now", type_=UTCDateTime()),
            last_used_at=bindparam("now", type_=UTCDateTime()),
            auth_time=bindparam("now", type_=UTCDateTime()),
            amr=bindparam("amr"),
            ip=bindparam("ip"),
            user_agent=bindparam("user_agent"),
            expires_at=bindparam("expires_at"),
        )
        .returning(_sessions.id)
        .cte("started")
    )
    return insert(REFRESH_TOKENS).from_select(
        ["id", "session_id", "token_hash", "created_at"],
        select(
            bindparam("token_id", type_=String()),
            started.c.id,
            bindparam("token_hash", type_=String()),
            bindparam("now", type_=UTCDateTime()),
        ),
    )


_START_IN_ONE_STATEMENT = _start_in_one_statement()


@dataclass(frozen=True, slots=True)
class _Login:
    """What an access token says of a session just started."""

    id: str
    user_id: str
    auth_time: datetime
    amr: str
    expires_at: datetime


def _store_refresh_token(
    session: DbSession, *, secret: str, session_id: str, now: datetime
) -> None:
    session.execute(
        _INSERT_REFRESH_TOKEN,
        {
            "id": new_id(),
            "session_id": session_id,
            "token_hash": token_hash(secret),
            "created_at": now,
            "used_at": None,
        },
    )


def start_session(
    session: DbSession,
    deps: Deps,
    *,
    user: User,
    amr: tuple[str, ...],
    client: Client,
    now: datetime,
) -> TokenPair:
    login = _Login(
        id=new_id(),
        user_id=user.id,
        auth_time=now,
        amr=" ".join(amr),
        expires_at=now + deps.settings.refresh_token_ttl,
    )
    refresh = new_token("rt")
    row = {
        "id": login.id,
        "user_id": login.user_id,
        "amr": login.amr,
        "ip": client.ip or None,
        "user_agent": client.user_agent[:256] or None,
        "expires_at": login.expires_at,
    }
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            _START_IN_ONE_STATEMENT,
            {**row, "now": now, "token_id": new_id(), "token_hash": token_hash(refresh)},
        )
    else:
        session.execute(
            _INSERT_SESSION, {**row, "created_at": now, "last_used_at": now, "auth_time": now}
        )
        _store_refresh_token(session, secret=refresh, session_id=login.id, now=now)
    signer = signing.signer(session, deps.keyring, now=now)
    return _pair(deps, signer, login=login, refresh_token=refresh, now=now)


# Spend the token if it is unused, its session alive and its user enabled. The session is
# locked as it is checked, before the token's row: the order of an account deletion's cascade
# (account, sessions, tokens), which deadlocked against a refresh holding the token only.
_SPEND = (
    update(REFRESH_TOKENS)
    .where(
        _refresh_tokens.token_hash == bindparam("hash"),
        _refresh_tokens.used_at.is_(None),
        live_sessions(_sessions.id)
        .where(
            _sessions.id == _refresh_tokens.session_id,
            _sessions.last_used_at > bindparam("idle_since"),
        )
        .with_for_update(key_share=True, of=SESSIONS)
        .exists(),
    )
    .values(used_at=bindparam("now"))
    .returning(_refresh_tokens.session_id)
)
# Mark the session used; return what the access token needs.
_TOUCH = (
    update(SESSIONS)
    .where(_sessions.id == bindparam("session_id"), _sessions.revoked_at.is_(None))
    .values(last_used_at=bindparam("now"))
    .returning(
        _sessions.id, _sessions.user_id, _sessions.auth_time, _sessions.amr, _sessions.expires_at
    )
)


def _rotate_in_one_statement() -> Select[Any]:
    """PostgreSQL: the three steps as data-modifying CTEs of one statement (one snapshot;
    the row lock of the spend serialises concurrent uses of a token)."""
    spent = _SPEND.cte("spent")
    touched = (
        update(SESSIONS)
        .where(_sessions.id == spent.c.session_id, _sessions.revoked_at.is_(None))
        .values(last_used_at=bindparam("now"))
        .returning(
            _sessions.id,
            _sessions.user_id,
            _sessions.auth_time,
            _sessions.amr,
            _sessions.expires_at,
        )
        .cte("touched")
    )
    added = (
        insert(REFRESH_TOKENS)
        .from_select(
            ["id", "session_id", "token_hash", "created_at"],
            select(
                bindparam("new_id", type_=String()),
                touched.c.id,
                bindparam("new_hash", type_=String()),
                bindparam("now", type_=UTCDateTime()),
            ),
        )
        .cte("added")
    )
    return select(
        touched.c.id,
        touched.c.user_id,
        touched.c.auth_time,
        touched.c.amr,
        touched.c.expires_at,
    ).add_cte(added)


_ROTATE = OneStatement(_rotate_in_one_statement())


def rotate_in_one_statement(
    db: Engine | Connection | DbSession,
    deps: Deps,
    *,
    signer: Signer,
    refresh_token: str,
    now: datetime,
) -> TokenPair | None:
    """PostgreSQL: the common case of ``rotate_refresh_token`` as its one statement, which is
    atomic by itself (so ``db`` may be the autocommit engine, see OneStatement). None when the token
    cannot be spent as it is: then ``rotate_refresh_token``, in a transaction, finds out why
    (and revokes the family of a token used twice)."""
    secret = new_token("rt")
    login = _ROTATE.first(
        db,
        {
            "hash": token_hash(refresh_token),
            "now": now,
            "idle_since": now - deps.settings.session_idle_timeout,
            "new_id": new_id(),
            "new_hash": token_hash(secret),
        },
    )
    if login is None:
        return None
    return _pair(deps, signer, login=login, refresh_token=secret, now=now)


def rotate_refresh_token(
    session: DbSession, deps: Deps, *, refresh_token: str, client: Client, now: datetime
) -> TokenPair:
    """Spend a refresh token for a new pair; a spent token presented again kills its family.

    When all is well: spend the token (a conditional UPDATE), mark the session used
    (returning what the access token needs) and store the next token, in one statement on
    PostgreSQL and three elsewhere. Anything else takes the slow path that finds out why.
    """
    signer = signing.signer(session, deps.keyring, now=now)
    if session.get_bind().dialect.name == "postgresql":
        pair = rotate_in_one_statement(
            session, deps, signer=signer, refresh_token=refresh_token, now=now
        )
        if pair is not None:
            return pair
    else:
        params = {
            "hash": token_hash(refresh_token),
            "now": now,
            "idle_since": now - deps.settings.session_idle_timeout,
        }
        session_id = session.execute(_SPEND, params).scalar()
        if session_id is not None:
            login = session.execute(_TOUCH, {"session_id": session_id, "now": now}).first()
            if login is not None:
                secret = new_token("rt")
                _store_refresh_token(session, secret=secret, session_id=login.id, now=now)
                return _pair(deps, signer, login=login, refresh_token=secret, now=now)
    _refuse_refresh(session, hashed=token_hash(refresh_token), client=client, now=now)


def _pair(
    deps: Deps,
    signer: Signer,
    *,
    login: Session | Row[Any] | _Login,
    refresh_token: str,
    now: datetime,
) -> TokenPair:
    """An access token for the session ``login`` (a stored row, or one just read back),
    paired with its refresh token."""
    access, ttl = _access_token(
        deps,
        signer,
        user_id=login.user_id,
        session_id=login.id,
        auth_time=login.auth_time,
        amr=login.amr,
        expires_at=login.expires_at,
        now=now,
    )
    return TokenPair(
        access_token=access, refresh_token=refresh_token, expires_in=ttl, session_id=login.id
    )


def _refuse_refresh(session: DbSession, *, hashed: str, client: Client, now: datetime) -> NoReturn:
    """Why a token could not be spent; a spent token of a live session revokes the session."""
    row = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == hashed))
    if row is None:
        raise InvalidToken()
    login = session.get(Session, row.session_id)
    if login is None or login.revoked_at is not None or login.expires_at <= now:
        raise InvalidToken()
    if row.used_at is not None:
        # Decided by the UPDATE, not by the read above: replays at once revoke (and are
        # audited) once.
        if revoke(session, session_ids=[login.id], reason="refresh_token_reuse", now=now):
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
    raise InvalidToken()  # the user is disabled, or the session was idle for too long


def revoke(session: DbSession, *, session_ids: list[str], reason: str, now: datetime) -> int:
    result = session.execute(
        update(Session)
        .where(Session.id.in_(session_ids), Session.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    return rowcount(result)


def revoke_all_for_user(
    session: DbSession, *, user_id: str, reason: str, now: datetime, keep: str | None = None
) -> int:
    """Revoke every live session of the user but ``keep``; return how many."""
    live = [Session.user_id == user_id, Session.revoked_at.is_(None)]
    if keep is not None:
        live.append(Session.id != keep)
    result = session.execute(
        update(Session).where(*live).values(revoked_at=now, revoked_reason=reason)
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
    # A spent token ends its session as any logout does, but says that a copy of the family
    # is about, as a replay to the refresh does: it is recorded as one.
    replayed = row.used_at is not None
    reason = "refresh_token_reuse" if replayed else "logout"
    if revoke(session, session_ids=[login.id], reason=reason, now=now):
        audit.record(
            session,
            type="session.refresh_reuse" if replayed else "session.logout",
            outcome="revoked" if replayed else "success",
            now=now,
            client=client,
            user_id=login.user_id,
            details={"session_id": login.id},
        )


def revoke_others(
    session: DbSession, *, user_id: str, current_session_id: str, client: Client, now: datetime
) -> int:
    """End every session of the user but ``current_session_id`` ("sign out everywhere else");
    returns how many were live. Audited once, with the count."""
    revoked = revoke_all_for_user(
        session, user_id=user_id, reason="user", now=now, keep=current_session_id
    )
    audit.record(
        session,
        type="session.revoked_others",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"session_id": current_session_id, "sessions_revoked": revoked},
    )
    return revoked


def list_sessions(
    session: DbSession,
    *,
    user_id: str,
    current_session_id: str,
    idle_timeout: timedelta,
    now: datetime,
) -> list[SessionInfo]:
    """The user's sessions that can still be refreshed, newest first."""
    rows = session.scalars(
        select(Session)
        .where(
            Session.user_id == user_id,
            Session.revoked_at.is_(None),
            Session.expires_at > now,
            Session.last_used_at > now - idle_timeout,
        )
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
    session: DbSession,
    *,
    user_id: str,
    session_id: str,
    idle_timeout: timedelta,
    client: Client,
    now: datetime,
) -> None:
    """Revoke one of the sessions ``list_sessions`` shows; any other is not found."""
    login = session.get(Session, session_id)
    if (
        login is None
        or login.user_id != user_id
        or login.expires_at <= now
        or login.last_used_at <= now - idle_timeout
    ):
        raise NotFound("No such session")
    # Decided by the UPDATE, not by the read above: of two revocations at once, one revokes.
    if not revoke(session, session_ids=[login.id], reason="user", now=now):
        raise NotFound("No such session")
    audit.record(
        session,
        type="session.revoked",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"session_id": login.id},
    )
