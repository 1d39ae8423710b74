"""campaigns: the steering driver's lease; tasks: an index in claim order

One driver steers a campaign at a time. ``driver_token`` is the fencing token of the driver that holds the
campaign (NULL: none does); ``driver_host``, ``driver_pid`` and ``driver_start_ticks`` say which process it is,
``driver_since`` when it took the lease and ``driver_heartbeat_at`` when it last renewed it.

``ix_tasks_claim_order`` lets a claim read a stage's READY tasks in its order (priority, then age) instead of
sorting all of them each time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("driver_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("driver_host", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("driver_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("driver_start_ticks", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("driver_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("driver_heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_tasks_claim_order", "tasks", ["stage_id", "state", sa.text("priority DESC"), "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_claim_order", table_name="tasks")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        for name in ("driver_heartbeat_at", "driver_since", "driver_start_ticks", "driver_pid", "driver_host",
                     "driver_token"):
            batch_op.drop_column(name)
