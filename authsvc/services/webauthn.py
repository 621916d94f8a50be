"""WebAuthn credentials: security keys and passkeys; the second step of a password login.

Registration lives in ``webauthn_registration``, passwordless login in ``passkeys``; both build
on the challenges, policy and assertion check here. Challenges live in ``webauthn_challenges``
(SHA-256 digests), expire after ``webauthn_challenge_ttl`` and are consumed at most once with a
conditional UPDATE, so a replay loses also across instances sharing the database. A passkey
login's challenge is the exception: anonymous options write nothing (its ``challenge_id`` is a
MAC, see ``passkeys``), and only a login that verified writes its row, already used, whose
unique digest refuses a second use.

RFC 8176 ``amr``: ``hwk`` for credentials that are not backup eligible (the key never leaves the
authenticator's hardware), ``swk`` for backup-eligible (synced) passkeys. A passkey login with
user verification is possession plus a PIN or biometric on the authenticator, so it answers
``(hwk|swk, "mfa")``; as a second factor after the password it answers ``(pwd, hwk|swk, mfa)``.
"""

from __future__ import annotations

import dataclasses
import hmac
import unicodedata
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Exists,
    Result,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto import webauthn as wa
from authsvc.errors import (
    InvalidChallenge,
    InvalidMfa,
    InvalidRequest,
    InvalidWebauthnResponse,
    NotFound,
)
from authsvc.models import User, WebauthnChallenge, WebauthnCredential
from authsvc.services import audit, factors, housekeeping, notices, throttle, user_tokens
from authsvc.services.context import Client, Deps
from authsvc.settings import Settings

NAME_MAX = 64
REGRESSION_MAIL_INTERVAL = timedelta(hours=1)
SWEEP_BATCH = 200
# Pending registration challenges per account: two tabs or a retry register, no pile-up.
REGISTRATION_CHALLENGES_KEPT = 5
# A spent passkey challenge's row outlives its challenge_id by this much, so an instance whose
# clock runs behind the one that sweeps still finds it while it would take the id.
SPENT_PASSKEY_KEPT = timedelta(minutes=1)

notices.register(
    "webauthn_counter_regression",
    "Your security key may have been copied",
    "At {when} UTC a sign-in used your security key or passkey added on {added}, but the key "
    "reported a usage counter that went backwards. That is what a copied (cloned) key looks "
    "like.\n"
    "The sign-in was {outcome}.\n\n"
    "If you still have the key, sign in, remove it and register it again; "
    "change your password too.\n",
)


class AssertionRefusedError(Exception):
    """An assertion that must not log anybody in; the caller picks the public error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _affected(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE."""
    return int(cast("CursorResult[Any]", result).rowcount or 0)


# --- reading -----------------------------------------------------------------------------


def credentials_of(session: DbSession, user_id: str) -> list[WebauthnCredential]:
    return list(
        session.scalars(
            select(WebauthnCredential)
            .where(WebauthnCredential.user_id == user_id)
            .order_by(WebauthnCredential.created_at, WebauthnCredential.id)
        )
    )


def has_credentials(session: DbSession, *, user_id: str) -> bool:
    return bool(session.scalar(select(credentials_exist(user_id))))


def credentials_exist(user_id: str | ColumnElement[str]) -> Exists:
    """Whether the user has a registered key or passkey, as an expression for a larger query."""
    return exists().where(WebauthnCredential.user_id == user_id)


def _info(row: WebauthnCredential) -> factors.FactorInfo:
    return factors.FactorInfo(
        id=row.id,
        type="webauthn",
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        passkey=is_passkey(row),
    )


def list_factors(session: DbSession, *, user_id: str) -> list[factors.FactorInfo]:
    return [_info(row) for row in credentials_of(session, user_id)]


def descriptors(rows: list[WebauthnCredential]) -> list[wa.Descriptor]:
    return [wa.Descriptor(row.credential_id, tuple(row.transports.split())) for row in rows]


def clean_name(raw: str) -> str:
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise InvalidRequest(f"name must be 1 to {NAME_MAX} printable characters", field="name")
    return name


def amr_of(row: WebauthnCredential) -> str:
    return "swk" if row.backup_eligible else "hwk"


# --- challenges --------------------------------------------------------------------------


def timeout_ms(settings: Settings) -> int:
    return int(settings.webauthn_challenge_ttl.total_seconds() * 1000)


