"""breach-response campaigns

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authsvc.db

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "breach_campaigns",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("selector", sa.String(length=32), nullable=False),
        sa.Column("selector_before", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("revoke_sessions", sa.Boolean(), nullable=False),
        sa.Column("reset_mfa", sa.Boolean(), nullable=False),
        sa.Column("notify", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("targeted", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("sessions_revoked", sa.Integer(), nullable=False),
        sa.Column("notices_queued", sa.Integer(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.String(length=32), nullable=True),
        sa.Column("boundaries", sa.Text(), nullable=True),
        sa.Column("input_report", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_by_key_id", sa.String(length=32), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", authsvc.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breach_campaigns")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_breach_campaigns_idempotency_key")),
    )
    with op.batch_alter_table("breach_campaigns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_breach_campaigns_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_breach_campaigns_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "breach_targets",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("processed_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("notice_queued_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("notified_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reset_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("campaign_id", "user_id", name=op.f("pk_breach_targets")),
    )
    with op.batch_alter_table("breach_targets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_breach_targets_notified",
            ["campaign_id"],
            unique=False,
            postgresql_where=sa.text("notified_at IS NOT NULL"),
            sqlite_where=sa.text("notified_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_breach_targets_reset",
            ["campaign_id"],
            unique=False,
            postgresql_where=sa.text("reset_at IS NOT NULL"),
            sqlite_where=sa.text("reset_at IS NOT NULL"),
        )
    if op.get_bind().dialect.name == "postgresql":
        # A breach response rewrites millions of users and sessions rows. Room left on each page
        # keeps those updates HOT (no new index entries): several times faster, and logins
        # meanwhile wait less. Applies to pages written from now on (VACUUM FULL or pg_repack
        # repacks an existing table).
        op.execute("ALTER TABLE users SET (fillfactor = 90)")
        op.execute("ALTER TABLE sessions SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sessions RESET (fillfactor)")
        op.execute("ALTER TABLE users RESET (fillfactor)")
    with op.batch_alter_table("breach_targets", schema=None) as batch_op:
        batch_op.drop_index("ix_breach_targets_reset")
        batch_op.drop_index("ix_breach_targets_notified")
    op.drop_table("breach_targets")
    with op.batch_alter_table("breach_campaigns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_breach_campaigns_created_at"))
        batch_op.drop_index(batch_op.f("ix_breach_campaigns_status"))
    op.drop_table("breach_campaigns")
