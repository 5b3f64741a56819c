"""Aliases over HTTP: what each served name points at, and moving it (servers converge within a poll)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from learnloop.api.deps import DbDep, WriteAuth

router = APIRouter(prefix="/v1/aliases", tags=["serving"])


class AliasMove(BaseModel):
    version: str = Field(min_length=1, description="A version id, or 'base'.")
    reason: str | None = None
    actor: str | None = Field(None, description="Who moved it (kept in the alias log).")


class AliasSplit(BaseModel):
    candidate: str | None = Field(None, description="Version answering a share of the traffic; null ends the split.")
    split: float = Field(0.0, ge=0, le=1, description="Share of requests answered by the candidate (sticky per user).")
    shadow: float = Field(0.0, ge=0, le=1, description="Share of requests the candidate also answers, unseen.")
    reason: str | None = None
    actor: str | None = None


def _public(a: Any) -> dict[str, Any]:
    return {"name": a.name, "version": a.version_id or "base", "candidate": a.candidate_id, "split": a.split,
            "shadow": a.shadow}


@router.get("")
def list_all(db: DbDep) -> list[dict[str, Any]]:
    from learnloop.store.aliases import list_aliases

    return [_public(a) for a in list_aliases(db)]


@router.put("/{name}", dependencies=[WriteAuth])
def move(name: str, body: AliasMove, db: DbDep) -> dict[str, Any]:
    """Point the alias at a version; every server loads it, then switches."""
    from learnloop.serving.runtime import set_alias
    from learnloop.store.aliases import get_alias

    set_alias(db, name, body.version, actor=body.actor or "api", reason=body.reason)
    return _public(get_alias(db, name))


@router.put("/{name}/split", dependencies=[WriteAuth])
def split(name: str, body: AliasSplit, db: DbDep) -> dict[str, Any]:
    from learnloop.serving.runtime import ensure_version
    from learnloop.store.aliases import get_alias, set_split

    with db.session() as session:
        if body.candidate is not None:
            ensure_version(session, body.candidate)
        set_split(session, name, body.candidate, split=body.split, shadow=body.shadow, actor=body.actor or "api",
                  reason=body.reason)
    return _public(get_alias(db, name))
