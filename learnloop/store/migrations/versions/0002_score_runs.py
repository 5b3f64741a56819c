"""score runs: which versioned heuristic already ran on which trajectory (also when it gave no score)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 18:40:05.224455
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import learnloop.store.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "score_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trajectory_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("created_at", learnloop.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["trajectories.id"],
            name=op.f("fk_score_runs_trajectory_id_trajectories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_runs")),
        sa.UniqueConstraint("trajectory_id", "name", "version", name="uq_score_runs_trajectory_name_version"),
    )
    with op.batch_alter_table("score_runs", schema=None) as batch_op:
        batch_op.create_index("ix_score_runs_name_version", ["name", "version"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("score_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_score_runs_name_version")

    op.drop_table("score_runs")
