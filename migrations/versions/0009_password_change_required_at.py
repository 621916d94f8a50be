"""users: when the change-at-next-login flag was set

Revision ID: 0009
Revises: 0008

A breach response cancelled (or failed) after its walk finds the accounts it flagged as those
flagged since it started. For change_at_next_login that was judged by updated_at, which any
write to the row moves (a rehash at login, a disable, another campaign), so an account flagged
earlier, by another campaign or a force-reset, was counted and sent a second notice. The flag now
keeps its own time. Accounts flagged before this release take updated_at, the best time known.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authsvc.db

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: on PostgreSQL adding the column rewrites nothing.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "password_change_required_at",
                authsvc.db.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
    op.execute(
        "UPDATE users SET password_change_required_at = updated_at WHERE password_change_required"
    )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_change_required_at")