def issue_challenge(
    session: DbSession,
    deps: Deps,
    *,
    purpose: str,
    user_id: str | None,
    user_verification: str,
    now: datetime,
    user_handle: bytes | None = None,
    name: str | None = None,
    user_token_id: str | None = None,
) -> tuple[WebauthnChallenge, bytes]:
    """A fresh challenge row; expired ones are swept on the way out.

    With a ``user_id`` the caller holds that account's lock (``accounts.lock_account`` or
    ``find_with_owner(lock_owner=True)``), taken before any challenge row, as every writer of
    both keeps: a deletion takes the account, then its challenges by cascade. The sweep comes
    last: it waits for nobody (SKIP LOCKED), and nothing here waits after it, so the rows it
    holds (of any account) cannot close a circle with another transaction."""
    challenge = wa.new_challenge()
    row = WebauthnChallenge(
        purpose=purpose,
        user_id=user_id,
        challenge_hash=wa.challenge_digest(challenge),
        user_verification=user_verification,
        user_handle=user_handle,
        name=name,
        user_token_id=user_token_id,
        created_at=now,
        expires_at=now + deps.settings.webauthn_challenge_ttl,
    )
    session.add(row)
    session.flush()
    sweep_challenges(session, now=now)
    return row, challenge


def keep_newest_registrations(session: DbSession, *, user_id: str) -> None:
    """Delete this account's registration challenges but the newest
    ``REGISTRATION_CHALLENGES_KEPT - 1``, before a new one is issued: each options call wrote a
    row that stayed until it expired, so an access token could pile them up without end. The
    caller holds the account's lock (see ``issue_challenge``)."""
    newest = (
        select(WebauthnChallenge.id)
        .where(WebauthnChallenge.user_id == user_id, WebauthnChallenge.purpose == "registration")
        .order_by(WebauthnChallenge.created_at.desc(), WebauthnChallenge.id.desc())
        .limit(REGISTRATION_CHALLENGES_KEPT - 1)
    )
    session.execute(
        delete(WebauthnChallenge).where(
            WebauthnChallenge.user_id == user_id,
            WebauthnChallenge.purpose == "registration",
            WebauthnChallenge.id.not_in(list(session.scalars(newest))),
        ),
        execution_options={"synchronize_session": False},
    )


def sweep_challenges(session: DbSession, *, now: datetime) -> None:
    """Delete a batch of expired challenges; rows another instance is sweeping are skipped.
    Called last by a writer of challenges (see ``issue_challenge``)."""
    housekeeping.delete_batch(
        session, WebauthnChallenge.id, WebauthnChallenge.expires_at < now, limit=SWEEP_BATCH
    )


def consume_challenge(
    session: DbSession,
    *,
    purpose: str,
    challenge: bytes,
    user_id: str | None,
    now: datetime,
    user_token_id: str | None = None,
) -> WebauthnChallenge:
    """The live challenge the response answers, marked used exactly once; InvalidChallenge
    for unknown, foreign (another purpose, user or step), expired or already used ones."""
    digest = wa.challenge_digest(challenge)
    row = session.scalar(
        select(WebauthnChallenge).where(WebauthnChallenge.challenge_hash == digest)
    )
    if (
        row is None
        or row.purpose != purpose
        or row.user_id != user_id
        or row.user_token_id != user_token_id
    ):
        raise InvalidChallenge()
    spent = _affected(
        session.execute(
            update(WebauthnChallenge)
            .where(
                WebauthnChallenge.id == row.id,
                WebauthnChallenge.used_at.is_(None),
                WebauthnChallenge.expires_at > now,
            )
            .values(used_at=now),
            execution_options={"synchronize_session": False},
        )
    )
    if spent != 1:
        raise InvalidChallenge()
    return row


def passkey_challenge_spent(session: DbSession, *, challenge: bytes) -> bool:
    """Whether a passkey login used this challenge already (its row stays until it expires)."""
    digest = wa.challenge_digest(challenge)
    return bool(session.scalar(select(exists().where(WebauthnChallenge.challenge_hash == digest))))


