"""breach response phases; room on every users page for a new version of each row

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("breach_campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phase", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("next_page", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_page", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # A breach response over every account rewrites each users row once, page by page. With
        # half of each page free, every new row version fits on its own page: a HOT update, no
        # index entries, each page written once (fillfactor 90 left room for about one row in
        # ten). Applies to pages written from now on; VACUUM FULL or pg_repack repacks a table
        # that exists already.
        op.execute("ALTER TABLE users SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE users SET (fillfactor = 90)")
    with op.batch_alter_table("breach_campaigns", schema=None) as batch_op:
        batch_op.drop_column("last_page")
        batch_op.drop_column("next_page")
        batch_op.drop_column("phase")
