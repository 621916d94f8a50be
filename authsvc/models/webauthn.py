"""WebAuthn credentials (security keys and passkeys) and their single-use challenges."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db import Base, UTCDateTime, new_id

__all__ = ["WebauthnChallenge", "WebauthnCredential"]


class WebauthnCredential(Base):
    """A registered public-key credential. Only public material is stored."""

    __tablename__ = "webauthn_credentials"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # COSE_Key
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[str] = mapped_column(String(128), default="")  # space separated
    aaguid: Mapped[str] = mapped_column(String(36))
    attestation_format: Mapped[str] = mapped_column(String(32))
    # The user handle (user.id in the creation options) the authenticator stores.
    user_handle: Mapped[bytes] = mapped_column(LargeBinary)
    discoverable: Mapped[bool | None] = mapped_column(Boolean)  # credProps.rk
    user_verified: Mapped[bool] = mapped_column(Boolean)  # at registration
    backup_eligible: Mapped[bool] = mapped_column(Boolean)
    backed_up: Mapped[bool] = mapped_column(Boolean)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The last time the sign counter went backwards (a possible clone).
    counter_regression_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebauthnChallenge(Base):
    """One ceremony's challenge, stored as a SHA-256 digest and consumed at most once.

    purpose: registration | mfa | passkey
    """

    __tablename__ = "webauthn_challenges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    challenge_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_verification: Mapped[str] = mapped_column(String(16))
    user_handle: Mapped[bytes | None] = mapped_column(LargeBinary)  # registration
    name: Mapped[str | None] = mapped_column(String(64))  # registration
    # A second-factor step's: the mfa_token or reset link whose options issued it.
    user_token_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
