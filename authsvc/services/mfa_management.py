"""The user's second factors across types: list, rename, remove, recovery-code sets, and the
enrollment that turns an ``mfa_enrollment`` token into a login.

Removing a factor or replacing the recovery codes needs a recent login (``reauth_window``);
every change is audited and mailed to the account's address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidToken, MfaNotEnabled, ReauthenticationRequired
from authsvc.models import User, UserToken
from authsvc.services import audit, factors, login, notices, recovery, totp, user_tokens, webauthn
from authsvc.services.context import Client, Deps
from authsvc.services.login import LoginResult

notices.register(
    "mfa_factor_removed",
    "A second factor was removed from your account",
    "{kind} added on {added} was removed from your account at {when} UTC.{extra}\n\n"
    "If it was not you, reset your password at once.\n",
)
notices.register(
    "mfa_factor_renamed",
    "A second factor was renamed",
    "{kind} added on {added} was renamed at {when} UTC.\n\n"
    "If it was not you, reset your password at once.\n",
)

# The notices name a factor by its kind and the day it was added, never by its name: whoever
# holds a session names factors, and a name quoted into the mail that warns of the change put
# words or a link of theirs into a mail from this service.
_KINDS = {"totp": "The authenticator app", "webauthn": "The security key or passkey"}
_LAST_FACTOR = (
    "\n\nIt was your last second factor: your recovery codes were deleted too, and signing in "
    "now needs only your password."
)
# AUTHSVC_REQUIRE_MFA: the next login asks for an enrollment, not for the password alone.
_LAST_FACTOR_REQUIRED = (
    "\n\nIt was your last second factor: your recovery codes were deleted too, and your next "
    "sign-in will ask you to add a new second factor."
)


@dataclass(frozen=True, slots=True)
class FactorList:
    factors: list[factors.FactorInfo]
    recovery_codes_remaining: int


@dataclass(frozen=True, slots=True)
class EnrollmentLogin:
    confirmation: totp.TotpConfirmation
    login: LoginResult


def require_recent_login(deps: Deps, *, auth_time: datetime, now: datetime) -> None:
    if now - auth_time > deps.settings.reauth_window:
        raise ReauthenticationRequired(
            "Sign in again (password and second factor) to make this change"
        )


def _email(session: DbSession, user_id: str) -> str:
    user = session.get(User, user_id)
    assert user is not None
    return user.email


def _when(now: datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M")


def _day(at: datetime) -> str:
    return at.strftime("%Y-%m-%d")


def list_all(session: DbSession, *, user_id: str) -> FactorList:
    return FactorList(
        factors=factors.list_factors(session, user_id=user_id),
        recovery_codes_remaining=recovery.remaining(session, user_id=user_id),
    )


def _find(session: DbSession, *, user_id: str, factor_id: str) -> factors.FactorInfo:
    kind = factors.owner_type(session, user_id=user_id, factor_id=factor_id)
    return next(
        info
        for info in factors.list_factors(session, user_id=user_id)
        if info.id == factor_id and info.type == kind
    )


def rename(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    factor_id: str,
    name: str,
    client: Client,
    now: datetime,
) -> factors.FactorInfo:
    name = totp.clean_name(name)
    # Locked before the factor is read, as a removal locks before it deletes: read while a
    # removal's delete was not yet committed, the factor's UPDATE then matched no row (500).
    recovery.lock_second_factors(session, user_id=user_id)
    old = _find(session, user_id=user_id, factor_id=factor_id)
    if old.type == "totp":
        renamed = totp.rename(session, user_id=user_id, factor_id=factor_id, name=name)
    else:
        renamed = webauthn.rename_credential(
            session, user_id=user_id, credential_id=factor_id, name=name, now=now
        )
    if old.name != name:
        audit.record(
            session,
            type="mfa.factor_renamed",
            outcome="success",
            now=now,
            client=client,
            user_id=user_id,
            details={"factor_id": factor_id, "type": old.type},
        )
        notices.send(
            session,
            deps,
            to=_email(session, user_id),
            template="mfa_factor_renamed",
            now=now,
            kind=_KINDS[old.type],
            added=_day(old.created_at),
            when=_when(now),
        )
    return renamed


def remove(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    factor_id: str,
    auth_time: datetime,
    client: Client,
    now: datetime,
) -> None:
    """Remove one factor; removing the last one also removes the recovery codes."""
    if totp.delete_pending(session, user_id=user_id, factor_id=factor_id):
        # An unconfirmed enrollment is not a factor yet: no re-auth, no notice; but its start
        # is in the trail, so its end is too.
        audit.record(
            session,
            type="mfa.totp_enrollment",
            outcome="cancelled",
            now=now,
            client=client,
            user_id=user_id,
            details={"factor_id": factor_id},
        )
        return
    recovery.lock_second_factors(session, user_id=user_id)
    info = _find(session, user_id=user_id, factor_id=factor_id)
    require_recent_login(deps, auth_time=auth_time, now=now)
    if info.type == "totp":
        totp.delete_factor(session, user_id=user_id, factor_id=factor_id)
    else:
        webauthn.delete_credential(session, user_id=user_id, credential_id=factor_id, now=now)
    session.flush()
    codes_removed = 0
    last = not factors.list_factors(session, user_id=user_id)
    if last:
        codes_removed = recovery.delete_all(session, user_id=user_id)
    audit.record(
        session,
        type="mfa.factor_removed",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        details={
            "factor_id": factor_id,
            "type": info.type,
            "last": last,
            "recovery_codes_removed": codes_removed,
        },
    )
    notices.send(
        session,
        deps,
        to=_email(session, user_id),
        template="mfa_factor_removed",
        now=now,
        kind=_KINDS[info.type],
        added=_day(info.created_at),
        when=_when(now),
        extra=_last_factor_note(deps) if last else "",
    )


def _last_factor_note(deps: Deps) -> str:
    return _LAST_FACTOR_REQUIRED if deps.settings.require_mfa else _LAST_FACTOR


def regenerate_recovery_codes(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    auth_time: datetime,
    client: Client,
    now: datetime,
) -> tuple[str, ...]:
    # Locked before the check: a removal of the last factor at the same time either waits for
    # this, or is seen by it (no code set is left without a factor).
    recovery.lock_second_factors(session, user_id=user_id)
    if not factors.list_factors(session, user_id=user_id):
        raise MfaNotEnabled("Recovery codes come with a second factor; enroll one first")
    require_recent_login(deps, auth_time=auth_time, now=now)
    return recovery.regenerate(session, deps, user_id=user_id, client=client, now=now)


def find_enrollment(
    session: DbSession, *, token: str, now: datetime, lock_owner: bool = False
) -> tuple[UserToken, User]:
    """The live ``mfa_enrollment`` token and its owner, or InvalidToken: also once the account
    has a second factor. The token stands for a login of an account without one, whose holder
    proved only the password; a factor the owner added meanwhile from another session (a new
    phone, after removing the old one) must not be passed by enrolling one more."""
    row, user = user_tokens.find_with_owner(
        session, token=token, purpose="mfa_enrollment", now=now, lock_owner=lock_owner
    )
    if factors.methods_for(session, user_id=user.id):
        raise InvalidToken()
    return row, user


def confirm_totp_with_enrollment(
    session: DbSession,
    deps: Deps,
    *,
    enrollment_token: str,
    factor_id: str,
    code: str,
    client: Client,
    now: datetime,
) -> EnrollmentLogin:
    """Confirm a TOTP factor enrolled with an ``mfa_enrollment`` token and finish the login
    that token stands for (amr gains ``otp`` and ``mfa``). The code is checked before the
    token is spent, and the token is spent with the activation: an activation refused (the
    factor cancelled meanwhile) leaves it live. The account is locked as the token is read,
    as at every login step: a disable committed meanwhile shows (the step is refused), or
    waits for this login and then ends its session."""
    row, user = find_enrollment(session, token=enrollment_token, now=now, lock_owner=True)
    step = totp.check_pending_code(
        session, deps, user_id=user.id, factor_id=factor_id, code=code, client=client, now=now
    )
    with session.begin_nested():  # the factor may be cancelled meanwhile: the token stays live
        user_tokens.consume(session, row=row, now=now)
        confirmation = totp.activate(
            session, deps, user_id=user.id, factor_id=factor_id, step=step, client=client, now=now
        )
    amr = tuple(user_tokens.context_of(row).get("amr", ["pwd"]))
    amr = tuple(dict.fromkeys((*amr, totp.AMR, "mfa")))
    result = login.finish_login(session, deps, user=user, amr=amr, client=client, now=now)
    return EnrollmentLogin(confirmation=confirmation, login=result)
