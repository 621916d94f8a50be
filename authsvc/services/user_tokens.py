"""Single-use, expiring user tokens (mail links, mfa/change/enrollment tokens); hashed at rest."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm.attributes import set_committed_value

from authsvc.crypto.tokens import new_token, token_hash
from authsvc.db import new_id, rowcount
from authsvc.errors import InvalidToken, TokenSpentMeanwhile
from authsvc.models import User, UserToken

# Readable prefixes of the token types (purpose, prefix); prefixes are not secrets.
PREFIXES: dict[str, str] = dict(
    [
        ("verify_email", "ve"),
        ("reset_password", "rp"),
        ("change_password", "ct"),
        ("mfa", "mfa"),
        ("mfa_enrollment", "en"),
    ]
)


# Half-finished logins: each began with the password, and none may outlive it.
LOGIN_STEP_PURPOSES = ("mfa", "change_password", "mfa_enrollment")


# A Core INSERT built once: a login's password step issues its mfa_token here, and the ORM's
# unit of work cost more CPU than the write.
_INSERT_TOKEN = insert(cast("Table", UserToken.__table__))


def issue(
    session: DbSession,
    *,
    user_id: str,
    purpose: str,
    ttl: timedelta,
    now: datetime,
    pending_password_hash: str | None = None,
    context: dict[str, Any] | None = None,
    replace_previous: bool = True,
) -> str:
    """Create a token; by default earlier unused tokens of the same purpose die."""
    if replace_previous:
        # The account locked before its tokens, as every writer of both (a deletion takes the
        # account, then its tokens by cascade); InvalidToken if it was deleted meanwhile.
        # FOR KEY SHARE: enough to wait for a deletion, and no conflict with the UPDATEs of a
        # breach batch while a notice run holds many accounts at once.
        locked = (
            select(User.id).where(User.id == user_id).with_for_update(read=True, key_share=True)
        )
        if session.scalar(locked) is None:
            raise InvalidToken()
        session.execute(
            update(UserToken)
            .where(
                UserToken.user_id == user_id,
                UserToken.purpose == purpose,
                UserToken.used_at.is_(None),
            )
            .values(used_at=now)
        )
    secret = new_token(PREFIXES[purpose])
    session.flush()  # what the session holds is written first, as when the token was flushed
    session.execute(
        _INSERT_TOKEN,
        {
            "id": new_id(),
            "user_id": user_id,
            "purpose": purpose,
            "token_hash": token_hash(secret),
            "created_at": now,
            "expires_at": now + ttl,
            "used_at": None,
            "attempts": 0,
            "pending_password_hash": pending_password_hash,
            "context": json.dumps(context) if context is not None else None,
        },
    )
    return secret


def find(session: DbSession, *, token: str, purpose: str, now: datetime) -> UserToken:
    """The live token row, or InvalidToken (unknown, wrong purpose, used or expired)."""
    row = session.scalar(select(UserToken).where(UserToken.token_hash == token_hash(token)))
    return _live(row, purpose=purpose, now=now)


# The hot statements are built once; only their parameters change per call.
_WITH_OWNER = (
    select(UserToken, User)
    .join(User, User.id == UserToken.user_id)
    .where(UserToken.token_hash == bindparam("hash"))
)
_WITH_LOCKED_OWNER = _WITH_OWNER.with_for_update(key_share=True, of=User).execution_options(
    populate_existing=True
)


def find_with_owner(
    session: DbSession, *, token: str, purpose: str, now: datetime, lock_owner: bool = False
) -> tuple[UserToken, User]:
    """The live token row and its owner, in one query; or InvalidToken, also when the owner
    is disabled (no link or login step of a disabled account does anything).

    ``lock_owner``: lock the owner's row (FOR NO KEY UPDATE) as it is read, for a step that
    goes on to write the token or the account: a disable, deletion or breach response then
    either shows here or waits, and the user's row is locked before the token's, the order
    every writer of both keeps (the other order deadlocks against an account deletion)."""
    query = _WITH_LOCKED_OWNER if lock_owner else _WITH_OWNER
    found = session.execute(query, {"hash": token_hash(token)}).first()
    if found is None:
        raise InvalidToken()
    row, owner = found
    live = _live(row, purpose=purpose, now=now)
    if owner.disabled_at is not None:
        raise InvalidToken()
    invalidated = owner.password_invalidated_at
    if purpose in LOGIN_STEP_PURPOSES and invalidated is not None and row.created_at <= invalidated:
        # A login begun with a password that has since been invalidated (a breach response
        # flags accounts before it gets to revoke their pending tokens) does not finish.
        raise InvalidToken()
    return live, owner


def _live(row: UserToken | None, *, purpose: str, now: datetime) -> UserToken:
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= now:
        raise InvalidToken()
    return row


# Core statements on the table: no ORM evaluation of the WHERE clause against loaded rows.
_TOKEN_TABLE = cast("Table", UserToken.__table__)
_TOKENS = _TOKEN_TABLE.c
_SPEND = (
    update(_TOKEN_TABLE)
    .where(_TOKENS.id == bindparam("token_id"), _TOKENS.used_at.is_(None))
    .values(used_at=bindparam("now"))
)
_CLAIM_ATTEMPT = (
    update(_TOKEN_TABLE)
    .where(
        _TOKENS.id == bindparam("token_id"),
        _TOKENS.used_at.is_(None),
        _TOKENS.attempts < bindparam("limit"),
    )
    .values(attempts=_TOKENS.attempts + 1)
    .returning(_TOKENS.attempts)
)
_RETURN_ATTEMPT = (
    update(_TOKEN_TABLE)
    .where(_TOKENS.id == bindparam("token_id"), _TOKENS.attempts > 0)
    .values(attempts=_TOKENS.attempts - 1)
)


def consume(session: DbSession, *, row: UserToken, now: datetime) -> None:
    """Mark used exactly once, atomically (two concurrent uses: one loses)."""
    spent = rowcount(session.execute(_SPEND, {"token_id": row.id, "now": now}))
    if spent != 1:
        raise TokenSpentMeanwhile()
    set_committed_value(row, "used_at", now)  # as written, without another UPDATE


def claim_attempt(session: DbSession, *, row: UserToken, limit: int) -> int:
    """Count one more answer on ``row`` before it is checked, in one atomic UPDATE: parallel
    answers each count, and no more than ``limit`` answers are ever checked (counted only
    after a failure, answers that all read the token before any failed would each be checked).
    Returns the new count; InvalidToken when the token is spent meanwhile or out of answers.
    ``row`` itself is left as loaded."""
    claimed = session.execute(_CLAIM_ATTEMPT, {"token_id": row.id, "limit": limit}).scalar()
    if claimed is None:
        raise InvalidToken()
    return int(claimed)


def return_attempt(session: DbSession, *, row: UserToken) -> None:
    """Give back an answer ``claim_attempt`` counted that turned out not to be one (malformed:
    a client's mistake). The claim's row lock is still held, so no one saw the count."""
    session.execute(_RETURN_ATTEMPT, {"token_id": row.id})


def kill(session: DbSession, *, row: UserToken, now: datetime) -> None:
    """End ``row`` (if it is not used yet) without a use: no answer on it is checked again.
    The UPDATE of ``consume``, without its claim to be the one use. ``row`` is left as loaded."""
    session.execute(_SPEND, {"token_id": row.id, "now": now})


def context_of(row: UserToken) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(row.context) if row.context else {}
    return data


def count_live(session: DbSession, *, user_id: str, purpose: str, now: datetime) -> int:
    """Unused, unexpired tokens of ``purpose`` the user holds."""
    live = session.scalar(
        select(func.count())
        .select_from(UserToken)
        .where(
            UserToken.user_id == user_id,
            UserToken.purpose == purpose,
            UserToken.used_at.is_(None),
            UserToken.expires_at > now,
        )
    )
    return int(live or 0)


def revoke_all(
    session: DbSession, *, user_id: str, purposes: tuple[str, ...], now: datetime
) -> None:
    session.execute(
        update(UserToken)
        .where(
            UserToken.user_id == user_id,
            UserToken.purpose.in_(purposes),
            UserToken.used_at.is_(None),
        )
        .values(used_at=now)
    )
