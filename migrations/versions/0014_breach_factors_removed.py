"""breach targets: when the campaign removed the account's second factors

Revision ID: 0014
Revises: 0013

A breach response with reset_mfa removes the second factors of its accounts, and its notice
says so. An account whose user set a new password meanwhile gets no notice (it would say the
password no longer works), so its owner lost two-step verification without a word. The
campaign now records on the account's target row when it removed a factor, and an account it
does not notify gets a mail about the removed factors instead. Rows written before this
release stay empty: their campaigns sent what they sent.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authsvc.db

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: on PostgreSQL adding the column rewrites nothing.
    with op.batch_alter_table("breach_targets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("factors_removed_at", authsvc.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("breach_targets", schema=None) as batch_op:
        batch_op.drop_column("factors_removed_at")
