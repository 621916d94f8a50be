"""TOTP factors (RFC 6238): enrollment, confirmation, the login check, renaming and removal.

Secrets are AES-GCM encrypted under the key ring and bound to their row id. A time step, once
accepted for a factor, is never accepted again: the claim is one conditional
``UPDATE ... WHERE last_used_step < :step`` whose row count settles races between requests and
between instances sharing the database.
"""

from __future__ import annotations

import io
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import segno
from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Exists,
    Result,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from authsvc.crypto import totp as otp
from authsvc.crypto.keyring import DecryptionFailed, Keyring, keyring_header
from authsvc.db import new_id
from authsvc.errors import (
    Conflict,
    FactorLimitReached,
    InvalidCode,
    InvalidMfa,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from authsvc.models import TotpFactor, User
from authsvc.services import audit, factors, notices, recovery, throttle
from authsvc.services.context import Client, Deps
from authsvc.services.reencryption import reencrypt_rows

log = logging.getLogger("authsvc.totp")

AMR = "otp"  # RFC 8176: one-time password (RFC 6238)
DEFAULT_NAME = "Authenticator app"
NAME_MAX = 64
MAX_PENDING = 3  # unconfirmed enrollments per user; older ones are dropped
MAX_CONFIRM_ATTEMPTS = 10  # wrong codes before a pending factor is discarded

notices.register(
    "mfa_factor_added",
    "A second factor was added to your account",
    "{kind} was added to your account at {when} UTC. Your account lists your second factors "
    "with the names you gave them.\n\n"
    "If it was not you, reset your password and remove this factor at once.\n",
)


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """A pending factor: show the secret or the QR code once, then confirm with a code."""

    factor_id: str
    name: str
    secret: str
    otpauth_uri: str
    qr_svg: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TotpConfirmation:
    factor: factors.FactorInfo
    recovery_codes: tuple[str, ...] | None  # only when this confirmation created the first set


def _affected(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE."""
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def secret_aad(factor_id: str) -> bytes:
    """Associated data of a factor's ciphertext: a secret only opens in its own row."""
    return b"totp-secret:" + factor_id.encode()


def _info(row: TotpFactor) -> factors.FactorInfo:
    return factors.FactorInfo(
        id=row.id,
        type="totp",
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        passkey=False,
    )


def _active(user_id: str | ColumnElement[str]) -> tuple[ColumnElement[bool], ...]:
    return (TotpFactor.user_id == user_id, TotpFactor.confirmed_at.is_not(None))


def clean_name(raw: str | None, *, default: str | None = None) -> str:
    """A factor's display name: NFKC, single spaces, 1 to 64 printable characters."""
    if raw is None:
        if default is None:
            raise InvalidRequest("name is required", field="name")
        return default
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not name or len(name) > NAME_MAX:
        raise InvalidRequest(f"name must be 1 to {NAME_MAX} characters", field="name")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in name):
        raise InvalidRequest("name must contain printable characters only", field="name")
    return name


def qr_svg(uri: str) -> str:
    """The URI as a standalone SVG QR code (usable inline in HTML or as a data: URI)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(
        buffer,
        kind="svg",
        xmldecl=False,
        nl=False,
        scale=4,
        border=4,
        title="Scan with your authenticator app",
    )
    return buffer.getvalue().decode("utf-8")


def _secret(keyring: Keyring, *, factor_id: str, ciphertext: bytes) -> str | None:
    try:
        plain = keyring.decrypt(ciphertext, associated_data=secret_aad(factor_id))
        return plain.decode()
    except DecryptionFailed:
        log.error("TOTP factor %s cannot be decrypted with the configured keys", factor_id)
        return None


# --- queries -------------------------------------------------------------------------------


def has_active(session: DbSession, *, user_id: str) -> bool:
    return bool(session.scalar(select(active_exists(user_id))))


def active_exists(user_id: str | ColumnElement[str]) -> Exists:
    """Whether the user has a confirmed TOTP factor, as an expression for a larger query."""
    return exists().where(*_active(user_id))


def count_active(session: DbSession, *, user_id: str) -> int:
    return int(session.scalar(select(func.count()).where(*_active(user_id))) or 0)


def list_factors(session: DbSession, *, user_id: str) -> list[factors.FactorInfo]:
    rows = session.scalars(
        select(TotpFactor).where(*_active(user_id)).order_by(TotpFactor.created_at)
    )
    return [_info(row) for row in rows]


# --- enrollment ----------------------------------------------------------------------------


def enroll(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    name: str | None,
    client: Client,
    now: datetime,
) -> TotpEnrollment:
    """Create a pending factor; it becomes active only after ``confirm`` with a correct code."""
    user = session.get(User, user_id)
    if user is None:  # deleted since the bearer check, as in lock_second_factors
        raise Unauthenticated("The account no longer exists")
    name = clean_name(name, default=DEFAULT_NAME)
    recovery.lock_second_factors(session, user_id=user_id)  # enrollments at once count too
    if count_active(session, user_id=user_id) >= deps.settings.totp_max_factors:
        raise FactorLimitReached(
            f"At most {deps.settings.totp_max_factors} authenticator apps per account"
        )
    _drop_stale_pending(session, user_id=user_id, now=now)
    secret = otp.generate_secret()
    factor_id = new_id()
    expires_at = now + deps.settings.totp_pending_ttl
    session.add(
        TotpFactor(
            id=factor_id,
            user_id=user_id,
            name=name,
            secret_ciphertext=deps.keyring.encrypt(
                secret.encode(), associated_data=secret_aad(factor_id)
            ),
            created_at=now,
            expires_at=expires_at,
            confirm_attempts=0,
        )
    )
    session.flush()
    uri = otp.provisioning_uri(
        secret=secret, account_name=user.email, issuer=deps.settings.totp_issuer
    )
    audit.record(
        session,
        type="mfa.totp_enrollment",
        outcome="pending",
        now=now,
        client=client,
        user_id=user_id,
        details={"factor_id": factor_id},
    )
    return TotpEnrollment(
        factor_id=factor_id,
        name=name,
        secret=secret,
        otpauth_uri=uri,
        qr_svg=qr_svg(uri),
        expires_at=expires_at,
    )


def _drop_stale_pending(session: DbSession, *, user_id: str, now: datetime) -> None:
    pending = session.scalars(
        select(TotpFactor)
        .where(TotpFactor.user_id == user_id, TotpFactor.confirmed_at.is_(None))
        .order_by(TotpFactor.created_at.desc(), TotpFactor.id)
    ).all()
    stale = [
        row.id
        for index, row in enumerate(pending)
        if index >= MAX_PENDING - 1 or (row.expires_at is not None and row.expires_at <= now)
    ]
    if stale:
        session.execute(delete(TotpFactor).where(TotpFactor.id.in_(stale)))


def _pending(session: DbSession, *, user_id: str, factor_id: str, now: datetime) -> TotpFactor:
    row = session.get(TotpFactor, factor_id, populate_existing=True)
    if row is None or row.user_id != user_id:
        raise NotFound("No such TOTP factor")
    if row.confirmed_at is not None:
        raise Conflict("This factor is already confirmed")
    if row.expires_at is None or row.expires_at <= now:
        raise NotFound("This enrollment expired; start again")
    return row


def check_pending_code(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    factor_id: str,
    code: str,
    client: Client,
    now: datetime,
) -> int:
    """Verify a code against a pending factor; return the matched step. Changes nothing but
    the wrong-code counter (the pending factor is discarded after too many wrong codes)."""
    if otp.normalize_code(code) is None:
        raise InvalidRequest(f"code must be {otp.DIGITS} digits", field="code")
    # Locked before the pending factor is read: confirmations at once each see the attempts
    # the others counted (and the factor limit, below).
    recovery.lock_second_factors(session, user_id=user_id)
    row = _pending(session, user_id=user_id, factor_id=factor_id, now=now)
    if count_active(session, user_id=user_id) >= deps.settings.totp_max_factors:
        raise FactorLimitReached(
            f"At most {deps.settings.totp_max_factors} authenticator apps per account"
        )
    secret = _secret(deps.keyring, factor_id=row.id, ciphertext=row.secret_ciphertext)
    step = otp.verify(secret=secret, code=code, now=now) if secret is not None else None
    if step is not None:
        return step
    attempts = row.confirm_attempts + 1
    session.execute(
        update(TotpFactor)
        .where(TotpFactor.id == row.id)
        .values(confirm_attempts=TotpFactor.confirm_attempts + 1)
    )
    audit.record(
        session,
        type="mfa.totp_confirm",
        outcome="failure",
        now=now,
        client=client,
        user_id=user_id,
        details={"factor_id": row.id, "attempts": attempts},
    )
    if attempts >= MAX_CONFIRM_ATTEMPTS:
        session.execute(delete(TotpFactor).where(TotpFactor.id == row.id))
        raise InvalidCode("Too many wrong codes; this enrollment is discarded, start again")
    raise InvalidCode("The code is not correct; check the time on your device")


def activate(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    factor_id: str,
    step: int,
    client: Client,
    now: datetime,
) -> TotpConfirmation:
    """Make a checked pending factor active; the confirming step counts as used."""
    claimed = _affected(
        session.execute(
            update(TotpFactor)
            .where(
                TotpFactor.id == factor_id,
                TotpFactor.user_id == user_id,
                TotpFactor.confirmed_at.is_(None),
            )
            .values(confirmed_at=now, expires_at=None, last_used_step=step)
        )
    )
    if claimed != 1:
        # Confirmed by another request meanwhile, or cancelled (a removal of a pending factor
        # does not wait for the account's lock).
        if session.get(TotpFactor, factor_id, populate_existing=True) is None:
            raise NotFound("No such TOTP factor")
        raise Conflict("This factor is already confirmed")
    row = session.get(TotpFactor, factor_id)
    assert row is not None
    session.refresh(row)
    codes = recovery.issue_initial(session, deps, user_id=user_id, client=client, now=now)
    audit.record(
        session,
        type="mfa.totp_confirmed",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={"factor_id": factor_id, "recovery_codes_issued": codes is not None},
    )
    user = session.get(User, user_id)
    assert user is not None
    notices.send(
        session,
        deps,
        to=user.email,
        template="mfa_factor_added",
        now=now,
        kind="An authenticator app",
        when=now.strftime("%Y-%m-%d %H:%M"),
    )
    return TotpConfirmation(factor=_info(row), recovery_codes=codes)


def confirm(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    factor_id: str,
    code: str,
    client: Client,
    now: datetime,
) -> TotpConfirmation:
    step = check_pending_code(
        session, deps, user_id=user_id, factor_id=factor_id, code=code, client=client, now=now
    )
    return activate(
        session, deps, user_id=user_id, factor_id=factor_id, step=step, client=client, now=now
    )


# --- the login step ------------------------------------------------------------------------


def check_code_shape(code: str) -> None:
    """InvalidRequest for a login-step code that is not 6 digits: a client's mistake, refused
    before any attempt or limit is counted (``factors.FactorProof``)."""
    if otp.normalize_code(code) is None:
        raise InvalidRequest(f"totp_code must be {otp.DIGITS} digits", field="totp_code")


_FACTOR_TABLE = cast("Table", TotpFactor.__table__)
_FACTORS = _FACTOR_TABLE.c
# Plain rows of what the check reads: no ORM objects to build for a login step.
_ACTIVE_FACTORS = (
    select(_FACTORS.id, _FACTORS.secret_ciphertext, _FACTORS.last_used_step)
    .where(_FACTORS.user_id == bindparam("user_id"), _FACTORS.confirmed_at.is_not(None))
    .order_by(_FACTORS.created_at)
)
# A Core UPDATE: no ORM evaluation of its WHERE clause against the loaded factor rows.
_CLAIM_STEP = (
    update(_FACTOR_TABLE)
    .where(
        _FACTORS.id == bindparam("factor_id"),
        _FACTORS.confirmed_at.is_not(None),
        or_(_FACTORS.last_used_step.is_(None), _FACTORS.last_used_step < bindparam("step")),
    )
    .values(last_used_step=bindparam("step"), last_used_at=bindparam("now"))
)


def verify_code(
    session: DbSession, deps: Deps, *, user_id: str, code: str, client: Client, now: datetime
) -> str:
    """Accept a code of any active factor whose time step was not accepted before."""
    check_code_shape(code)
    who = throttle.Who(now=now, client=client, action="totp", user_id=user_id)
    # The daily cap counted before the check, as the password cap is
    # (accounts.authenticate_password).
    checks = ((throttle.MFA_CODES, (user_id, "totp")), (throttle.MFA_FAILURES, (user_id,)))
    throttle.hit_each(session, deps, checks, who=who)
    rows = session.execute(_ACTIVE_FACTORS, {"user_id": user_id}).all()
    candidates: list[tuple[str, int]] = []
    replayed = False
    for row in rows:
        secret = _secret(deps.keyring, factor_id=row.id, ciphertext=row.secret_ciphertext)
        if secret is None:
            continue
        step = otp.verify(secret=secret, code=code, now=now, after_step=row.last_used_step)
        if step is not None:
            candidates.append((row.id, step))
        elif otp.verify(secret=secret, code=code, now=now) is not None:
            replayed = True
    for factor_id, step in candidates:
        if _claim_step(session, factor_id=factor_id, step=step, now=now):
            return AMR
        replayed = True  # another request claimed this step first
    if replayed:
        audit.record(
            session,
            type="mfa.totp_replay",
            outcome="refused",
            now=now,
            client=client,
            user_id=user_id,
        )
    raise InvalidMfa()


def _claim_step(session: DbSession, *, factor_id: str, step: int, now: datetime) -> bool:
    """Record ``step`` as used unless it (or a later one) already was: one atomic UPDATE."""
    result = session.execute(_CLAIM_STEP, {"factor_id": factor_id, "step": step, "now": now})
    if _affected(result) != 1:
        return False
    # A copy of the factor this session holds says what was written, without another UPDATE.
    loaded = session.identity_map.get(identity_key(TotpFactor, factor_id))
    if loaded is not None:
        set_committed_value(loaded, "last_used_step", step)
        set_committed_value(loaded, "last_used_at", now)
    return True


# --- management ----------------------------------------------------------------------------


def rename(session: DbSession, *, user_id: str, factor_id: str, name: str) -> factors.FactorInfo:
    row = session.get(TotpFactor, factor_id)
    if row is None or row.user_id != user_id or row.confirmed_at is None:
        raise NotFound("No such factor")
    row.name = name
    session.flush()
    return _info(row)


def delete_pending(session: DbSession, *, user_id: str, factor_id: str) -> bool:
    """Drop an unconfirmed enrollment of this user; False if ``factor_id`` is not one."""
    result = session.execute(
        delete(TotpFactor).where(
            TotpFactor.id == factor_id,
            TotpFactor.user_id == user_id,
            TotpFactor.confirmed_at.is_(None),
        )
    )
    return _affected(result) == 1


def delete_factor(session: DbSession, *, user_id: str, factor_id: str) -> bool:
    result = session.execute(
        delete(TotpFactor).where(TotpFactor.id == factor_id, TotpFactor.user_id == user_id)
    )
    return _affected(result) == 1


def delete_all(session: DbSession, *, user_id: str) -> int:
    """Every TOTP factor of a user, pending or not (admin resets, breach response)."""
    result = session.execute(delete(TotpFactor).where(TotpFactor.user_id == user_id))
    return _affected(result)


# --- key rotation --------------------------------------------------------------------------


def reencrypt_batch(
    session: DbSession, keyring: Keyring, *, after_id: str, limit: int = 500
) -> tuple[int, str | None, list[tuple[str, str]]]:
    """Re-encrypt secrets not under the primary key, ``limit`` rows with id > ``after_id``
    at a time. Return (rows re-encrypted, last id seen or None when done, (id, key id) of the
    factors that no key of the ring opens). Those are left as they are: their key was taken
    out of the ring too early (or is lost), and they must not stop the rotation of the rows
    after them, which would then stay under the old key."""
    rows = session.execute(
        select(TotpFactor.id, TotpFactor.secret_ciphertext)
        .where(TotpFactor.id > after_id)
        .order_by(TotpFactor.id)
        .limit(limit)
    ).all()
    movable, left = [], []
    for row in rows:
        if _opens(keyring, row):
            movable.append((row.id, row.secret_ciphertext))
        else:
            left.append((row.id, _key_id(keyring, row.secret_ciphertext)))
    count = reencrypt_rows(
        session,
        keyring,
        key=TotpFactor.id,
        column=TotpFactor.secret_ciphertext,
        rows=movable,
        associated_data=secret_aad,
    )
    return count, (rows[-1].id if rows else None), left


def _opens(keyring: Keyring, row: Any) -> bool:
    """Whether the row is under the primary key, or another key of the ring opens it."""
    try:
        if not keyring.needs_reencryption(row.secret_ciphertext):
            return True
        keyring.decrypt(row.secret_ciphertext, associated_data=secret_aad(row.id))
    except (DecryptionFailed, IndexError, UnicodeDecodeError):
        return False
    return True


def under_keys_not_in(session: DbSession, keyring: Keyring) -> tuple[int, list[str]]:
    """How many factors are encrypted under keys that ``keyring`` lacks, and the ids of those
    keys (as far as the first 1000 such factors name them). One pass over the table, which
    the ciphertexts' headers (version, kid length, kid) are compared in."""
    column = TotpFactor.secret_ciphertext
    known = [keyring_header(kid) for kid, _ in keyring.keys]
    elsewhere = and_(*(func.substr(column, 1, len(header)) != header for header in known))
    count = session.scalar(select(func.count()).select_from(TotpFactor).where(elsewhere)) or 0
    if not count:
        return 0, []
    blobs = session.scalars(select(column).where(elsewhere).limit(1000))
    return count, sorted({_key_id(keyring, blob) for blob in blobs})


def _key_id(keyring: Keyring, blob: bytes) -> str:
    try:
        return keyring.key_id_of(blob)
    except (IndexError, UnicodeDecodeError):
        return "?"
