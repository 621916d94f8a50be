"""The security event trail: one hash-chained row per event, written in the caller's
transaction."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import Keyring
from authsvc.models import AuditEvent
from authsvc.services.context import Client

GENESIS = "0" * 64


def email_digest(keyring: Keyring, email: str) -> str:
    """Keyed hash of a normalised email: correlates attempts without storing the address."""
    return keyring.mac("audit-email", email.encode("utf-8", "surrogatepass"))


def row_digest(prev_hash: str, event: AuditEvent) -> str:
    body = {
        "prev": prev_hash,
        "at": event.occurred_at.isoformat(),
        "type": event.type,
        "outcome": event.outcome,
        "user_id": event.user_id,
        "admin_key_id": event.admin_key_id,
        "email_hash": event.email_hash,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "details": event.details,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def record(
    session: DbSession,
    *,
    type: str,  # noqa: A002 - the event type is the column's name
    outcome: str,
    now: datetime,
    client: Client | None = None,
    user_id: str | None = None,
    admin_key_id: str | None = None,
    email_hash: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain. PostgreSQL serialises writers with an advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7263541)"))
    prev = session.scalar(select(AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1))
    event = AuditEvent(
        occurred_at=now,
        type=type,
        outcome=outcome,
        user_id=user_id,
        admin_key_id=admin_key_id,
        email_hash=email_hash,
        ip=(client.ip or None) if client else None,
        user_agent=(client.user_agent[:256] or None) if client else None,
        details=json.dumps(details or {}, sort_keys=True, default=str),
        prev_hash=prev or GENESIS,
    )
    event.row_hash = row_digest(event.prev_hash, event)
    session.add(event)
    session.flush()
    return event
