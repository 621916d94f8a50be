"""Rate-limit checks made inside a request's transaction: a refusal is audited as a
``ratelimit.hit`` event (DESIGN.md: every limit hit goes to the trail) and then raised."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import RateLimited
from authsvc.services import audit
from authsvc.services.context import Client, Deps

# Second-factor codes (TOTP and recovery) on every path that checks one (login, password
# reset): a counter per account and kind, and the daily cap on wrong codes, counted like wrong
# passwords (AUTHSVC_LIMIT_FAILURES_PER_ACCOUNT; NIST SP 800-63B 5.2.2): without it 10 a minute
# would allow 14,400 guesses a day.
MFA_CODES = "mfa_account"
MFA_FAILURES = "mfa_failures"
# Requests that have mail sent to an address given in them (sign-up, forgotten password), per
# mailbox: the spellings of one address that hold for every provider (case, +tags, a domain in
# Unicode or punycode), and Gmail's dots, count against one limit, AUTHSVC_LIMIT_EMAIL, so that a
# mailbox is sent no more than one of its addresses could be. Other providers' own aliases (a
# `-tag` where an account owner turned them on) count apart.
MAILBOX = "mailbox"
# Admin API keys that open nothing, per client address (an IPv4 address or IPv6 /64): keys are
# too long to guess, but each wrong one writes an audit event, and a client that keeps
# presenting them is probing or broken.
ADMIN_KEY_FAILURES = "admin_key_failures"


@dataclass(frozen=True, slots=True)
class Who:
    """What the audit event of a refusal says: when, who asked, for what, about whom."""

    now: datetime
    client: Client
    action: str
    user_id: str | None = None
    email_hash: str | None = None


def hit(session: DbSession, deps: Deps, policy: str, *parts: str, who: Who) -> None:
    """Count one event against ``policy``; refuse (audited) when it was already exhausted."""
    _enforce(deps.limiter.hit, session, policy, parts, who)


Check = tuple[str, tuple[str, ...]]  # a policy, and the parts of its key


def hit_each(session: DbSession, deps: Deps, checks: Sequence[Check], who: Who) -> None:
    """``hit`` each of ``checks`` in turn; one refused, the later ones are not counted, and the
    refusal's Retry-After is the longest wait of any of them that would refuse one more event.
    With the first refusal's own wait, a client that waited just that long (the /ui/ page says
    "try again in N seconds") was refused again by the next policy: a per-IP minute, then the
    per-account day."""
    for index, (policy, parts) in enumerate(checks):
        try:
            deps.limiter.hit(policy, *parts)
        except RateLimited as refusal:
            waits = [refusal.retry_after or 1]
            for other, other_parts in (*checks[:index], *checks[index + 1 :]):
                try:
                    deps.limiter.test(other, *other_parts)
                except RateLimited as also:
                    waits.append(also.retry_after or 1)
            refusal.retry_after = max(waits)
            _record(session, refusal, who)
            raise


def test(session: DbSession, deps: Deps, policy: str, *parts: str, who: Who) -> None:
    """Refuse (audited) when one more event would exceed ``policy``; count nothing."""
    _enforce(deps.limiter.test, session, policy, parts, who)


def _enforce(
    check: Callable[..., None], session: DbSession, policy: str, parts: tuple[str, ...], who: Who
) -> None:
    try:
        check(policy, *parts)
    except RateLimited as refusal:
        _record(session, refusal, who)
        raise


def _record(session: DbSession, refusal: RateLimited, who: Who) -> None:
    audit.record_limit_hit(
        session,
        refusal,
        now=who.now,
        client=who.client,
        user_id=who.user_id,
        email_hash=who.email_hash,
        details={"action": who.action},
    )
