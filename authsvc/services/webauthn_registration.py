"""Registering security keys and passkeys (WebAuthn registration ceremonies).

``registration_options`` opens a ceremony with a single-use challenge bound to the user;
``register`` verifies the browser's answer (origin, RP ID hash, challenge, flags, attestation
and the authenticator policy) and stores the credential. The first factor of an account also
gets its recovery codes. With an ``mfa_enrollment`` token the registration finishes the login
that token stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto import webauthn as wa
from authsvc.errors import (
    AuthenticatorNotAllowed,
    CredentialExists,
    FactorLimitReached,
    InvalidChallenge,
    InvalidWebauthnResponse,
    Unauthenticated,
)
from authsvc.models import User, UserToken, WebauthnCredential
from authsvc.services import (
    accounts,
    audit,
    login,
    mfa_management,
    notices,
    recovery,
    user_tokens,
    webauthn,
)
from authsvc.services.context import Client, Deps
from authsvc.settings import Settings


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
    recovery_codes: tuple[str, ...] | None = None  # the first factor's set, shown once


@dataclass(frozen=True, slots=True)
class EnrollmentLogin:
    factor: RegisteredKey
    result: login.LoginResult


def _trusted_roots(settings: Settings) -> list[bytes]:
    if settings.webauthn_attestation != "direct" or settings.webauthn_attestation_roots is None:
        return []
    return wa.load_pem_roots(settings.webauthn_attestation_roots.read_bytes())


def registration_options(
    session: DbSession, deps: Deps, *, user_id: str, name: str, now: datetime
) -> dict[str, Any]:
    """Creation options for a new key of this user, with a fresh single-use challenge."""
    settings = deps.settings
    clean = webauthn.clean_name(name)
    # The account before its challenges (see webauthn.issue_challenge).
    user = accounts.lock_account(session, user_id)
    if user is None:  # deleted since the bearer check, as in recovery.lock_second_factors
        raise Unauthenticated("The account no longer exists")
    rows = webauthn.credentials_of(session, user_id)
    if len(rows) >= settings.webauthn_max_credentials:
        raise FactorLimitReached(
            f"At most {settings.webauthn_max_credentials} security keys per account"
        )
    handle = rows[0].user_handle if rows else wa.new_user_handle()
    webauthn.keep_newest_registrations(session, user_id=user_id)
    _, challenge = webauthn.issue_challenge(
        session,
        deps,
        purpose="registration",
        user_id=user_id,
        user_verification=settings.webauthn_user_verification,
        now=now,
        user_handle=handle,
        name=clean,
    )
    return wa.registration_options(
        rp_id=settings.webauthn_rp_id,
        rp_name=settings.webauthn_rp_name,
        user_handle=handle,
        user_name=user.email,
        challenge=challenge,
        timeout_ms=webauthn.timeout_ms(settings),
        user_verification=settings.webauthn_user_verification,
        attestation=settings.webauthn_attestation,
        exclude=webauthn.descriptors(rows),
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    key: wa.RegisteredCredential
    name: str
    user_handle: bytes


def _verify_registration(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    credential: dict[str, Any],
    name: str | None,
    client: Client,
    now: datetime,
) -> _Verified:
    """Check a RegistrationResponseJSON against this user's open challenge and the policy;
    nothing is stored yet (the challenge is spent)."""
    settings = deps.settings
    chosen = webauthn.clean_name(name) if name is not None else None

    def rejected(reason: str) -> None:
        _rejected(session, user_id=user_id, reason=reason, client=client, now=now)

    try:
        answer = wa.read_registration(credential)
        # The account before its challenge, as every writer of both (registrations at once
        # count too, below).
        recovery.lock_second_factors(session, user_id=user_id)
        try:
            challenge = webauthn.consume_challenge(
                session,
                purpose="registration",
                challenge=answer.challenge,
                user_id=user_id,
                now=now,
            )
        except InvalidChallenge:
            rejected("invalid_challenge")
            raise
        key = wa.verify_registration(
            credential=credential,
            expected_challenge=answer.challenge,
            expected_rp_id=settings.webauthn_rp_id,
            expected_origins=settings.webauthn_origins,
            require_user_verification=challenge.user_verification == "required",
            trusted_roots=_trusted_roots(settings),
        )
    except wa.WebauthnResponseError as exc:
        rejected(exc.reason)
        raise InvalidWebauthnResponse(str(exc), reason=exc.reason) from None
    clean = chosen or challenge.name or "Security key"
    refusal = webauthn.model_refusal(
        settings, aaguid=key.aaguid, backup_eligible=key.backup_eligible
    )
    if settings.webauthn_attestation == "direct" and not key.attested:
        refusal = "attestation_required"
    if refusal is not None:
        audit.record(
            session,
            type="mfa.webauthn.register",
            outcome="refused",
            now=now,
            client=client,
            user_id=user_id,
            details={"reason": refusal, "aaguid": key.aaguid},
        )
        raise AuthenticatorNotAllowed(
            f"This authenticator is not accepted ({refusal})", reason=refusal
        )
    if session.scalar(
        select(WebauthnCredential.id).where(WebauthnCredential.credential_id == key.credential_id)
    ):
        rejected("credential_exists")
        raise CredentialExists()
    rows = webauthn.credentials_of(session, user_id)
    if len(rows) >= settings.webauthn_max_credentials:
        raise FactorLimitReached(
            f"At most {settings.webauthn_max_credentials} security keys per account"
        )
    # The handle this authenticator was given in this ceremony, which it will answer with at a
    # passkey login: another ceremony opened before the first key existed handed out another.
    handle = challenge.user_handle or (rows[0].user_handle if rows else b"")
    return _Verified(key=key, name=clean, user_handle=handle)


def _rejected(
    session: DbSession, *, user_id: str, reason: str, client: Client, now: datetime
) -> None:
    audit.record(
        session,
        type="mfa.webauthn.register",
        outcome="rejected",
        now=now,
        client=client,
        user_id=user_id,
        details={"reason": reason},
    )


def _store(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    verified: _Verified,
    client: Client,
    now: datetime,
    spend: UserToken | None = None,
) -> RegisteredKey:
    """Store the verified key; ``spend``, a token the registration uses up, is spent with the
    insert, and stays live when another account's registration of the same key wins."""
    key = verified.key
    row = WebauthnCredential(
        user_id=user_id,
        credential_id=key.credential_id,
        public_key=key.public_key,
        sign_count=key.sign_count,
        transports=" ".join(key.transports),
        aaguid=key.aaguid,
        attestation_format=key.attestation_format,
        user_handle=verified.user_handle,
        discoverable=key.discoverable,
        user_verified=key.user_verified,
        backup_eligible=key.backup_eligible,
        backed_up=key.backed_up,
        name=verified.name,
        created_at=now,
    )
    try:
        with session.begin_nested():  # another user's registration of the same key may win
            if spend is not None:
                user_tokens.consume(session, row=spend, now=now)
            session.add(row)
    except IntegrityError:
        _rejected(session, user_id=user_id, reason="credential_exists", client=client, now=now)
        raise CredentialExists() from None
    codes = recovery.issue_initial(session, deps, user_id=user_id, client=client, now=now)
    audit.record(
        session,
        type="mfa.webauthn.registered",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={
            "factor_id": row.id,
            "aaguid": key.aaguid,
            "format": key.attestation_format,
            "passkey": webauthn.is_passkey(row),
            "backup_eligible": key.backup_eligible,
            "recovery_codes_issued": codes is not None,
        },
    )
    user = session.get(User, user_id)
    assert user is not None  # the foreign key
    notices.send(
        session,
        deps,
        to=user.email,
        template="mfa_factor_added",
        now=now,
        kind="A security key or passkey",
        when=now.strftime("%Y-%m-%d %H:%M"),
    )
    return RegisteredKey(
        id=row.id,
        type="webauthn",
        name=row.name,
        created_at=row.created_at,
        last_used_at=None,
        passkey=webauthn.is_passkey(row),
        synced=row.backup_eligible,
        recovery_codes=codes,
    )


