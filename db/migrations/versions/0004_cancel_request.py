"""campaigns: a user's request to cancel the campaign's run

``cancel_requested_at`` is set by ``campaign cancel`` (from any host that can reach the database) and read by
the campaign's driver every few seconds: it stops the run as if interrupted, records the campaign
``cancelled``, and gives its lease up. A driver that takes the campaign (a later ``run`` or ``resume``) clears
the request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
