"""version states from the facts: serving = behind an alias now, archived = served before

Before, `learnloop alias set` and `PUT /v1/aliases/...` moved aliases without touching version
states (a replaced version stayed `serving`, a version set that way never became `serving` nor
`ever_served`), and retention marked versions it pruned `archived` though they never served. This
recomputes `ever_served` (also from the alias log) and `state` with the registry's one rule
(`learnloop.registry.aliases.state_of`), written out here so later changes to the code cannot change
what this migration did. Data only: no schema change, and nothing to undo on downgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 18:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Alias-log actions that put a version in front of users (a split's candidate may have had no share).
_SERVED_ACTIONS = ("promote", "force", "rollback", "restore", "set")

VERSIONS = sa.table(
    "model_versions",
    sa.column("id", sa.String),
    sa.column("state", sa.String),
    sa.column("ever_served", sa.Boolean),
    sa.column("gate", sa.JSON),
)
ALIASES = sa.table(
    "aliases",
    sa.column("version_id", sa.String),
    sa.column("candidate_id", sa.String),
    sa.column("split", sa.Float),
)
LOG = sa.table("alias_events", sa.column("to_version", sa.String), sa.column("action", sa.String))


def upgrade() -> None:
    conn = op.get_bind()
    serving: set[str] = set()
    for version_id, candidate_id, split in conn.execute(
        sa.select(ALIASES.c.version_id, ALIASES.c.candidate_id, ALIASES.c.split)
    ):
        if version_id:
            serving.add(version_id)
        if candidate_id and (split or 0) > 0:
            serving.add(candidate_id)
    served = set(
        conn.execute(
            sa.select(LOG.c.to_version).where(
                LOG.c.to_version.is_not(None), LOG.c.action.in_(_SERVED_ACTIONS)
            )
        ).scalars()
    )
    rows = conn.execute(
        sa.select(VERSIONS.c.id, VERSIONS.c.state, VERSIONS.c.ever_served, VERSIONS.c.gate)
    ).all()
    for vid, state, ever_served, gate in rows:
        ever = bool(ever_served) or vid in served or vid in serving
        if vid in serving:
            new = "serving"
        elif ever:
            new = "archived"
        elif isinstance(gate, dict) and gate.get("verdict") == "reject":
            new = "rejected"
        else:
            new = "candidate"
        if (new, ever) != (state, bool(ever_served)):
            conn.execute(sa.update(VERSIONS).where(VERSIONS.c.id == vid).values(state=new, ever_served=ever))


def downgrade() -> None:
    pass  # the recomputed states are valid under the old code too
