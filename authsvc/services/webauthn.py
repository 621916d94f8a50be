"""WebAuthn credentials: security keys and passkeys.

Ceremonies: registration (a signed-in user adds a key), the second step of a password login,
and passwordless passkey login. Challenges live in ``webauthn_challenges`` (SHA-256 digests),
expire after ``webauthn_challenge_ttl`` and are consumed at most once with a conditional UPDATE,
so a replay loses also across instances sharing the database.

RFC 8176 ``amr``: ``hwk`` for credentials that are not backup eligible (the key never leaves the
authenticator's hardware), ``swk`` for backup-eligible (synced) passkeys. A passkey login with
user verification is possession plus a PIN or biometric on the authenticator, so it answers
``(hwk|swk, "mfa")``; as a second factor after the password it answers ``(pwd, hwk|swk, mfa)``.
"""

from __future__ import annotations

import hmac
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto import webauthn as wa
from authsvc.errors import (
    AuthenticatorNotAllowed,
    Conflict,
    CredentialExists,
    InvalidChallenge,
    InvalidCredentials,
    InvalidMfa,
    InvalidRequest,
    InvalidWebauthnResponse,
    NotFound,
    RateLimited,
)
from authsvc.models import User, WebauthnChallenge, WebauthnCredential
from authsvc.services import audit, factors, login, notices, user_tokens
from authsvc.services.context import Client, Deps
from authsvc.settings import Settings

NAME_MAX = 64
REGRESSION_MAIL_INTERVAL = timedelta(hours=1)
SWEEP_BATCH = 200

notices.register(
    "webauthn_added",
    "A security key was added to your account",
    'A security key or passkey named "{name}" was added to your account at {when} UTC.\n\n'
    "If it was not you, sign in, remove it and change your password now.\n",
)
notices.register(
    "webauthn_counter_regression",
    "Your security key may have been copied",
    'At {when} UTC a sign-in used your security key or passkey "{name}", but the key reported '
    "a usage counter that went backwards. That is what a copied (cloned) key looks like.\n"
    "The sign-in was {outcome}.\n\n"
    "If you still have the key, sign in, remove it and register it again; "
    "change your password too.\n",
)


@dataclass(frozen=True, slots=True)
class RegisteredKey:
    """The factor a registration created (the 201 body)."""

    id: str
    type: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    passkey: bool  # usable to log in without a password
    synced: bool  # backup eligible


@dataclass(frozen=True, slots=True)
class PasskeyOptions:
    challenge_id: str
    options: dict[str, Any]


