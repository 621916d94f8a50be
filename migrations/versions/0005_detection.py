"""audit trail and detection additions: the chain head, an index on email digests

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authsvc.db

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64


def upgrade() -> None:
    heads = op.create_table(
        "audit_chain_heads",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("anchor_id", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(length=64), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("head_mac", sa.String(length=64), nullable=False),
        sa.Column("updated_at", authsvc.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_heads")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_events_email_hash"), ["email_hash"], unique=False
        )
    # The head starts at the current end of the trail; the first start with keys signs it.
    bind = op.get_bind()
    last = bind.execute(
        sa.text("SELECT id, row_hash FROM audit_events ORDER BY id DESC LIMIT 1")
    ).first()
    op.bulk_insert(
        heads,
        [
            {
                "id": 1,
                "anchor_id": 0,
                "anchor_hash": GENESIS,
                "last_id": last[0] if last else 0,
                "last_hash": last[1] if last else GENESIS,
                "head_mac": "",
                "updated_at": None,
            }
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_email_hash"))
    op.drop_table("audit_chain_heads")
