"""Passwordless login with a passkey: no email is asked, so nothing can be enumerated.

Only credentials registered as discoverable with user verification, asserting with user
verification, log in here; every other key stays a second factor. The login carries amr
``(hwk|swk, "mfa")``: possession plus a PIN or biometric checked by the authenticator.

The options are anonymous and throttled per address only, so they store nothing: their
``challenge_id`` is the challenge's expiry and a MAC, under a key of the ring, of its digest and
that expiry (``wa.challenge_token``). The login checks the MAC against the challenge the client
data answers, then the expiry, and only a login that verified writes a row: the challenge's
digest, already used, which refuses a second use until it is swept after the id expired.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto import webauthn as wa
from authsvc.errors import InvalidChallenge, InvalidCredentials, InvalidWebauthnResponse
from authsvc.models import WebauthnCredential
from authsvc.services import accounts, audit, login, throttle, webauthn
from authsvc.services.context import Client, Deps

_MAC_PURPOSE = "passkey-challenge"


@dataclass(frozen=True, slots=True)
class PasskeyOptions:
    challenge_id: str
    options: dict[str, Any]


def _throttle(session: DbSession, deps: Deps, *, client: Client, now: datetime) -> None:
    who = throttle.Who(now=now, client=client, action="passkey_login")
    throttle.hit(session, deps, "ip", client.rate_key, who=who)


def passkey_options(
    session: DbSession, deps: Deps, *, client: Client, now: datetime
) -> PasskeyOptions:
    """Options with an empty allowCredentials: the authenticator picks a discoverable
    credential, so nothing about any account is asked or revealed."""
    _throttle(session, deps, client=client, now=now)
    settings = deps.settings
    challenge = wa.new_challenge()
    expires_at = int((now + settings.webauthn_challenge_ttl).timestamp())
    challenge_id = wa.challenge_token(
        deps.keyring.mac_key(_MAC_PURPOSE), challenge=challenge, expires_at=expires_at
    )
    options = wa.authentication_options(
        rp_id=settings.webauthn_rp_id,
        challenge=challenge,
        timeout_ms=webauthn.timeout_ms(settings),
        user_verification="required",
        allow=[],
    )
    return PasskeyOptions(challenge_id=challenge_id, options=options)


def _live_challenge(
    session: DbSession, deps: Deps, *, challenge_id: str, challenge: bytes, now: datetime
) -> datetime:
    """When the challenge that ``challenge_id`` names expires; InvalidChallenge unless the id
    was issued here for this very challenge, has not expired and has not logged in yet."""
    expires_at = wa.challenge_token_expiry(
        deps.keyring.mac_key(_MAC_PURPOSE), token=challenge_id, challenge=challenge
    )
    if expires_at is None or expires_at <= now.timestamp():
        raise InvalidChallenge()
    if webauthn.passkey_challenge_spent(session, challenge=challenge):
        raise InvalidChallenge()
    return datetime.fromtimestamp(expires_at, UTC)


def login_with_passkey(
    session: DbSession,
    deps: Deps,
    *,
    challenge_id: str,
    credential: dict[str, Any],
    client: Client,
    now: datetime,
) -> login.LoginResult:
    """Log in with a discoverable, user-verifying credential alone."""
    _throttle(session, deps, client=client, now=now)

    def failed(reason: str, user_id: str | None = None) -> None:
        audit.record(
            session,
            type="login.passkey",
            outcome="failure",
            now=now,
            client=client,
            user_id=user_id,
            details={"reason": reason},
        )

    try:
        answer = wa.read_assertion(credential)
    except wa.WebauthnResponseError as exc:
        failed(exc.reason)
        raise InvalidWebauthnResponse(str(exc), reason=exc.reason) from None
    try:
        expires_at = _live_challenge(
            session, deps, challenge_id=challenge_id, challenge=answer.challenge, now=now
        )
    except InvalidChallenge:
        failed("invalid_challenge")  # replayed, expired or foreign: worth seeing in the trail
        raise
    row = session.scalar(
        select(WebauthnCredential).where(WebauthnCredential.credential_id == answer.credential_id)
    )
    # The account locked before its credential's counter is written (the order every writer
    # keeps), and both read again under the lock: a disable or a deletion of the account, or
    # the removal of this passkey, committed meanwhile shows.
    user = accounts.lock_account(session, row.user_id) if row is not None else None
    if row is not None and user is not None:
        row = session.get(WebauthnCredential, row.id, populate_existing=True)
    try:
        if row is None or user is None:
            raise webauthn.AssertionRefusedError("unknown_credential")
        if user.disabled_at is not None or user.password_invalidated_at is not None:
            raise webauthn.AssertionRefusedError("account_unavailable")
        if not webauthn.is_passkey(row):
            raise webauthn.AssertionRefusedError("not_a_passkey")
        if answer.user_handle is None or not hmac.compare_digest(
            answer.user_handle, row.user_handle
        ):
            raise webauthn.AssertionRefusedError("user_handle_mismatch")
    except webauthn.AssertionRefusedError as exc:
        failed(exc.reason, user.id if user is not None else None)
        raise InvalidCredentials() from None
    assert user is not None and row is not None
    # Spent before the counter moves: a replay that passed the check above with this login
    # (it then waited for the account's lock, or for this row on another account) finds the
    # row here and is refused as a replay, not taken for a cloned key by the advanced counter.
    try:
        spent = webauthn.spend_passkey_challenge(
            session, challenge=answer.challenge, expires_at=expires_at, now=now
        )
    except InvalidChallenge:
        failed("invalid_challenge")
        raise
    try:
        webauthn.authenticate(
            session,
            deps,
            row=row,
            credential=credential,
            challenge=answer.challenge,
            require_uv=True,
            client=client,
            now=now,
        )
    except webauthn.AssertionRefusedError as exc:
        webauthn.return_passkey_challenge(session, spent)
        failed(exc.reason, user.id)
        raise InvalidCredentials() from None
    result = login.finish_login(
        session, deps, user=user, amr=(webauthn.amr_of(row), "mfa"), client=client, now=now
    )
    webauthn.sweep_challenges(session, now=now)  # last: see webauthn.issue_challenge
    return result
