"""Aliases over HTTP: what each served name points at, and moving it (servers converge within a poll)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from learnloop.api.deps import DbDep, ReadAuth, WriteAuth
from learnloop.api.openapi import error_responses, request_body
from learnloop.store.records import JsonBool, parse_json_body

router = APIRouter(prefix="/v1/aliases", tags=["serving"])


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a mistake to report, not to drop
    version: str = Field(min_length=1, description="A version id, or 'base'.")
    reason: str | None = None
    actor: str | None = Field(None, description="Who moved it (kept in the alias log).")
    force: JsonBool = Field(
        False, description="Serve a version the gate rejected or never evaluated (logged as forced)."
    )


class AliasSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str | None = Field(
        None, description="Version answering a share of the traffic; null ends the split."
    )
    # strict: a number, as the schema says (true is not a share).
    split: float = Field(
        0.0,
        ge=0,
        le=1,
        strict=True,
        description="Share of requests answered by the candidate (sticky per user).",
    )
    shadow: float = Field(
        0.0, ge=0, le=1, strict=True, description="Share of requests the candidate also answers, unseen."
    )
    reason: str | None = None
    actor: str | None = None


def _public(a: Any) -> dict[str, Any]:
    return {
        "name": a.name,
        "version": a.version_id or "base",
        "candidate": a.candidate_id,
        "split": a.split,
        "shadow": a.shadow,
    }


_MOVE, _SPLIT = TypeAdapter(AliasMove), TypeAdapter(AliasSplit)


@router.get("", dependencies=[ReadAuth])
def list_all(db: DbDep) -> list[dict[str, Any]]:
    from learnloop.store.aliases import list_aliases

    return [_public(a) for a in list_aliases(db)]


# The bodies are read after the token check, as the ingest routes do (401 whatever a client sends).
@router.put(
    "/{name}",
    dependencies=[WriteAuth],
    openapi_extra=request_body("AliasMove", _MOVE),
    responses=error_responses(
        404,
        409,
        _404="No model version by that id.",
        _409="Refused: the gate rejected or never evaluated the version "
        "(send force=true to override), or its files are gone.",
    ),
)
async def move(name: str, request: Request, db: DbDep) -> dict[str, Any]:
    """Point the alias at a version; every server loads it, then switches. The gate applies as for promote."""
    from learnloop.serving.runtime import set_alias
    from learnloop.store.aliases import get_alias

    body: AliasMove = parse_json_body(_MOVE, await request.body())

    def run() -> dict[str, Any]:
        set_alias(
            db,
            name,
            body.version,
            actor=body.actor or "api",
            reason=body.reason,
            force=body.force,
            override="Send force=true",
        )
        return _public(get_alias(db, name))

    return await run_in_threadpool(run)


@router.put(
    "/{name}/split",
    dependencies=[WriteAuth],
    openapi_extra=request_body("AliasSplit", _SPLIT),
    responses=error_responses(
        404, 409, _404="No model version by that id.", _409="The candidate version has no adapter files."
    ),
)
async def split(name: str, request: Request, db: DbDep) -> dict[str, Any]:
    """Let a candidate answer a share of the alias's traffic (sticky per user), or shadow it unseen."""
    from learnloop.serving.runtime import ensure_version
    from learnloop.store.aliases import get_alias, set_split

    body: AliasSplit = parse_json_body(_SPLIT, await request.body())

    def run() -> dict[str, Any]:
        with db.session() as session:
            if body.candidate is not None:
                ensure_version(session, body.candidate)
            set_split(
                session,
                name,
                body.candidate,
                split=body.split,
                shadow=body.shadow,
                actor=body.actor or "api",
                reason=body.reason,
            )
        return _public(get_alias(db, name))

    return await run_in_threadpool(run)
