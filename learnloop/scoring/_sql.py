"""Small SQL helpers shared by the scoring modules."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignoring_duplicates(session: Session, model: type) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: idempotency keys make a repeated write a no-op."""
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return module.insert(model).on_conflict_do_nothing()


def chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
