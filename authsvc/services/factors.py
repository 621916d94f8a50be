"""Second factors: which methods a user has, checking one answer, listing and removing them.

Each factor type lives in its own module (``totp``, ``recovery``, ``webauthn``); ``login``,
``accounts`` and the HTTP layer call only these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, select
from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidMfa, InvalidRequest, NotFound
from authsvc.services import recovery, totp, webauthn
from authsvc.services.context import Client, Deps


@dataclass(frozen=True, slots=True)
class FactorProof:
    """One second-factor answer, as sent to /v1/login/mfa or /v1/password/reset."""

    totp_code: str | None = None
    recovery_code: str | None = None
    webauthn: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Only one answer is ever checked: refuse the others rather than ignore them. A
        # client's mistake, not a wrong answer, so it costs no attempt.
        if self._answers() > 1:
            raise InvalidRequest(
                "send only one of totp_code, recovery_code or webauthn", field="proof"
            )
        # An answer of the wrong shape is refused here, before any attempt or limit is counted.
        if self.totp_code is not None:
            totp.check_code_shape(self.totp_code)
        if self.recovery_code is not None:
            recovery.normalize_code(self.recovery_code)
        if self.webauthn is not None:
            webauthn.read_assertion(self.webauthn)

    def _answers(self) -> int:
        return sum(v is not None for v in (self.totp_code, self.recovery_code, self.webauthn))

    @property
    def given(self) -> bool:
        return self._answers() > 0


@dataclass(frozen=True, slots=True)
class FactorInfo:
    id: str
    type: str  # totp | webauthn
    name: str
    created_at: datetime
    last_used_at: datetime | None
    # A security key that is discoverable and verifies its user: it signs in alone, without
    # the password (webauthn.is_passkey). Never an authenticator app.
    passkey: bool


_USER_ID = bindparam("user_id", type_=String())
# Built once: every login asks, and building the statement cost more than running it.
_METHODS = select(
    totp.active_exists(_USER_ID),
    webauthn.credentials_exist(_USER_ID),
    recovery.remaining_count(_USER_ID),
)


def methods_for(session: DbSession, *, user_id: str) -> tuple[str, ...]:
    """The second-factor methods the user has enrolled, e.g. ("totp", "recovery_code"):
    one query, as every login asks."""
    has_totp, has_keys, codes_left = session.execute(_METHODS, {"user_id": user_id}).one()
    methods = [name for name, present in (("totp", has_totp), ("webauthn", has_keys)) if present]
    if methods and codes_left:
        methods.append("recovery_code")
    return tuple(methods)


def verify(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    user_token_id: str,
    proof: FactorProof,
    client: Client,
    now: datetime,
) -> str:
    """Check one answer to the step ``user_token_id`` (an mfa_token or reset link) stands
    for; return its RFC 8176 amr value or raise InvalidMfa."""
    if proof.totp_code is not None:
        return totp.verify_code(
            session, deps, user_id=user_id, code=proof.totp_code, client=client, now=now
        )
    if proof.recovery_code is not None:
        return recovery.use_code(
            session, deps, user_id=user_id, code=proof.recovery_code, client=client, now=now
        )
    if proof.webauthn is not None:
        return webauthn.verify_mfa_assertion(
            session,
            deps,
            user_id=user_id,
            user_token_id=user_token_id,
            credential=proof.webauthn,
            client=client,
            now=now,
        )
    raise InvalidMfa("Send one of totp_code, recovery_code or webauthn")


def refusal_details(refusal: InvalidMfa) -> dict[str, Any]:
    """What the audit event of a refused answer records of it: why a WebAuthn answer was
    refused (a relayed or framed assertion, another account's key), as the passkey login and
    registration record it; a wrong code has no reason."""
    reason = refusal.extra.get("reason")
    return {"reason": reason} if reason is not None else {}


def list_factors(session: DbSession, *, user_id: str) -> list[FactorInfo]:
    items = [
        *totp.list_factors(session, user_id=user_id),
        *webauthn.list_factors(session, user_id=user_id),
    ]
    return sorted(items, key=lambda f: f.created_at)


def owner_type(session: DbSession, *, user_id: str, factor_id: str) -> str:
    """ "totp" or "webauthn" for a factor of this user; NotFound otherwise (also for other
    users' factors, so ids cannot be probed)."""
    for info in list_factors(session, user_id=user_id):
        if info.id == factor_id:
            return info.type
    raise NotFound("No such factor")
