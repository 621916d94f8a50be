"""Single-use recovery codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidMfa
from authsvc.services.context import Client, Deps


def remaining(session: DbSession, *, user_id: str) -> int:
    return 0


def use_code(session: DbSession, deps: Deps, *, user_id: str, code: str, client: Client,
             now: datetime) -> str:
    raise InvalidMfa()
