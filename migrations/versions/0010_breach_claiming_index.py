"""breach campaigns: a partial index of the campaigns that may still claim accounts

Revision ID: 0010
Revises: 0009

Creating a campaign, and so every admin force-reset (a one-account campaign), looks for the
campaigns that may still count accounts as their own: pending or running, or walked and not
enrolled yet (services.breach_sql.claiming). Only the status had an index, and the second half
of the condition none, so PostgreSQL read every campaign there ever was: 23-26 ms of each
force-reset with 100,000 finished campaigns, 56 ms with 300,000 (benchmarks/breach_history.py).
The partial index holds only the few that match (0.06 ms); campaigns leave it as they finish.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMING = (
    "status IN ('pending', 'running') OR (last_page IS NOT NULL AND phase IN ('walk', 'enroll'))"
)


def upgrade() -> None:
    with op.batch_alter_table("breach_campaigns", schema=None) as batch_op:
        batch_op.create_index(
            "ix_breach_campaigns_claiming",
            ["id"],
            unique=False,
            postgresql_where=sa.text(CLAIMING),
            sqlite_where=sa.text(CLAIMING),
        )


def downgrade() -> None:
    with op.batch_alter_table("breach_campaigns", schema=None) as batch_op:
        batch_op.drop_index("ix_breach_campaigns_claiming")
