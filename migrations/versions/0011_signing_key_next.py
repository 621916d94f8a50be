"""signing keys: a next key, published before it signs

Revision ID: 0011
Revises: 0010

Apps cache the JWKS (up to its max-age, 5 minutes). A rotation that made a new key sign at
once gave every app holding a copy tokens with a kid it did not know, refused until it fetched
again. The JWKS now always holds the next key as well, and a rotation promotes it. A key that
signed before this release activated when it was created.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authsvc.db

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("activates_at", authsvc.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE signing_keys SET activates_at = created_at")


def downgrade() -> None:
    # A next key never signed: without the column it would look like the active one.
    op.execute("DELETE FROM signing_keys WHERE activates_at IS NULL")
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_column("activates_at")
