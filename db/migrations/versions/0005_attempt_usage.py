"""attempts: the CPU time an attempt's processes used

``cpu_seconds`` (user + system) is read from the exit status of the app's process (``wait4``: the process and
every descendant it waited for); null where the worker could not measure it (an attempt stopped by the worker,
lost, or run before this revision). CPU utilisation of an attempt is
``cpu_seconds / ((ended_at - started_at) * cpus)``. (Linux's ``ru_maxrss`` of a child starts from its parent's
resident set at fork, so it would report the worker's size, not the app's: peak memory stays the app's own
figure, e.g. the training result's ``peak_memory_bytes``.)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpu_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("cpu_seconds")
