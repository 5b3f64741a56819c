"""gateway: requests, tokens and cost each target answered, per minute and alias

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 19:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import learnloop.store.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "traffic_counts",
        sa.Column("minute", learnloop.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("cut", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "alias", "target", name=op.f("pk_traffic_counts")),
    )


def downgrade() -> None:
    op.drop_table("traffic_counts")
