"""Turning a proven identity into a login: the MFA step, forced changes, sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidMfa, InvalidRequest, InvalidWebauthnResponse, RateLimited
from authsvc.models import User
from authsvc.services import audit, factors, sessions, throttle, user_tokens
from authsvc.services.context import Client, Deps
from authsvc.services.sessions import TokenPair

MAX_MFA_ATTEMPTS_PER_TOKEN = 5


@dataclass(frozen=True, slots=True)
class LoginResult:
    status: str  # authenticated | mfa_required | password_change_required | mfa_enrollment_required
    tokens: TokenPair | None = None
    mfa_token: str | None = None
    methods: tuple[str, ...] = ()
    expires_in: int | None = None
    change_token: str | None = None
    enrollment_token: str | None = None
    user_id: str | None = None


def after_password(
    session: DbSession,
    deps: Deps,
    *,
    user: User,
    amr: tuple[str, ...],
    client: Client,
    now: datetime,
) -> LoginResult:
    """The first factor is proven: ask for a second one, or finish."""
    methods = factors.methods_for(session, user_id=user.id)
    if methods:
        ttl = deps.settings.mfa_token_ttl
        token = user_tokens.issue(
            session,
            user_id=user.id,
            purpose="mfa",
            ttl=ttl,
            now=now,
            context={"amr": list(amr)},
            replace_previous=False,
        )
        audit.record(
            session,
            type="login.password",
            outcome="mfa_required",
            now=now,
            client=client,
            user_id=user.id,
        )
        return LoginResult(
            status="mfa_required",
            mfa_token=token,
            methods=methods,
            expires_in=int(ttl.total_seconds()),
            user_id=user.id,
        )
    return finish_login(session, deps, user=user, amr=amr, client=client, now=now)


def finish_login(
    session: DbSession,
    deps: Deps,
    *,
    user: User,
    amr: tuple[str, ...],
    client: Client,
    now: datetime,
) -> LoginResult:
    """Every factor is proven: a forced password change, a forced enrollment, or tokens."""
    if user.password_change_required:
        token = user_tokens.issue(
            session,
            user_id=user.id,
            purpose="change_password",
            ttl=deps.settings.change_token_ttl,
            now=now,
        )
        audit.record(
            session,
            type="login.success",
            outcome="password_change_required",
            now=now,
            client=client,
            user_id=user.id,
            details={"amr": list(amr)},
        )
        return LoginResult(status="password_change_required", change_token=token, user_id=user.id)
    if deps.settings.require_mfa and "mfa" not in amr:
        token = user_tokens.issue(
            session,
            user_id=user.id,
            purpose="mfa_enrollment",
            ttl=deps.settings.mfa_token_ttl,
            now=now,
            context={"amr": list(amr)},
        )
        audit.record(
            session,
            type="login.success",
            outcome="mfa_enrollment_required",
            now=now,
            client=client,
            user_id=user.id,
            details={"amr": list(amr)},
        )
        return LoginResult(
            status="mfa_enrollment_required", enrollment_token=token, user_id=user.id
        )
    tokens = sessions.start_session(session, deps, user=user, amr=amr, client=client, now=now)
    audit.record(
        session,
        type="login.success",
        outcome="authenticated",
        now=now,
        client=client,
        user_id=user.id,
        details={"amr": list(amr), "session_id": tokens.session_id},
    )
    return LoginResult(status="authenticated", tokens=tokens, user_id=user.id)


def complete_mfa(
    session: DbSession,
    deps: Deps,
    *,
    mfa_token: str,
    proof: factors.FactorProof,
    client: Client,
    now: datetime,
) -> LoginResult:
    """The second step: one factor answer against a live mfa_token."""
    if not proof.given:  # a client's mistake, not a wrong answer: it costs no attempt
        raise InvalidRequest("send one of totp_code, recovery_code or webauthn", field="proof")
    row, user = user_tokens.find_with_owner(
        session, token=mfa_token, purpose="mfa", now=now, lock_owner=True
    )
    who = throttle.Who(now=now, client=client, action="mfa", user_id=user.id)
    try:
        throttle.hit(session, deps, "mfa_account", user.id, who=who)
    except RateLimited:  # any account limit (audited where it refused) kills the token too
        user_tokens.kill(session, row=row, now=now)
        raise
    # Counted before the check, so that parallel answers cannot each be checked.
    attempts = user_tokens.claim_attempt(session, row=row, limit=MAX_MFA_ATTEMPTS_PER_TOKEN)
    try:
        method_amr = factors.verify(
            session,
            deps,
            user_id=user.id,
            user_token_id=row.id,
            proof=proof,
            client=client,
            now=now,
        )
    except RateLimited:
        user_tokens.kill(session, row=row, now=now)
        raise
    except (InvalidRequest, InvalidWebauthnResponse):  # malformed: a client's mistake, no answer
        user_tokens.return_attempt(session, row=row)
        raise
    except InvalidMfa as exc:
        if attempts >= MAX_MFA_ATTEMPTS_PER_TOKEN:
            user_tokens.kill(session, row=row, now=now)
        audit.record(
            session,
            type="login.mfa",
            outcome="failure",
            now=now,
            client=client,
            user_id=user.id,
            details={"attempts": attempts, **factors.refusal_details(exc)},
        )
        raise
    user_tokens.consume(session, row=row, now=now)
    amr = tuple(user_tokens.context_of(row).get("amr", ["pwd"]))
    amr = tuple(dict.fromkeys((*amr, method_amr, "mfa")))
    audit.record(
        session,
        type="login.mfa",
        outcome="success",
        now=now,
        client=client,
        user_id=user.id,
        details={"method": method_amr},
    )
    return finish_login(session, deps, user=user, amr=amr, client=client, now=now)
