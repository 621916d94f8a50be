"""Audit events for admins and users' own security events."""

from __future__ import annotations

import re
from datetime import datetime

from flask import Blueprint, Response, request

from authsvc.errors import InvalidRequest
from authsvc.http.auth import principal, require_admin, require_user
from authsvc.http.io import (
    DIGITS,
    db,
    deps,
    only_query,
    query_limit,
    respond,
    takes_query,
    transactional,
)
from authsvc.ratelimit import client_address
from authsvc.services import accounts, audit, audit_views
from authsvc.times import parse_time

bp = Blueprint("audit", __name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_TYPES = 20
_TYPE = re.compile(r"^[a-z0-9_.]{1,64}\*?$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ADMIN_PARAMS = frozenset(
    {"user_id", "type", "outcome", "email", "ip", "since", "until", "limit", "cursor"}
)
_USER_PARAMS = frozenset({"limit", "cursor"})


def _time(name: str) -> datetime | None:
    raw = request.args.get(name)
    return None if raw is None else parse_time(raw, field=name)


def _limit() -> int:
    return query_limit(default=DEFAULT_LIMIT, maximum=MAX_LIMIT)


def _cursor() -> int | None:
    raw = request.args.get("cursor")
    if raw is None:
        return None
    # Event ids are 64-bit integers: at most 18 digits keeps every value inside that range.
    if not DIGITS.fullmatch(raw) or len(raw) > 18:
        raise InvalidRequest(
            "cursor must be a next_cursor value from an earlier page", field="cursor"
        )
    return int(raw)


def _text(name: str, pattern: re.Pattern[str] | None = None, max_length: int = 64) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not raw or len(raw) > max_length or (pattern is not None and not pattern.fullmatch(raw)):
        raise InvalidRequest(f"{name} is not valid", field=name)
    return raw


def _address(raw: str | None) -> str | None:
    """An address as the trail records it (``client_address``: one spelling per address), so
    that ``2001:DB8::1`` or ``::ffff:192.0.2.1`` finds the events of ``2001:db8::1`` or
    ``192.0.2.1``."""
    return None if raw is None else client_address(raw)


@bp.get("/admin/v1/audit-events")
@transactional
@require_admin
def list_audit_events() -> Response:
    only_query(_ADMIN_PARAMS, repeatable={"type": MAX_TYPES})
    types = tuple(request.args.getlist("type"))
    if not all(_TYPE.fullmatch(t) for t in types):
        raise InvalidRequest(
            "type must be an event type such as login.failure, or a prefix "
            "ending in * such as login.*",
            field="type",
        )
    since, until = _time("since"), _time("until")
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be earlier than until", field="since")
    email = _text("email", max_length=320)
    where = audit_views.EventFilter(
        user_id=_text("user_id", _ID),
        types=types,
        outcome=_text("outcome", re.compile(r"^[A-Za-z0-9_.-]{1,32}$")),
        email_hash=(
            audit.email_digest(deps().keyring, accounts.normalize_email(email))
            if email is not None
            else None
        ),
        ip=_address(_text("ip", re.compile(r"^[0-9A-Fa-f.:]{2,45}$"))),
        since=since,
        until=until,
    )
    page = audit_views.list_events(db(), where=where, before_id=_cursor(), limit=_limit())
    return respond(page)


@bp.get("/v1/me/security-events")
@takes_query(*_USER_PARAMS)
@transactional
@require_user
def list_security_events() -> Response:
    page = audit_views.security_events(
        db(), user_id=principal().user_id, before_id=_cursor(), limit=_limit()
    )
    return respond(page)
