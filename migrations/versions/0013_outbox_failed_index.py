"""outbox messages: a partial index of the messages parked as failed

Revision ID: 0013
Revises: 0012

The housekeeping sweep deletes messages parked as failed once AUTHSVC_FAILED_MESSAGE_RETENTION
has passed (their payloads hold recipients' addresses). Without an index on failed_at, each
sweep read the whole outbox to find none: 150 ms with 700,000 rows, a week of sent messages
at 100,000 a day. The partial index holds only the parked messages, a handful.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARKED = "failed_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_messages_failed_at",
            ["failed_at"],
            unique=False,
            postgresql_where=sa.text(PARKED),
            sqlite_where=sa.text(PARKED),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_messages_failed_at")
