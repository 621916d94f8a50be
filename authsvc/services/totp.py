"""TOTP factors (RFC 6238)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidMfa
from authsvc.services.context import Client, Deps

if TYPE_CHECKING:
    from authsvc.services.factors import FactorInfo


def has_active(session: DbSession, *, user_id: str) -> bool:
    return False


def verify_code(session: DbSession, deps: Deps, *, user_id: str, code: str, client: Client,
                now: datetime) -> str:
    raise InvalidMfa()


def list_factors(session: DbSession, *, user_id: str) -> list[FactorInfo]:
    return []
