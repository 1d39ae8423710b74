"""attempts: the nodes an attempt ran on

``node_list`` is the scheduler's name for the nodes of the attempt, as the worker saw it: the nodes Parsl's MPI
mode handed the task (``PARSL_MPI_NODELIST``), else the batch job's allocation (``SLURM_JOB_NODELIST``, Slurm's
compact form such as ``cn[1-2]``, or the hosts of ``PBS_NODEFILE``); null outside a batch job and for attempts
recorded before this revision. With ``batch_job_id`` it says where a multi-node attempt ran, and which attempts
shared a node that was lost.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node_list", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("node_list")
