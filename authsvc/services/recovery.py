"""Single-use recovery codes: ten per set, shown once, stored only as keyed hashes.

Storage follows OWASP ASVS 5.0 requirement 6.5.2 (see ``authsvc.crypto.recovery``): 120-bit codes
under HMAC-SHA-256 with a key derived from the key ring, compared in constant time.

A used code signs in like a TOTP code and is reported as amr ``otp``: RFC 8176 has no value for
look-up secrets, and a recovery code is a one-time password in its sense (single use, never
repeated). The audit trail tells the two apart (``mfa.recovery_code_used``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    ScalarSelect,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto import recovery as codes
from authsvc.errors import InvalidMfa, InvalidRequest, Unauthenticated
from authsvc.models import RecoveryCode, User
from authsvc.services import audit, notices, throttle
from authsvc.services.context import Client, Deps

AMR = "otp"
LOW_THRESHOLD = 3  # at or below this many unused codes the user is told (profile and one mail)
_MAC_PURPOSE = "recovery-code"

notices.register(
    "recovery_code_used",
    "A recovery code was used",
    "A recovery code was used to confirm a sign-in or a password reset of your account at "
    "{when} UTC. Each code works once; {remaining} unused codes remain.\n\n"
    "If it was not you, reset your password and generate new recovery codes at once.\n",
)
notices.register(
    "recovery_codes_low",
    "You are running out of recovery codes",
    "Only {remaining} unused recovery codes are left for your account. Generate a new set "
    "(the old codes stop working) while you can still sign in.\n",
)
notices.register(
    "recovery_codes_regenerated",
    "New recovery codes were generated",
    "A new set of recovery codes was generated for your account at {when} UTC; the previous "
    "codes no longer work.\n\nIf it was not you, reset your password at once.\n",
)


def _affected(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE."""
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def is_low(remaining_codes: int) -> bool:
    return remaining_codes <= LOW_THRESHOLD


def remaining(session: DbSession, *, user_id: str) -> int:
    return int(session.scalar(select(remaining_count(user_id))) or 0)


def remaining_count(user_id: str | ColumnElement[str]) -> ScalarSelect[int]:
    """The user's unused codes, as an expression for a larger query."""
    return (
        select(func.count())
        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        .scalar_subquery()
    )


def _hash(deps: Deps, *, user_id: str, code: str) -> str:
    return codes.code_hash(deps.keyring.mac_key(_MAC_PURPOSE), user_id=user_id, code=code)


def lock_second_factors(session: DbSession, *, user_id: str) -> None:
    """Serialise changes to one user's factors and codes (their user row is the lock): two
    regenerations, or the removal of the last two factors, at once on PostgreSQL would each
    see the other's rows and leave two sets, or codes with no factor. SQLite takes its write
    lock at BEGIN, so there this changes nothing."""
    if session.scalar(select(User.id).where(User.id == user_id).with_for_update()) is None:
        # Deleted meanwhile (the caller had read it before it waited here).
        raise Unauthenticated("The account no longer exists")


def replace(session: DbSession, deps: Deps, *, user_id: str, now: datetime) -> tuple[str, ...]:
    """A fresh set: every earlier code of the user dies. Return the codes (shown once).
    The caller holds ``lock_second_factors``."""
    fresh = codes.generate()
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    session.add_all(
        RecoveryCode(
            user_id=user_id,
            created_at=now,
            code_hash=_hash(deps, user_id=user_id, code=codes.normalize(code) or ""),
        )
        for code in fresh
    )
    session.flush()
    return fresh


def issue_initial(
    session: DbSession, deps: Deps, *, user_id: str, client: Client, now: datetime
) -> tuple[str, ...] | None:
    """The first set, when a user who has none confirms a factor; None if a set exists.
    The caller, adding that factor, holds ``lock_second_factors``."""
    existing = session.scalar(
        select(RecoveryCode.id).where(RecoveryCode.user_id == user_id).limit(1)
    )
    if existing is not None:
        return None
    fresh = replace(session, deps, user_id=user_id, now=now)
    audit.record(
        session,
        type="mfa.recovery_codes_generated",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"count": len(fresh), "first": True},
    )
    return fresh


