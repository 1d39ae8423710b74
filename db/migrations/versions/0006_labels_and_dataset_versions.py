"""labels (active learning's reference calculations) and dataset versions

``labels``: one row per structure an active-learning round sent to a physics code, with the outcome (``ok`` or
``failed`` with its cause), the energy (eV) and largest force (eV/Å), the selected candidate it labels
(``hit_id``), the round and the labelling task. ``datasets.version``: an active-learning dataset gets a new
version (a new row, its own content hash) each round; earlier versions stay. Existing rows are version 1.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("hit_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.String(length=100), nullable=False),
        sa.Column("sid", sa.BigInteger(), nullable=False),
        sa.Column("formula", sa.String(length=200), nullable=False),
        sa.Column("natoms", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=30), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("cause", sa.String(length=50), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("energy_ev", sa.Float(), nullable=True),
        sa.Column("max_force_ev_per_a", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_labels_campaign_id_campaigns"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["hit_id"], ["screening_hits.id"], name=op.f("fk_labels_hit_id_screening_hits"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_labels_task_id_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint("task_id", "structure_id", name=op.f("uq_labels_task_id_structure_id")),
    )
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_labels_campaign_id"), ["campaign_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_labels_hit_id"), ["hit_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_labels_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labels_task_id"))
        batch_op.drop_index(batch_op.f("ix_labels_hit_id"))
        batch_op.drop_index(batch_op.f("ix_labels_campaign_id"))
    op.drop_table("labels")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("version")
