"""WebAuthn challenges of a second-factor step name the mfa_token or reset link they serve

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: challenges issued before this release (minutes-lived) stay
    # unbound and are refused by a step that asks for its own; new ones are bound.
    with op.batch_alter_table("webauthn_challenges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_token_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webauthn_challenges", schema=None) as batch_op:
        batch_op.drop_column("user_token_id")
