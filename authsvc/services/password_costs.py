"""The costs of stored password hashes, so that every failed login takes as long as a failed
check of the costliest would.

An account imported with a bcrypt-12 hash answers a wrong password in bcrypt's time (about ten
times an Argon2id check at the default settings) until its owner signs in and it is rehashed;
an unknown email answers in a current check's time. Told apart, they would give away which
emails are registered. Each cost of stored hash other than the current settings' is recorded
(``password_hash_costs``) when hashes are imported, when a process starts (its own settings,
which become such a cost once they change) and when a login meets one not yet recorded (one
imported before costs were recorded). Each process times a check of every recorded cost
(``PasswordHasher.calibrate``) and pads failed checks to the costliest (``refresh``, at most
every ``REFRESH_SECONDS``). A cost no stored hash has any more is deleted (``prune``, from the
worker's housekeeping), and failed logins get faster again.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.passwords import PasswordHasher, cost_prefix, sample_hash
from authsvc.db import rowcount
from authsvc.models import PasswordHashCost, User, UserToken

REFRESH_SECONDS = 60.0

_read_at: weakref.WeakKeyDictionary[PasswordHasher, float] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def record(
    session: DbSession, hashes: Iterable[str], *, now: datetime, own: str | None = None
) -> list[str]:
    """Record the costs of ``hashes`` not recorded yet, except ``own`` (the current
    settings'); return the prefixes added."""
    prefixes = {p for h in hashes if (p := cost_prefix(h)) is not None and p != own}
    return _record_prefixes(session, prefixes, now=now)


def _record_prefixes(session: DbSession, prefixes: set[str], *, now: datetime) -> list[str]:
    if not prefixes:
        return []
    known = set(
        session.scalars(
            select(PasswordHashCost.prefix).where(PasswordHashCost.prefix.in_(prefixes))
        )
    )
    added = sorted(prefixes - known)
    for prefix in added:
        _insert(session, prefix, sample_hash(prefix), now=now)
    return added


def _insert(session: DbSession, prefix: str, sample: str, *, now: datetime) -> None:
    try:
        with session.begin_nested():  # another process may record it at the same moment
            session.add(PasswordHashCost(prefix=prefix, sample_hash=sample, recorded_at=now))
    except IntegrityError:
        pass


def record_own(session: DbSession, hasher: PasswordHasher, *, now: datetime) -> None:
    """The current settings' cost, so that hashes made under them are padded to after the
    settings change (at start: a process with new settings records its own cost too)."""
    _record_prefixes(session, {hasher.own_cost()}, now=now)


def refresh(session: DbSession, hasher: PasswordHasher) -> None:
    """Bring ``hasher``'s calibration up to the recorded costs, at most every
    ``REFRESH_SECONDS`` (a cost seen for the first time is timed now: a few checks)."""
    clock = time.monotonic()
    if clock < _read_at.get(hasher, float("-inf")) + REFRESH_SECONDS:
        return
    rows = session.execute(select(PasswordHashCost.prefix, PasswordHashCost.sample_hash)).all()
    with _lock:
        own = hasher.own_cost()
        recorded = {row.prefix for row in rows}
        for prefix in hasher.calibrated() - recorded:
            hasher.forget(prefix)
        for row in rows:
            if row.prefix != own:
                hasher.calibrate(row.prefix, row.sample_hash)
        _read_at[hasher] = clock


def note_unknown(
    session: DbSession, hasher: PasswordHasher, stored_hash: str, *, now: datetime
) -> None:
    """After a check of ``stored_hash``: record its cost if it is neither the current
    settings' nor recorded (an import from before costs were recorded), and calibrate. Each
    needs a hashing slot free now (the check has decided the answer already): without one, the
    cost is recorded by a later login, and calibrated by the next ``refresh`` once recorded."""
    prefix = hasher.unknown_cost(stored_hash)
    if prefix is None:
        return
    sample = session.scalar(
        select(PasswordHashCost.sample_hash).where(PasswordHashCost.prefix == prefix)
    )
    if sample is None:
        sample = hasher.sample(prefix)
        if sample is None:
            return
        _insert(session, prefix, sample, now=now)
    hasher.calibrate(prefix, sample, wait=False)


def prune(session: DbSession, hasher: PasswordHasher) -> list[str]:
    """Delete the recorded costs that no stored hash (an account's, or a pending sign-up's)
    has any more, except the current settings'; return those this call deleted. A query or
    two per recorded cost: each stops at the first hash found, and reads the whole table only
    for a cost that is gone."""
    own = hasher.own_cost()
    gone = []
    for prefix in session.scalars(select(PasswordHashCost.prefix)).all():
        if prefix == own:
            continue
        if not _stored(session, prefix):
            # Another instance's housekeeping may have deleted it since it was listed.
            deleted = session.execute(
                delete(PasswordHashCost).where(PasswordHashCost.prefix == prefix)
            )
            if rowcount(deleted):
                gone.append(prefix)
    return gone


def _stored(session: DbSession, prefix: str) -> bool:
    """Whether an account's hash, or a sign-up's waiting for its link (it becomes the
    account's when the link is opened), has the cost ``prefix``."""
    length = len(prefix)
    for found in (
        select(User.id).where(func.substr(User.password_hash, 1, length) == prefix),
        select(UserToken.id).where(
            UserToken.used_at.is_(None),
            func.substr(UserToken.pending_password_hash, 1, length) == prefix,
        ),
    ):
        if session.scalar(found.limit(1)) is not None:
            return True
    return False
