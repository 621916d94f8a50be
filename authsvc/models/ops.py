"""Operational tables: outbox, admin keys, signing keys, password hash costs, audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db import Base, UTCDateTime, new_id


class OutboxMessage(Base):
    """A unit of background work written in the same transaction as its cause.

    kind: signup_request | reset_request | email | webhook (payload is encrypted JSON).
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (
        # The housekeeping sweep finds the few parked messages past their retention here.
        Index(
            "ix_outbox_messages_failed_at",
            "failed_at",
            postgresql_where=text("failed_at IS NOT NULL"),
            sqlite_where=text("failed_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    payload_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(512))


class AdminKey(Base):
    __tablename__ = "admin_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SigningKey(Base):
    """Ed25519 key for access tokens; the private half is AES-GCM encrypted.

    ``activates_at`` is None for the next key: published in the JWKS, not yet signing."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_key_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    activates_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PasswordHashCost(Base):
    """A cost of stored password hashes other than the current settings' (imported ones,
    ones made under earlier settings): ``prefix`` is the hash text up to its salt
    (``crypto.passwords.cost_prefix``), ``sample_hash`` a hash of a random password with that
    cost, which each process times to learn how long a failed login must take."""

    __tablename__ = "password_hash_costs"

    prefix: Mapped[str] = mapped_column(String(128), primary_key=True)
    sample_hash: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """One security-relevant event; rows are hash-chained through ``prev_hash``."""

    __tablename__ = "audit_events"
    # One account's events by type, newest first: the new-device check reads an account's
    # successful logins, and both audit listings filter by account. The leading user_id serves
    # every by-account query; an account with many events of other types (one under attack)
    # costs nothing extra.
    __table_args__ = (Index("ix_audit_events_user_id_type_id", "user_id", "type", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(32))
    admin_key_id: Mapped[str | None] = mapped_column(String(32))
    email_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The one row (id 1) that pins the audit chain: where it starts after pruning and where it
    ends. ``head_mac`` is a keyed MAC over both ends, so neither a truncated tail nor a rewritten
    chain goes unnoticed by someone without the keys."""

    __tablename__ = "audit_chain_heads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    anchor_id: Mapped[int] = mapped_column(BigInteger, default=0)
    anchor_hash: Mapped[str] = mapped_column(String(64))
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    head_mac: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
