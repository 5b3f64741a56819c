"""loop tally: what the daemon's checks counted per prompt, and an index on ingested_at to find what is new

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "loop_tallies",
        sa.Column("prompt_hash", sa.String(length=64), nullable=False),
        sa.Column("loop", sa.String(length=128), nullable=False),
        sa.Column("part", sa.String(length=16), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("varied", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("prompt_hash", "loop", "part", name=op.f("pk_loop_tallies")),
    )
    with op.batch_alter_table("loops", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tally",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
    with op.batch_alter_table("trajectories", schema=None) as batch_op:
        batch_op.create_index("ix_trajectories_ingested_at", ["ingested_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trajectories", schema=None) as batch_op:
        batch_op.drop_index("ix_trajectories_ingested_at")
    with op.batch_alter_table("loops", schema=None) as batch_op:
        batch_op.drop_column("tally")
    op.drop_table("loop_tallies")