class _Refused(Exception):
    """An assertion that must not log anybody in; the caller picks the public error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- reading -----------------------------------------------------------------------------


def _credentials(session: DbSession, user_id: str) -> list[WebauthnCredential]:
    return list(session.scalars(
        select(WebauthnCredential)
        .where(WebauthnCredential.user_id == user_id)
        .order_by(WebauthnCredential.created_at, WebauthnCredential.id)
    ))


def has_credentials(session: DbSession, *, user_id: str) -> bool:
    found = session.scalar(
        select(WebauthnCredential.id).where(WebauthnCredential.user_id == user_id).limit(1)
    )
    return found is not None


def _info(row: WebauthnCredential) -> factors.FactorInfo:
    return factors.FactorInfo(id=row.id, type="webauthn", name=row.name,
                              created_at=row.created_at, last_used_at=row.last_used_at)


def list_factors(session: DbSession, *, user_id: str) -> list[factors.FactorInfo]:
    return [_info(row) for row in _credentials(session, user_id)]


def _descriptors(rows: list[WebauthnCredential]) -> list[wa.Descriptor]:
    return [wa.Descriptor(row.credential_id, tuple(row.transports.split())) for row in rows]


def _clean_name(raw: str) -> str:
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise InvalidRequest(f"name must be 1 to {NAME_MAX} printable characters",
                             field="name")
    return name


def _amr(row: WebauthnCredential) -> str:
    return "swk" if row.backup_eligible else "hwk"


# --- challenges --------------------------------------------------------------------------


def _timeout_ms(settings: Settings) -> int:
    return int(settings.webauthn_challenge_ttl.total_seconds() * 1000)


def _issue_challenge(session: DbSession, deps: Deps, *, purpose: str, user_id: str | None,
                     user_verification: str, now: datetime, user_handle: bytes | None = None,
                     name: str | None = None) -> tuple[WebauthnChallenge, bytes]:
    _sweep(session, now=now)
    challenge = wa.new_challenge()
    row = WebauthnChallenge(
        purpose=purpose, user_id=user_id, challenge_hash=wa.challenge_digest(challenge),
        user_verification=user_verification, user_handle=user_handle, name=name,
        created_at=now, expires_at=now + deps.settings.webauthn_challenge_ttl,
    )
    session.add(row)
    session.flush()
    return row, challenge


def _sweep(session: DbSession, *, now: datetime) -> None:
    """Delete a batch of expired challenges; rows another instance is sweeping are skipped."""
    batch = (
        select(WebauthnChallenge.id)
        .where(WebauthnChallenge.expires_at < now)
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    )
    session.execute(delete(WebauthnChallenge).where(WebauthnChallenge.id.in_(batch)),
                    execution_options={"synchronize_session": False})


def _consume_challenge(session: DbSession, *, purpose: str, challenge: bytes,
                       user_id: str | None, now: datetime,
                       challenge_id: str | None = None) -> WebauthnChallenge:
    """The live challenge the response answers, marked used exactly once; InvalidChallenge
    for unknown, foreign, expired or already used ones."""
    digest = wa.challenge_digest(challenge)
    if challenge_id is not None:
        row = session.get(WebauthnChallenge, challenge_id)
        if row is not None and not hmac.compare_digest(row.challenge_hash, digest):
            row = None
    else:
        row = session.scalar(
            select(WebauthnChallenge).where(WebauthnChallenge.challenge_hash == digest)
        )
    if row is None or row.purpose != purpose or row.user_id != user_id:
        raise InvalidChallenge()
    spent = session.execute(
        update(WebauthnChallenge)
        .where(WebauthnChallenge.id == row.id, WebauthnChallenge.used_at.is_(None),
               WebauthnChallenge.expires_at > now)
        .values(used_at=now),
        execution_options={"synchronize_session": False},
    ).rowcount
    if spent != 1:
        raise InvalidChallenge()
    return row


# --- policy ------------------------------------------------------------------------------


def _model_refusal(settings: Settings, *, aaguid: str, backup_eligible: bool) -> str | None:
    """Why the AAGUID / backup policy refuses this authenticator, or None."""
    if aaguid in settings.webauthn_aaguid_deny:
        return "aaguid_denied"
    if settings.webauthn_aaguid_allow and aaguid not in settings.webauthn_aaguid_allow:
        return "aaguid_not_allowed"
    if backup_eligible and not settings.webauthn_allow_backup_eligible:
        return "backup_eligible"
    return None


def _trusted_roots(settings: Settings) -> list[bytes]:
    if settings.webauthn_attestation != "direct" or settings.webauthn_attestation_roots is None:
        return []
    return wa.load_pem_roots(settings.webauthn_attestation_roots.read_bytes())


# --- registration ------------------------------------------------------------------------


def registration_options(session: DbSession, deps: Deps, *, user_id: str, name: str,
                         now: datetime) -> dict[str, Any]:
    """Creation options for a new key of this user, with a fresh single-use challenge."""
    settings = deps.settings
    clean = _clean_name(name)
    user = session.get(User, user_id)
    if user is None:
        raise InvalidCredentials()
    rows = _credentials(session, user_id)
    if len(rows) >= settings.webauthn_max_credentials:
        raise Conflict(f"At most {settings.webauthn_max_credentials} security keys per account")
    handle = rows[0].user_handle if rows else wa.new_user_handle()
    _, challenge = _issue_challenge(
        session, deps, purpose="registration", user_id=user_id,
        user_verification=settings.webauthn_user_verification, now=now, user_handle=handle,
        name=clean,
    )
    return wa.registration_options(
        rp_id=settings.webauthn_rp_id, rp_name=settings.webauthn_rp_name, user_handle=handle,
        user_name=user.email, challenge=challenge, timeout_ms=_timeout_ms(settings),
        user_verification=settings.webauthn_user_verification,
        attestation=settings.webauthn_attestation, exclude=_descriptors(rows),
    )


def register(session: DbSession, deps: Deps, *, user_id: str, credential: dict[str, Any],
             name: str | None, client: Client, now: datetime) -> RegisteredKey:
    """Verify a RegistrationResponseJSON against this user's open challenge and store it."""
    settings = deps.settings
    try:
        answer = wa.read_registration(credential)
    except wa.WebauthnFailure as exc:
        raise InvalidWebauthnResponse(str(exc), reason=exc.reason) from None
    challenge = _consume_challenge(session, purpose="registration", challenge=answer.challenge,
                                   user_id=user_id, now=now)
    clean = _clean_name(name) if name is not None else (challenge.name or "Security key")
    try:
        key = wa.verify_registration(
            credential=credential, expected_challenge=answer.challenge,
            expected_rp_id=settings.webauthn_rp_id, expected_origins=settings.webauthn_origins,
            require_user_verification=challenge.user_verification == "required",
            trusted_roots=_trusted_roots(settings),
        )
    except wa.WebauthnFailure as exc:
        audit.record(session, type="mfa.webauthn.register", outcome="rejected", now=now,
                     client=client, user_id=user_id, details={"reason": exc.reason})
        raise InvalidWebauthnResponse(str(exc), reason=exc.reason) from None
    refusal = _model_refusal(settings, aaguid=key.aaguid, backup_eligible=key.backup_eligible)
    if settings.webauthn_attestation == "direct" and not key.attested:
        refusal = "attestation_required"
    if refusal is not None:
        audit.record(session, type="mfa.webauthn.register", outcome="refused", now=now,
                     client=client, user_id=user_id,
                     details={"reason": refusal, "aaguid": key.aaguid})
        raise AuthenticatorNotAllowed(f"This authenticator is not accepted ({refusal})",
                                      reason=refusal)
    if session.scalar(select(WebauthnCredential.id)
                      .where(WebauthnCredential.credential_id == key.credential_id)):
        raise CredentialExists()
    rows = _credentials(session, user_id)
    if len(rows) >= settings.webauthn_max_credentials:
        raise Conflict(f"At most {settings.webauthn_max_credentials} security keys per account")
    row = WebauthnCredential(
        user_id=user_id, credential_id=key.credential_id, public_key=key.public_key,
        sign_count=key.sign_count, transports=" ".join(key.transports), aaguid=key.aaguid,
        attestation_format=key.attestation_format,
        user_handle=rows[0].user_handle if rows else (challenge.user_handle or b""),
        discoverable=key.discoverable, user_verified=key.user_verified,
        backup_eligible=key.backup_eligible, backed_up=key.backed_up, name=clean,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.record(session, type="mfa.webauthn.registered", outcome="success", now=now,
                 client=client, user_id=user_id,
                 details={"factor_id": row.id, "aaguid": key.aaguid,
                          "format": key.attestation_format, "passkey": _is_passkey(row),
                          "backup_eligible": key.backup_eligible})
    user = session.get(User, user_id)
    if user is not None:
        notices.send(session, deps, to=user.email, template="webauthn_added", now=now,
                     name=clean, when=now.strftime("%Y-%m-%d %H:%M"))
    return RegisteredKey(id=row.id, type="webauthn", name=row.name, created_at=row.created_at,
                         last_used_at=None, passkey=_is_passkey(row),
                         synced=row.backup_eligible)


def _is_passkey(row: WebauthnCredential) -> bool:
    return bool(row.discoverable) and row.user_verified


# --- assertions --------------------------------------------------------------------------


def _assert(session: DbSession, deps: Deps, *, row: WebauthnCredential,
            credential: dict[str, Any], challenge: bytes, require_uv: bool, client: Client,
            now: datetime) -> None:
    """Verify one assertion by ``row`` and advance its sign counter, or raise _Refused."""
    settings = deps.settings
    try:
        verified = wa.verify_assertion(
            credential=credential, expected_challenge=challenge,
            expected_rp_id=settings.webauthn_rp_id, expected_origins=settings.webauthn_origins,
            credential_public_key=row.public_key, require_user_verification=require_uv,
        )
    except wa.WebauthnFailure as exc:
        raise _Refused(exc.reason) from None
    if verified.backup_eligible != row.backup_eligible:
        raise _Refused("backup_eligibility_changed")
    refusal = _model_refusal(settings, aaguid=row.aaguid, backup_eligible=row.backup_eligible)
    if refusal is not None:
        raise _Refused(refusal)
    stored, received = row.sign_count, verified.sign_count
    if stored == 0 and received == 0:
        advanced = True  # an authenticator without a counter (most synced passkeys)
    else:
        advanced = session.execute(
            update(WebauthnCredential)
            .where(WebauthnCredential.id == row.id, WebauthnCredential.sign_count < received)
            .values(sign_count=received),
            execution_options={"synchronize_session": False},
        ).rowcount == 1
    if not advanced:
        _counter_regression(session, deps, row=row, stored=stored, received=received,
                            client=client, now=now)
    row.last_used_at = now
    row.backed_up = verified.backed_up
    if advanced:
        row.sign_count = max(stored, received)


def _counter_regression(session: DbSession, deps: Deps, *, row: WebauthnCredential,
                        stored: int, received: int, client: Client, now: datetime) -> None:
    """A counter that did not move forward: record, tell the user, and refuse unless the
    policy only flags it."""
    policy = deps.settings.webauthn_on_counter_regression
    outcome = "rejected" if policy == "reject" else "flagged"
    previous = row.counter_regression_at
    row.counter_regression_at = now
    audit.record(session, type="mfa.webauthn.counter_regression", outcome=outcome, now=now,
                 client=client, user_id=row.user_id,
                 details={"factor_id": row.id, "stored": stored, "received": received})
    user = session.get(User, row.user_id)
    if user is not None and (previous is None or now - previous >= REGRESSION_MAIL_INTERVAL):
        notices.send(session, deps, to=user.email, template="webauthn_counter_regression",
                     now=now, name=row.name, when=now.strftime("%Y-%m-%d %H:%M"),
                     outcome="refused" if policy == "reject" else "allowed, and recorded")
    if policy == "reject":
        raise _Refused("sign_count_regression")


def assertion_options(session: DbSession, deps: Deps, *, user_id: str,
                      now: datetime) -> dict[str, Any]:
    """Request options listing only this user's credentials (second-factor step)."""
    settings = deps.settings
    rows = _credentials(session, user_id)
    if not rows:
        raise InvalidRequest("This account has no security key")
    _, challenge = _issue_challenge(session, deps, purpose="mfa", user_id=user_id,
                                    user_verification=settings.webauthn_user_verification,
                                    now=now)
    return wa.authentication_options(
        rp_id=settings.webauthn_rp_id, challenge=challenge, timeout_ms=_timeout_ms(settings),
        user_verification=settings.webauthn_user_verification, allow=_descriptors(rows),
    )


def mfa_options(session: DbSession, deps: Deps, *, mfa_token: str,
                now: datetime) -> dict[str, Any]:
    token = user_tokens.find(session, token=mfa_token, purpose="mfa", now=now)
    return assertion_options(session, deps, user_id=token.user_id, now=now)


def reset_options(session: DbSession, deps: Deps, *, reset_token: str,
                  now: datetime) -> dict[str, Any]:
    """Options for the second factor that a password reset asks for."""
    token = user_tokens.find(session, token=reset_token, purpose="reset_password", now=now)
    return assertion_options(session, deps, user_id=token.user_id, now=now)


def verify_mfa_assertion(session: DbSession, deps: Deps, *, user_id: str,
                         credential: dict[str, Any], client: Client, now: datetime) -> str:
    """Check a second-factor assertion of this user; its amr value, or InvalidMfa."""
    try:
        answer = wa.read_assertion(credential)
    except wa.WebauthnFailure as exc:
        raise InvalidMfa("The security key response is malformed", reason=exc.reason) from None
    try:
        challenge = _consume_challenge(session, purpose="mfa", challenge=answer.challenge,
                                       user_id=user_id, now=now)
    except InvalidChallenge:
        raise InvalidMfa("The challenge is unknown, expired or already used; ask for new "
                         "options", reason="invalid_challenge") from None
    row = session.scalar(select(WebauthnCredential).where(
        WebauthnCredential.credential_id == answer.credential_id,
        WebauthnCredential.user_id == user_id,
    ))
    if row is None:
        raise InvalidMfa("This security key is not registered to the account",
                         reason="unknown_credential")
    try:
        _assert(session, deps, row=row, credential=credential, challenge=answer.challenge,
                require_uv=challenge.user_verification == "required", client=client, now=now)
    except _Refused as exc:
        raise InvalidMfa("The security key response was not accepted",
                         reason=exc.reason) from None
    return _amr(row)


# --- passkey login -----------------------------------------------------------------------


def _throttle(session: DbSession, deps: Deps, *, client: Client, now: datetime) -> None:
    try:
        deps.limiter.hit("ip", client.ip)
    except RateLimited as exc:
        audit.record(session, type="ratelimit.hit", outcome=exc.policy, now=now, client=client,
                     details={"action": "passkey_login"})
        raise


def passkey_options(session: DbSession, deps: Deps, *, client: Client,
                    now: datetime) -> PasskeyOptions:
    """Options with an empty allowCredentials: the authenticator picks a discoverable
    credential, so nothing about any account is asked or revealed."""
    _throttle(session, deps, client=client, now=now)
    settings = deps.settings
    row, challenge = _issue_challenge(session, deps, purpose="passkey", user_id=None,
                                      user_verification="required", now=now)
    options = wa.authentication_options(
        rp_id=settings.webauthn_rp_id, challenge=challenge, timeout_ms=_timeout_ms(settings),
        user_verification="required", allow=[],
    )
    return PasskeyOptions(challenge_id=row.id, options=options)


def login_with_passkey(session: DbSession, deps: Deps, *, challenge_id: str,
                       credential: dict[str, Any], client: Client,
                       now: datetime) -> login.LoginResult:
    """Log in with a discoverable, user-verifying credential alone."""
    _throttle(session, deps, client=client, now=now)
    try:
        answer = wa.read_assertion(credential)
    except wa.WebauthnFailure as exc:
        raise InvalidWebauthnResponse(str(exc), reason=exc.reason) from None
    _consume_challenge(session, purpose="passkey", challenge=answer.challenge, user_id=None,
                       challenge_id=challenge_id, now=now)
    row = session.scalar(select(WebauthnCredential).where(
        WebauthnCredential.credential_id == answer.credential_id))
    user = session.get(User, row.user_id) if row is not None else None
    try:
        if row is None or user is None:
            raise _Refused("unknown_credential")
        if user.disabled_at is not None or user.password_invalidated_at is not None:
            raise _Refused("account_unavailable")
        if not _is_passkey(row):
            raise _Refused("not_a_passkey")
        if answer.user_handle is None or not hmac.compare_digest(answer.user_handle,
                                                                 row.user_handle):
            raise _Refused("user_handle_mismatch")
        _assert(session, deps, row=row, credential=credential, challenge=answer.challenge,
                require_uv=True, client=client, now=now)
    except _Refused as exc:
        audit.record(session, type="login.passkey", outcome="failure", now=now, client=client,
                     user_id=user.id if user is not None else None,
                     details={"reason": exc.reason})
        raise InvalidCredentials() from None
    assert user is not None and row is not None
    return login.finish_login(session, deps, user=user, amr=(_amr(row), "mfa"), client=client,
                              now=now)


# --- management (called by the /v1/me/mfa routes) ----------------------------------------


def _own(session: DbSession, *, user_id: str, credential_id: str) -> WebauthnCredential:
    row = session.get(WebauthnCredential, credential_id)
    if row is None or row.user_id != user_id:
        raise NotFound("No such factor")
    return row


def rename_credential(session: DbSession, *, user_id: str, credential_id: str, name: str,
                      now: datetime) -> factors.FactorInfo:
    row = _own(session, user_id=user_id, credential_id=credential_id)
    row.name = _clean_name(name)
    audit.record(session, type="mfa.webauthn.renamed", outcome="success", now=now,
                 user_id=user_id, details={"factor_id": row.id})
    return _info(row)


def delete_credential(session: DbSession, *, user_id: str, credential_id: str,
                      now: datetime) -> None:
    row = _own(session, user_id=user_id, credential_id=credential_id)
    session.delete(row)
    session.flush()
    audit.record(session, type="mfa.webauthn.removed", outcome="success", now=now,
                 user_id=user_id, details={"factor_id": credential_id})
