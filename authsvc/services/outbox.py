"""Background work written in the same transaction as its cause; payloads encrypted."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import DecryptionFailed, Keyring
from authsvc.logging_setup import scrub
from authsvc.models import OutboxMessage
from authsvc.services.context import Deps
from authsvc.services.reencryption import reencrypt_rows

_AAD = b"outbox"


def enqueue(
    session: DbSession,
    keyring: Keyring,
    *,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    delay: timedelta = timedelta(0),
) -> OutboxMessage:
    message = OutboxMessage(
        kind=kind,
        payload_ciphertext=keyring.encrypt(json.dumps(payload).encode(), associated_data=_AAD),
        created_at=now,
        available_at=now + delay,
        attempts=0,
    )
    session.add(message)
    return message


def payload_of(keyring: Keyring, message: OutboxMessage) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        keyring.decrypt(message.payload_ciphertext, associated_data=_AAD)
    )
    return data


def enqueue_email(
    session: DbSession, keyring: Keyring, *, to: str, subject: str, text: str, now: datetime
) -> OutboxMessage:
    return enqueue(
        session,
        keyring,
        kind="email",
        payload={"to": to, "subject": subject, "text": text},
        now=now,
    )


def reencrypt_pending_batch(
    session: DbSession, keyring: Keyring, *, after_id: int, batch: int
) -> tuple[int, int | None, list[int]]:
    """Re-encrypt undelivered payloads under the primary key, ``batch`` rows after
    ``after_id``; return (rows re-encrypted, last id seen or None when done, ids of parked
    messages left as they are). A message parked as failed that no key of the ring opens
    (the worker parks it for that reason) is left alone: no rotation can mend it, and it
    must not stop the rotation of the messages after it."""
    rows = session.execute(
        select(OutboxMessage.id, OutboxMessage.payload_ciphertext, OutboxMessage.failed_at)
        .where(OutboxMessage.id > after_id, OutboxMessage.completed_at.is_(None))
        .order_by(OutboxMessage.id)
        .limit(batch)
    ).all()
    movable, left = [], []
    for row in rows:
        if row.failed_at is not None and not _opens(keyring, row.payload_ciphertext):
            left.append(row.id)
        else:
            movable.append((row.id, row.payload_ciphertext))
    count = reencrypt_rows(
        session,
        keyring,
        key=OutboxMessage.id,
        column=OutboxMessage.payload_ciphertext,
        rows=movable,
        associated_data=lambda _id: _AAD,
    )
    return count, (rows[-1].id if rows else None), left


def _opens(keyring: Keyring, blob: bytes) -> bool:
    try:
        keyring.decrypt(blob, associated_data=_AAD)
    except DecryptionFailed:
        return False
    return True


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest_pending_at: datetime | None
    failed: int


def stats(session: DbSession) -> OutboxStats:
    pending, oldest = session.execute(
        select(func.count(), func.min(OutboxMessage.created_at)).where(
            OutboxMessage.completed_at.is_(None), OutboxMessage.failed_at.is_(None)
        )
    ).one()
    failed = session.scalar(select(func.count()).where(OutboxMessage.failed_at.is_not(None)))
    return OutboxStats(pending=pending, oldest_pending_at=oldest, failed=failed or 0)


@dataclass(frozen=True, slots=True)
class Parked:
    """A message parked as failed, as an operator sees it: never its payload."""

    id: int
    kind: str
    failed_at: datetime
    attempts: int
    last_error: str  # masked (scrub), on one line


def parked(session: DbSession, *, limit: int) -> tuple[list[Parked], int]:
    """The first ``limit`` messages parked as failed, oldest first, and how many there are."""
    total = session.scalar(select(func.count()).where(OutboxMessage.failed_at.is_not(None)))
    rows = session.execute(
        select(
            OutboxMessage.id,
            OutboxMessage.kind,
            OutboxMessage.failed_at,
            OutboxMessage.attempts,
            OutboxMessage.last_error,
        )
        .where(OutboxMessage.failed_at.is_not(None))
        .order_by(OutboxMessage.failed_at, OutboxMessage.id)
        .limit(limit)
    ).all()
    # Masked again as it is shown: last_error is masked when written, but it is a column that
    # an older release, or a hand, may have filled.
    return [
        Parked(
            id=row.id,
            kind=row.kind,
            failed_at=row.failed_at,
            attempts=row.attempts,
            last_error=" ".join(scrub(row.last_error or "").split()) or "-",
        )
        for row in rows
    ], total or 0


def unpark(session: DbSession, *, ids: list[int] | None, now: datetime) -> list[int]:
    """Put messages parked as failed back in the queue, due at ``now`` with their attempts
    reset: those of ``ids``, or every one when it is None. Return the ids put back; a message
    that is not parked (sent, pending, swept, or never there) is left alone and not in them."""
    where = [OutboxMessage.failed_at.is_not(None)]
    if ids is not None:
        where.append(OutboxMessage.id.in_(ids))
    chosen = list(
        session.scalars(
            select(OutboxMessage.id).where(*where).order_by(OutboxMessage.id).with_for_update()
        )
    )
    for start in range(0, len(chosen), 1000):  # a bounded IN list, however many are parked
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(chosen[start : start + 1000]))
            .values(failed_at=None, available_at=now, attempts=0, last_error=None),
            execution_options={"synchronize_session": False},
        )
    return chosen


class PermanentFailure(Exception):  # noqa: N818 - named for the outcome
    """The message can never succeed (e.g. a refused recipient): park it as failed."""


# A handler processes one message inside the worker's transaction (authsvc.mail.worker).
Handler = Callable[[DbSession, Deps, dict[str, Any], datetime], None]


@dataclass(frozen=True, slots=True)
class External:
    """A handler that only talks to the outside world (an SMTP server, a webhook) and writes
    nothing: the worker claims the message, commits, and only then calls ``deliver``, so that
    no transaction stays open (on SQLite: no write lock is held) while a server is slow."""

    deliver: Callable[[Deps, dict[str, Any], datetime], None]
