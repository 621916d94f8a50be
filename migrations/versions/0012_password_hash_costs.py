"""password hash costs: failed logins take as long as the costliest stored hash

Revision ID: 0012
Revises: 0011

An account imported with a costlier hash than the current settings' (bcrypt 12 against
Argon2id at 19 MiB, say), or one not signed in since the cost settings were lowered, answered a
wrong password in that hash's longer time, and an unknown email in the current one: the
accounts could be told apart by timing. Each such cost is recorded here, and every failed login
is padded to the costliest. Costs from before this release are not known: they are recorded as
accounts with them sign in and fail, at the next import, or never (see README).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authsvc.db

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "password_hash_costs",
        sa.Column("prefix", sa.String(length=128), nullable=False),
        sa.Column("sample_hash", sa.Text(), nullable=False),
        sa.Column("recorded_at", authsvc.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prefix", name=op.f("pk_password_hash_costs")),
    )


def downgrade() -> None:
    op.drop_table("password_hash_costs")
