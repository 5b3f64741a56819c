"""Small query helpers every stage shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

T = TypeVar("T")

# Values per ``IN (...)`` list: well under SQLite's 32,766 parameters and PostgreSQL's 65,535.
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> list[list[T]]:
    """``items`` cut into lists of at most ``size``, in order."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def insert_ignoring_duplicates(writer: Session | Connection, table: Table | type) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the writer's database: idempotency keys make a
    repeated write a no-op."""
    bind = writer.get_bind() if isinstance(writer, Session) else writer
    module = postgresql if bind.dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()
