"""Second factors: which methods a user has, and checking one answer.

Factor types (TOTP, recovery codes, WebAuthn) plug in here; ``login`` and ``accounts`` call
only these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidMfa
from authsvc.services.context import Client, Deps


@dataclass(frozen=True, slots=True)
class FactorProof:
    """One second-factor answer, as sent to /v1/login/mfa or /v1/password/reset."""

    totp_code: str | None = None
    recovery_code: str | None = None
    webauthn: dict[str, Any] | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.totp_code, self.recovery_code, self.webauthn))


def methods_for(session: DbSession, *, user_id: str) -> tuple[str, ...]:
    """The second-factor methods the user has enrolled, e.g. ("totp", "recovery_code")."""
    return ()


def verify(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    proof: FactorProof,
    client: Client,
    now: datetime,
) -> str:
    """Check one answer; return its RFC 8176 amr value ("otp", "hwk", "swk") or raise
    InvalidMfa."""
    raise InvalidMfa()