def register(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    credential: dict[str, Any],
    name: str | None,
    client: Client,
    now: datetime,
) -> RegisteredKey:
    """Verify a RegistrationResponseJSON against this user's open challenge and store it;
    the first factor of an account also gets its recovery codes."""
    verified = _verify_registration(
        session, deps, user_id=user_id, credential=credential, name=name, client=client, now=now
    )
    return _store(session, deps, user_id=user_id, verified=verified, client=client, now=now)


def register_with_enrollment(
    session: DbSession,
    deps: Deps,
    *,
    enrollment_token: str,
    credential: dict[str, Any],
    name: str | None,
    client: Client,
    now: datetime,
) -> EnrollmentLogin:
    """Register with an ``mfa_enrollment`` token and finish the login it stands for (amr
    gains hwk/swk and mfa). The response is verified before the token is spent, and the
    token is spent with the key (it stays live if another account stores that key first)."""
    token, user = mfa_management.find_enrollment(
        session, token=enrollment_token, now=now, lock_owner=True
    )
    verified = _verify_registration(
        session, deps, user_id=user.id, credential=credential, name=name, client=client, now=now
    )
    factor = _store(
        session, deps, user_id=user.id, verified=verified, client=client, now=now, spend=token
    )
    method = "swk" if factor.synced else "hwk"
    amr = tuple(dict.fromkeys((*user_tokens.context_of(token).get("amr", ["pwd"]), method, "mfa")))
    result = login.finish_login(session, deps, user=user, amr=amr, client=client, now=now)
    return EnrollmentLogin(factor=factor, result=result)
