"""Reading the security event trail: the admin's filtered view and a user's own events."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.orm import Session as DbSession

from authsvc.models.ops import AuditEvent

# Events a user never sees in their own trail (internal bookkeeping or operator matters).
_HIDDEN_FROM_USERS = frozenset(
    {
        "signup.created",
        "alert.raised",
        "audit.pruned",
        "admin.user_lookup",
        "admin.user_viewed",
        "admin.sessions_viewed",
    }
)
# Details a user may see about their own events.
_USER_DETAIL_KEYS = frozenset(
    {
        "amr",
        "method",
        "name",
        "factor_type",
        "sessions_revoked",
        "session_id",
        "reason",
        "mode",
    }
)


# Free text an operator wrote (a force-reset's reason, say) is for the operators' trail; on
# the user's own events ``reason`` is a machine code (a refused security key's, say). So are
# the operator's own address and client, which an operator's event records.
_OPERATOR_EVENT_PREFIXES = ("admin.", "breach.")


@dataclass(frozen=True, slots=True)
class EventView:
    id: str
    occurred_at: datetime
    type: str
    outcome: str
    user_id: str | None
    admin_key_id: str | None
    email_hash: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UserEventView:
    id: str
    occurred_at: datetime
    type: str
    outcome: str
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventFilter:
    user_id: str | None = None
    types: tuple[str, ...] = ()  # exact types; an entry ending in "*" is a prefix
    outcome: str | None = None
    email_hash: str | None = None
    ip: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True, slots=True)
class Page:
    events: list[Any]
    next_cursor: str | None


def _details(row: AuditEvent) -> dict[str, Any]:
    try:
        value = json.loads(row.details or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def list_events(
    session: DbSession, *, where: EventFilter, before_id: int | None, limit: int
) -> Page:
    """Newest first; ``next_cursor`` continues with older events."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if where.user_id is not None:
        query = query.where(AuditEvent.user_id == where.user_id)
    if where.types:
        exact = [t for t in where.types if not t.endswith("*")]
        prefixes = [t[:-1] for t in where.types if t.endswith("*")]
        conditions: list[ColumnElement[bool]] = [AuditEvent.type.in_(exact)] if exact else []
        conditions += [AuditEvent.type.startswith(p, autoescape=True) for p in prefixes]
        query = query.where(or_(*conditions))
    if where.outcome is not None:
        query = query.where(AuditEvent.outcome == where.outcome)
    if where.email_hash is not None:
        query = query.where(AuditEvent.email_hash == where.email_hash)
    if where.ip is not None:
        query = query.where(AuditEvent.ip == where.ip)
    if where.since is not None:
        query = query.where(AuditEvent.occurred_at >= where.since)
    if where.until is not None:
        query = query.where(AuditEvent.occurred_at < where.until)
    return _page(
        session,
        query,
        limit,
        lambda row: EventView(
            id=str(row.id),
            occurred_at=row.occurred_at,
            type=row.type,
            outcome=row.outcome,
            user_id=row.user_id,
            admin_key_id=row.admin_key_id,
            email_hash=row.email_hash,
            ip=row.ip,
            user_agent=row.user_agent,
            details=_details(row),
        ),
    )


def security_events(session: DbSession, *, user_id: str, before_id: int | None, limit: int) -> Page:
    """A user's own trail: logins (with IP and user agent), factor changes, resets, revocations."""
    query = (
        select(AuditEvent)
        .where(AuditEvent.user_id == user_id, AuditEvent.type.not_in(_HIDDEN_FROM_USERS))
        .order_by(AuditEvent.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return _page(
        session,
        query,
        limit,
        _user_view,
    )


def _user_view(row: AuditEvent) -> UserEventView:
    """An event as its user sees it: an operator's free text, address and client left out."""
    operator = row.type.startswith(_OPERATOR_EVENT_PREFIXES)
    return UserEventView(
        id=str(row.id),
        occurred_at=row.occurred_at,
        type=row.type,
        outcome=row.outcome,
        ip=None if operator else row.ip,
        user_agent=None if operator else row.user_agent,
        details={
            k: v
            for k, v in _details(row).items()
            if k in _USER_DETAIL_KEYS and not (operator and k == "reason")
        },
    )


def _page(
    session: DbSession, query: Select[Any], limit: int, view: Callable[[AuditEvent], Any]
) -> Page:
    """One page of ``query`` (which asks for ``limit + 1`` rows, newest first): the rows as
    views, and the cursor to the next page when there is one."""
    rows = session.scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        events=[view(row) for row in rows],
        next_cursor=str(rows[-1].id) if more and rows else None,
    )
