"""Reading served names. The database is the one source of truth for what is serving.

An alias (``learnloop``, or one per loop) points at an immutable version id (``None``: the base
model) or an upstream provider (``upstream:<name>``, an ``[[upstreams]]`` entry). Only the registry
writes alias rows (``learnloop.registry.move``: the row, its append-only ``alias_events`` entry, the
version states and an event in one transaction); serving processes read them here and converge on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from learnloop.store.db import Database
from learnloop.store.models import Alias

DEFAULT_ALIAS = "learnloop"
# An alias target is a version id, None (the base model) or an upstream provider: "upstream:<name>".
UPSTREAM_PREFIX = "upstream:"


def is_upstream(target: str | None) -> bool:
    """Whether an alias target names an upstream provider (``upstream:<name>``)."""
    return isinstance(target, str) and target.startswith(UPSTREAM_PREFIX)


def upstream_name(target: str) -> str:
    return target[len(UPSTREAM_PREFIX) :]


def target_of(name: str) -> str:
    """The alias target of the ``[[upstreams]]`` entry called ``name``."""
    return f"{UPSTREAM_PREFIX}{name}"


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
