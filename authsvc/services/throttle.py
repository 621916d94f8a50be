"""Rate-limit checks made inside a request's transaction: a refusal is audited as a
``ratelimit.hit`` event (DESIGN.md: every limit hit goes to the trail) and then raised."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import RateLimited
from authsvc.services import audit
from authsvc.services.context import Client, Deps


@dataclass(frozen=True, slots=True)
class Who:
    """What the audit event of a refusal says: when, who asked, for what, about which user."""

    now: datetime
    client: Client
    action: str
    user_id: str | None = None


def hit(session: DbSession, deps: Deps, policy: str, *parts: str, who: Who) -> None:
    """Count one event against ``policy``; refuse (audited) when it was already exhausted."""
    try:
        deps.limiter.hit(policy, *parts)
    except RateLimited as exc:
        _audit(session, exc, who)
        raise


def test(session: DbSession, deps: Deps, policy: str, *parts: str, who: Who) -> None:
    """Refuse (audited) when one more event would exceed ``policy``; count nothing."""
    try:
        deps.limiter.test(policy, *parts)
    except RateLimited as exc:
        _audit(session, exc, who)
        raise


def _audit(session: DbSession, refusal: RateLimited, who: Who) -> None:
    audit.record_limit_hit(
        session,
        refusal,
        now=who.now,
        client=who.client,
        user_id=who.user_id,
        details={"action": who.action},
    )