def regenerate(
    session: DbSession, deps: Deps, *, user_id: str, client: Client, now: datetime
) -> tuple[str, ...]:
    """Replace the set on the user's request (the caller checks the re-auth window)."""
    lock_second_factors(session, user_id=user_id)
    fresh = replace(session, deps, user_id=user_id, now=now)
    audit.record(
        session,
        type="mfa.recovery_codes_generated",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"count": len(fresh), "first": False},
    )
    user = session.get(User, user_id)
    assert user is not None
    notices.send(
        session,
        deps,
        to=user.email,
        template="recovery_codes_regenerated",
        now=now,
        when=now.strftime("%Y-%m-%d %H:%M"),
    )
    return fresh


def delete_all(session: DbSession, *, user_id: str) -> int:
    result = session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    return _affected(result)


def normalize_code(code: str) -> str:
    """The canonical form of a typed code, or InvalidRequest: a code of the wrong shape is a
    client's mistake, refused before any attempt or limit is counted (``factors.FactorProof``)."""
    normalized = codes.normalize(code)
    if normalized is None:
        raise InvalidRequest(
            "recovery_code is not in the format of a recovery code", field="recovery_code"
        )
    return normalized


def use_code(
    session: DbSession, deps: Deps, *, user_id: str, code: str, client: Client, now: datetime
) -> str:
    """Spend one unused code of the user (atomically), or raise InvalidMfa."""
    normalized = normalize_code(code)
    # Throttled as TOTP codes are, on every path: a reset link would otherwise let its holder
    # guess codes (and write an audit event per guess) without limit.
    who = throttle.Who(now=now, client=client, action="recovery_code", user_id=user_id)
    checks = ((throttle.MFA_CODES, (user_id, "recovery")), (throttle.MFA_FAILURES, (user_id,)))
    throttle.hit_each(session, deps, checks, who=who)
    rows = session.execute(
        select(RecoveryCode.id, RecoveryCode.code_hash)
        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        .order_by(RecoveryCode.id)
    ).all()
    index = codes.matches(
        [row.code_hash for row in rows], _hash(deps, user_id=user_id, code=normalized)
    )
    if index is None:
        raise InvalidMfa()
    spent = _affected(
        session.execute(
            update(RecoveryCode)
            .where(RecoveryCode.id == rows[index].id, RecoveryCode.used_at.is_(None))
            .values(used_at=now)
        )
    )
    if spent != 1:
        raise InvalidMfa()  # a concurrent request spent it first
    left = remaining(session, user_id=user_id)
    audit.record(
        session,
        type="mfa.recovery_code_used",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"remaining": left},
    )
    user = session.get(User, user_id)
    assert user is not None
    notices.send(
        session,
        deps,
        to=user.email,
        template="recovery_code_used",
        now=now,
        when=now.strftime("%Y-%m-%d %H:%M"),
        remaining=str(left),
    )
    if is_low(left) and _claim_low_notice(session, user_id=user_id, now=now):
        notices.send(
            session,
            deps,
            to=user.email,
            template="recovery_codes_low",
            now=now,
            remaining=str(left),
        )
    return AMR


def _claim_low_notice(session: DbSession, *, user_id: str, now: datetime) -> bool:
    """True exactly once per set: the first request to mark the set wins. The mark is on one
    row, the set's first: two codes used at once each hold their own row, and marking every
    row would have each wait for the other's (a deadlock on PostgreSQL)."""
    first = (
        select(func.min(RecoveryCode.id)).where(RecoveryCode.user_id == user_id).scalar_subquery()
    )
    result = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.id == first, RecoveryCode.low_notice_at.is_(None))
        .values(low_notice_at=now)
    )
    return _affected(result) > 0
