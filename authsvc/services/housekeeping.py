"""Deleting rows whose work is over: ended sessions (with their refresh tokens), expired
single-use tokens, TOTP enrollments never confirmed, and sent and failed outbox messages.

Every login with a second factor leaves an mfa_token, every refresh a spent refresh token and
every mail an outbox message; nothing else ever removes them. The outbox worker calls ``sweep``
every few minutes (``OutboxWorker.run``), so these tables hold only what is live plus
``AUTHSVC_EXPIRED_RETENTION`` of history. The audit trail keeps the record of each of these
events; it has its own retention (`authsvc audit prune`).

A row is deleted once it has been over for longer than the retention:

- a session: revoked, past its absolute end (``expires_at``), or idle for longer than
  ``AUTHSVC_SESSION_IDLE_TIMEOUT``; its refresh tokens, spent ones included, go with it (the
  foreign key cascades). A spent
  refresh token of a live session stays: presenting it again is how a stolen token is noticed
  (the whole session is then revoked);
- a single-use token (verification, reset, change, mfa, enrollment): past ``expires_at``, used or
  not;
- a TOTP enrollment never confirmed: past its ``expires_at`` (``AUTHSVC_TOTP_PENDING_TTL`` after
  it began). Its secret, encrypted as it is, serves nothing, yet every key rotation re-encrypts
  it; a new enrollment of the same account deletes it too. A confirmed factor has no
  ``expires_at`` and is never swept;
- an outbox message: delivered (``completed_at``);
- an outbox message parked as failed (``failed_at``): after its own retention,
  ``AUTHSVC_FAILED_MESSAGE_RETENTION`` (30 days), long enough for an operator to look at it
  (``authsvc outbox failed``) and send it again (``authsvc outbox retry``).
  Its payload, encrypted as it is, holds the recipient's address: it is not kept for ever.

Each batch is its own short transaction, so a sweep never holds locks for long and logins go on
meanwhile; on PostgreSQL, rows that another instance is deleting at the same moment are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, or_, select
from sqlalchemy.orm import InstrumentedAttribute, sessionmaker
from sqlalchemy.orm import Session as DbSession

from authsvc.models import OutboxMessage, Session, TotpFactor, UserToken

log = logging.getLogger("authsvc.housekeeping")

BATCH = 2000  # rows deleted per transaction
MAX_BATCHES = 50  # per table and sweep: a large backlog is cleared over several sweeps


@dataclass(frozen=True, slots=True)
class Swept:
    sessions: int = 0  # their refresh tokens go with them (ON DELETE CASCADE)
    user_tokens: int = 0
    totp_enrollments: int = 0  # pending TOTP factors never confirmed
    outbox_messages: int = 0  # sent
    failed_messages: int = 0  # outbox messages parked as failed

    @property
    def total(self) -> int:
        return (
            self.sessions
            + self.user_tokens
            + self.totp_enrollments
            + self.outbox_messages
            + self.failed_messages
        )


def sweep(
    factory: sessionmaker[DbSession],
    *,
    now: datetime,
    retention: timedelta,
    failed_retention: timedelta,
    idle_timeout: timedelta,
) -> Swept:
    """Delete what has been over for longer than ``retention``, and failed outbox messages
    parked for longer than ``failed_retention``; a zero retention keeps what it covers."""
    swept = Swept()
    if retention > timedelta(0):
        swept = _sweep_ended(factory, before=now - retention, idle_timeout=idle_timeout)
    if failed_retention > timedelta(0):
        failed = OutboxMessage.failed_at < now - failed_retention
        swept = replace(swept, failed_messages=_sweep_table(factory, OutboxMessage.id, failed))
    if swept.total:
        log.info(
            "swept %d ended sessions, %d expired tokens, %d expired TOTP enrollments, "
            "%d sent messages, %d failed messages",
            swept.sessions,
            swept.user_tokens,
            swept.totp_enrollments,
            swept.outbox_messages,
            swept.failed_messages,
        )
    return swept


def _sweep_ended(
    factory: sessionmaker[DbSession], *, before: datetime, idle_timeout: timedelta
) -> Swept:
    ended = or_(
        Session.revoked_at < before,
        Session.expires_at < before,
        Session.last_used_at < before - idle_timeout,
    )
    return Swept(
        sessions=_sweep_table(factory, Session.id, ended),
        user_tokens=_sweep_table(factory, UserToken.id, UserToken.expires_at < before),
        totp_enrollments=_sweep_table(
            factory,
            TotpFactor.id,
            TotpFactor.confirmed_at.is_(None) & (TotpFactor.expires_at < before),
        ),
        outbox_messages=_sweep_table(
            factory, OutboxMessage.id, OutboxMessage.completed_at < before
        ),
    )


def delete_batch(
    session: DbSession,
    key: InstrumentedAttribute[Any],
    where: ColumnElement[bool],
    *,
    limit: int,
) -> int:
    """Delete up to ``limit`` rows matching ``where`` in one statement (rows that point at them
    with ON DELETE CASCADE go too); on PostgreSQL, rows another transaction holds are skipped."""
    batch = select(key).where(where).limit(limit).with_for_update(skip_locked=True)
    result = session.execute(
        delete(key.class_).where(key.in_(batch)),
        execution_options={"synchronize_session": False},
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _sweep_table(
    factory: sessionmaker[DbSession], key: InstrumentedAttribute[Any], where: ColumnElement[bool]
) -> int:
    """``delete_batch`` in a transaction of its own until a batch comes back short, or
    MAX_BATCHES times; return how many rows went."""
    total = 0
    for _ in range(MAX_BATCHES):
        with factory.begin() as session:
            deleted = delete_batch(session, key, where, limit=BATCH)
        total += deleted
        if deleted < BATCH:
            break
    return total
