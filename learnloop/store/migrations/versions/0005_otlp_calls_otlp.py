"""otlp calls: LLM call spans waiting for their trace's root span

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 18:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import learnloop.store.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "otlp_calls",
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.Column(
            "call",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("trajectory_id", sa.String(length=64), nullable=True),
        sa.Column("received_at", learnloop.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name=op.f("pk_otlp_calls")),
    )
    with op.batch_alter_table("otlp_calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_otlp_calls_received_at"), ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("otlp_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_otlp_calls_received_at"))
    op.drop_table("otlp_calls")
