"""Background work written in the same transaction as its cause; payloads encrypted."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import DecryptionFailed, Keyring
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
