"""POST /v1/password/change: a new password with the current one (and a bearer token), or
with the change_token a login handed out when a change was required."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.passwords import HasherBusy
from authsvc.errors import InvalidCredentials, Overloaded
from authsvc.models import User
from authsvc.services import accounts, audit, throttle, user_tokens
from authsvc.services.context import Client, Deps


def change_password(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str | None,
    current_password: str | None,
    change_token: str | None,
    new_password: str,
    client: Client,
    now: datetime,
) -> None:
    """With a bearer token and the current password, or with a change_token from login."""
    user: User | None
    proven_at = None
    if change_token is not None:
        row, owner = user_tokens.find_with_owner(
            session, token=change_token, purpose="change_password", now=now, lock_owner=True
        )
        user, proven_at = owner, row.created_at
        accounts.lock_breach_targets(session, user)  # before the token, as a reset does
        normalized = accounts.acceptable_password(deps, new_password, email=user.email)
        user_tokens.consume(session, row=row, now=now)
    else:
        # Locked before the current password is checked: a reset or breach response that
        # commits meanwhile would otherwise be overwritten by a change proven with the old one.
        user = accounts.lock_account(session, user_id) if user_id else None
        if user is None or current_password is None:
            raise InvalidCredentials()
        normalized = accounts.acceptable_password(deps, new_password, email=user.email)
        # A check of the current password tells a holder of a stolen access token whether a
        # guess is right: the limits of login, on the same counters, each counted before it.
        who = accounts.throttled(
            session,
            deps,
            action="password_change",
            email=user.email,
            client=client,
            now=now,
            user_id=user.id,
        )
        throttle.hit(session, deps, "account_failures", user.email, who=who)
        try:
            result = deps.hasher.verify(user.password_hash or "", current_password)
        except HasherBusy:
            raise Overloaded(retry_after=1) from None
        # A password invalidated by a breach response works nowhere: only the mailed link
        # replaces it, as at login.
        invalid = user.password_invalidated_at is not None
        if not result.ok or invalid:
            audit.record(
                session,
                type="password.change",
                outcome="password_invalidated" if invalid else "wrong_password",
                now=now,
                client=client,
                user_id=user.id,
            )
            raise InvalidCredentials()
    accounts.set_password(
        session,
        deps,
        user=user,
        password=normalized,
        client=client,
        now=now,
        event="password.change",
        proven_at=proven_at,
    )
