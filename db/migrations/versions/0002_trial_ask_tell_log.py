"""trials: ask/tell event positions and wall time

The optimizer's ask/tell log lives in the database so a killed driver can replay it exactly: ``ask_event`` and
``tell_event`` order a trial's ask and tell among all events of its HPO campaign; ``wall_time_s`` is its cost.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ask_event", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tell_event", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("wall_time_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_column("wall_time_s")
        batch_op.drop_column("tell_event")
        batch_op.drop_column("ask_event")
