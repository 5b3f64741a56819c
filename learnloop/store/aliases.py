"""Served names and their history. The database is the one source of truth for what is serving.

An alias (``learnloop``, or one per loop) points at an immutable version id (``None``: the base
model). Every move is written together with an append-only ``alias_events`` row in one
transaction; serving processes watch the alias rows and converge on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from learnloop.errors import ValidationFailed
from learnloop.store.db import Database
from learnloop.store.models import Alias, AliasEvent, utcnow

DEFAULT_ALIAS = "learnloop"


@dataclass(frozen=True)
class AliasView:
    name: str
    version_id: str | None
    candidate_id: str | None
    split: float
    shadow: float


def _view(row: Alias) -> AliasView:
    return AliasView(row.name, row.version_id, row.candidate_id, row.split, row.shadow)


def get_alias(db: Database, name: str = DEFAULT_ALIAS) -> AliasView | None:
    with db.read_session() as session:
        row = session.get(Alias, name)
        return _view(row) if row is not None else None


def list_aliases(db: Database) -> list[AliasView]:
    with db.read_session() as session:
        return [_view(r) for r in session.scalars(select(Alias).order_by(Alias.name))]


def move_alias(
    session: Session,
    name: str,
    version_id: str | None,
    *,
    action: str,
    actor: str | None = None,
    reason: str | None = None,
    evaluation_id: int | None = None,
) -> AliasEvent:
    """Point ``name`` at ``version_id`` inside the caller's transaction and log the move."""
    row = session.get(Alias, name, with_for_update=True)
    previous = row.version_id if row is not None else None
    if row is None:
        row = Alias(name=name, version_id=version_id)
        session.add(row)
    else:
        row.version_id = version_id
        if row.candidate_id == version_id:  # the candidate became the main version: no split left
            row.candidate_id, row.split, row.shadow = None, 0.0, 0.0
    row.updated_at = utcnow()
    event = AliasEvent(
        alias=name,
        action=action,
        from_version=previous,
        to_version=version_id,
        actor=actor,
        reason=reason,
        evaluation_id=evaluation_id,
    )
    session.add(event)
    return event


def set_split(
    session: Session,
    name: str,
    candidate_id: str | None,
    *,
    split: float = 0.0,
    shadow: float = 0.0,
    actor: str | None = None,
    reason: str | None = None,
) -> None:
    """Send ``split`` of the alias's traffic to ``candidate_id`` (A/B), and run it in shadow on ``shadow``."""
    for field, value in (("split", split), ("shadow", shadow)):
        if not 0.0 <= value <= 1.0:
            raise ValidationFailed(
                f"{field} must be between 0 and 1, got {value}", [(field, "between 0 and 1")]
            )
    row = session.get(Alias, name, with_for_update=True)
    if row is None:
        row = Alias(name=name, version_id=None)
        session.add(row)
    row.candidate_id = candidate_id
    row.split, row.shadow = (split, shadow) if candidate_id else (0.0, 0.0)
    row.updated_at = utcnow()
    session.add(
        AliasEvent(
            alias=name,
            action="split",
            from_version=row.version_id,
            to_version=candidate_id,
            actor=actor,
            reason=reason or f"split={split} shadow={shadow}",
        )
    )


def alias_history(db: Database, name: str | None = None, limit: int = 200) -> list[AliasEvent]:
    query = select(AliasEvent).order_by(AliasEvent.id.desc()).limit(limit)
    if name is not None:
        query = query.where(AliasEvent.alias == name)
    with db.read_session() as session:
        return list(session.scalars(query))
