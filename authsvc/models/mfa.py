"""TOTP factors and recovery codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db import Base, UTCDateTime, new_id

__all__ = ["RecoveryCode", "TotpFactor"]


class TotpFactor(Base):
    """An authenticator app. Pending until a correct code confirms it (``confirmed_at``).

    The base32 secret is AES-GCM encrypted under the key ring, bound to the row id.
    ``last_used_step`` is the last RFC 6238 time step accepted; only later steps are accepted.
    """

    __tablename__ = "totp_factors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # pending factors only
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirm_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RecoveryCode(Base):
    """One single-use recovery code; only its keyed hash is stored."""

    __tablename__ = "recovery_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set on the set's first row (the lowest id) only, once the "running low" notice was queued:
    # the notice goes once per set (services/recovery.py, _claim_low_notice).
    low_notice_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