def spend_passkey_challenge(
    session: DbSession, *, challenge: bytes, expires_at: datetime, now: datetime
) -> WebauthnChallenge:
    """Record the one use of a passkey challenge: a row of its digest, used at ``now``, that
    the sweep removes once its challenge_id (expiring at ``expires_at``) refuses itself.

    The unique digest settles a race, also across instances: the second insert waits for the
    first's transaction and, once it committed, fails (InvalidChallenge) in a savepoint, so
    its own transaction goes on to commit its audit event. The caller holds the account's
    lock, taken before any challenge row (see ``issue_challenge``); this row has no account."""
    row = WebauthnChallenge(
        purpose="passkey",
        user_id=None,
        challenge_hash=wa.challenge_digest(challenge),
        user_verification="required",
        created_at=now,
        expires_at=expires_at + SPENT_PASSKEY_KEPT,
        used_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise InvalidChallenge() from None
    return row


def return_passkey_challenge(session: DbSession, row: WebauthnChallenge) -> None:
    """Undo ``spend_passkey_challenge`` for an assertion that was refused: a failed attempt
    leaves no row, and its challenge may still log in until it expires."""
    session.delete(row)
    session.flush()


# --- policy ------------------------------------------------------------------------------


def model_refusal(settings: Settings, *, aaguid: str, backup_eligible: bool) -> str | None:
    """Why the AAGUID / backup policy refuses this authenticator, or None."""
    if aaguid in settings.webauthn_aaguid_deny:
        return "aaguid_denied"
    if settings.webauthn_aaguid_allow and aaguid not in settings.webauthn_aaguid_allow:
        return "aaguid_not_allowed"
    if backup_eligible and not settings.webauthn_allow_backup_eligible:
        return "backup_eligible"
    return None


def is_passkey(row: WebauthnCredential) -> bool:
    return bool(row.discoverable) and row.user_verified


# --- assertions --------------------------------------------------------------------------


def authenticate(
    session: DbSession,
    deps: Deps,
    *,
    row: WebauthnCredential,
    credential: dict[str, Any],
    challenge: bytes,
    require_uv: bool,
    client: Client,
    now: datetime,
) -> None:
    """Verify one assertion by ``row`` and advance its sign counter (AssertionRefusedError)."""
    settings = deps.settings
    try:
        verified = wa.verify_assertion(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origins=settings.webauthn_origins,
            credential_public_key=row.public_key,
            require_user_verification=require_uv,
        )
    except wa.WebauthnResponseError as exc:
        raise AssertionRefusedError(exc.reason) from None
    if verified.backup_eligible != row.backup_eligible:
        raise AssertionRefusedError("backup_eligibility_changed")
    refusal = model_refusal(settings, aaguid=row.aaguid, backup_eligible=row.backup_eligible)
    if refusal is not None:
        raise AssertionRefusedError(refusal)
    stored, received = row.sign_count, verified.sign_count
    if stored == 0 and received == 0:
        advanced = True  # an authenticator without a counter (most synced passkeys)
    else:
        moved = session.execute(
            update(WebauthnCredential)
            .where(WebauthnCredential.id == row.id, WebauthnCredential.sign_count < received)
            .values(sign_count=received),
            execution_options={"synchronize_session": False},
        )
        advanced = _affected(moved) == 1
    if not advanced:
        _counter_regression(
            session, deps, row=row, stored=stored, received=received, client=client, now=now
        )
    row.last_used_at = now
    row.backed_up = verified.backed_up
    if advanced:
        row.sign_count = max(stored, received)


def _counter_regression(
    session: DbSession,
    deps: Deps,
    *,
    row: WebauthnCredential,
    stored: int,
    received: int,
    client: Client,
    now: datetime,
) -> None:
    """A counter that did not move forward: record, tell the user, and refuse unless the
    policy only flags it."""
    policy = deps.settings.webauthn_on_counter_regression
    outcome = "rejected" if policy == "reject" else "flagged"
    previous = row.counter_regression_at
    row.counter_regression_at = now
    audit.record(
        session,
        type="mfa.webauthn.counter_regression",
        outcome=outcome,
        now=now,
        client=client,
        user_id=row.user_id,
        details={"factor_id": row.id, "stored": stored, "received": received},
    )
    user = session.get(User, row.user_id)
    if user is not None and (previous is None or now - previous >= REGRESSION_MAIL_INTERVAL):
        notices.send(
            session,
            deps,
            to=user.email,
            template="webauthn_counter_regression",
            now=now,
            added=row.created_at.strftime("%Y-%m-%d"),
            when=now.strftime("%Y-%m-%d %H:%M"),
            outcome="refused" if policy == "reject" else "allowed, and recorded",
        )
    if policy == "reject":
        raise AssertionRefusedError("sign_count_regression")


def assertion_options(
    session: DbSession, deps: Deps, *, user_id: str, user_token_id: str, now: datetime
) -> dict[str, Any]:
    """Request options listing only this user's credentials, for the second-factor step that
    ``user_token_id`` (an mfa_token or reset link) stands for.

    The step's earlier challenges go first: one challenge per step at a time, so a live token
    cannot pile rows up, and options asked for again make the earlier ones useless (a client
    answers the options it asked for last). The caller holds the account's lock, as every
    writer of its challenges does (see ``issue_challenge``)."""
    settings = deps.settings
    rows = credentials_of(session, user_id)
    if not rows:
        raise InvalidRequest("This account has no security key")
    session.execute(
        delete(WebauthnChallenge).where(
            WebauthnChallenge.user_id == user_id, WebauthnChallenge.user_token_id == user_token_id
        ),
        execution_options={"synchronize_session": False},
    )
    _, challenge = issue_challenge(
        session,
        deps,
        purpose="mfa",
        user_id=user_id,
        user_verification=settings.webauthn_user_verification,
        now=now,
        user_token_id=user_token_id,
    )
    return wa.authentication_options(
        rp_id=settings.webauthn_rp_id,
        challenge=challenge,
        timeout_ms=timeout_ms(settings),
        user_verification=settings.webauthn_user_verification,
        allow=descriptors(rows),
    )


def _options_for(
    session: DbSession, deps: Deps, *, token: str, purpose: str, client: Client, now: datetime
) -> dict[str, Any]:
    """Options for the step a token stands for, refused (InvalidToken) wherever the step itself
    would refuse the token: a disabled owner, a login begun before the password was invalidated.
    The owner is locked before the challenge is written (see ``issue_challenge``).

    Each request writes a challenge, so it is throttled: per client IP before the token is
    looked up, as passkey options are; then per account, with a counter of its own under the
    policy that limits the step's answers (``mfa_account``, 10 a minute), shared by both steps
    and every token of the account. A refusal leaves the token alive: asking is no guess."""
    who = throttle.Who(now=now, client=client, action="webauthn_options")
    throttle.hit(session, deps, "ip", client.rate_key, who=who)
    row, owner = user_tokens.find_with_owner(
        session, token=token, purpose=purpose, now=now, lock_owner=True
    )
    who = dataclasses.replace(who, user_id=owner.id)
    throttle.hit(session, deps, throttle.MFA_CODES, owner.id, "webauthn_options", who=who)
    return assertion_options(session, deps, user_id=owner.id, user_token_id=row.id, now=now)


def mfa_options(
    session: DbSession, deps: Deps, *, mfa_token: str, client: Client, now: datetime
) -> dict[str, Any]:
    return _options_for(session, deps, token=mfa_token, purpose="mfa", client=client, now=now)


def reset_options(
    session: DbSession, deps: Deps, *, reset_token: str, client: Client, now: datetime
) -> dict[str, Any]:
    """Options for the second factor that a password reset asks for."""
    return _options_for(
        session, deps, token=reset_token, purpose="reset_password", client=client, now=now
    )


def read_assertion(credential: dict[str, Any]) -> wa.ClientAnswer:
    """A second-factor assertion parsed, or InvalidWebauthnResponse: like a TOTP code of the
    wrong shape, a client's mistake, not a wrong answer (``FactorProof`` asks before any
    attempt or limit is counted)."""
    try:
        return wa.read_assertion(credential)
    except wa.WebauthnResponseError as exc:
        raise InvalidWebauthnResponse(
            "The security key response is malformed", reason=exc.reason
        ) from None


def verify_mfa_assertion(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    user_token_id: str,
    credential: dict[str, Any],
    client: Client,
    now: datetime,
) -> str:
    """Check a second-factor assertion of this user, answering a challenge issued for this
    step (``user_token_id``: its mfa_token or reset link); its amr value, or InvalidMfa."""
    answer = read_assertion(credential)
    try:
        challenge = consume_challenge(
            session,
            purpose="mfa",
            challenge=answer.challenge,
            user_id=user_id,
            user_token_id=user_token_id,
            now=now,
        )
    except InvalidChallenge:
        raise InvalidMfa(
            "The challenge is unknown, expired or already used; ask for new options",
            reason="invalid_challenge",
        ) from None
    row = session.scalar(
        select(WebauthnCredential).where(
            WebauthnCredential.credential_id == answer.credential_id,
            WebauthnCredential.user_id == user_id,
        )
    )
    if row is None:
        raise InvalidMfa(
            "This security key is not registered to the account", reason="unknown_credential"
        )
    if answer.user_handle is not None and not hmac.compare_digest(
        answer.user_handle, row.user_handle
    ):
        # WebAuthn L3 7.2 step 6: a handle, when the authenticator sends one, is this account's.
        raise InvalidMfa(
            "The security key answered for another account", reason="user_handle_mismatch"
        )
    try:
        authenticate(
            session,
            deps,
            row=row,
            credential=credential,
            challenge=answer.challenge,
            require_uv=challenge.user_verification == "required",
            client=client,
            now=now,
        )
    except AssertionRefusedError as exc:
        raise InvalidMfa("The security key response was not accepted", reason=exc.reason) from None
    return amr_of(row)


# --- management (called by the /v1/me/mfa routes, which audit, mail and check re-auth) ----


def _own(session: DbSession, *, user_id: str, credential_id: str) -> WebauthnCredential:
    row = session.get(WebauthnCredential, credential_id)
    if row is None or row.user_id != user_id:
        raise NotFound("No such factor")
    return row


def rename_credential(
    session: DbSession, *, user_id: str, credential_id: str, name: str, now: datetime
) -> factors.FactorInfo:
    row = _own(session, user_id=user_id, credential_id=credential_id)
    row.name = clean_name(name)
    return _info(row)


def delete_credential(
    session: DbSession, *, user_id: str, credential_id: str, now: datetime
) -> None:
    row = _own(session, user_id=user_id, credential_id=credential_id)
    session.delete(row)
    session.flush()
