"""Aliases over HTTP: what each served name points at, moving it, splitting it, rolling it back, and its
log. Every write is one call of the registry's ``move`` (servers converge within a poll)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from learnloop.api.deps import DbDep, ReadAuth, SettingsDep, WriteAuth, request_actor
from learnloop.api.openapi import error_responses, request_body
from learnloop.store.records import JsonBool, parse_json_body

router = APIRouter(prefix="/v1/aliases", tags=["serving"])

# The alias name rule (registry.aliases.check_alias_name, which enforces it), said in the document.
ALIAS_NAME_RULE = {"pattern": r"^(?!base$)(?!v[0-9]+$)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
AliasName = Annotated[str, Field(json_schema_extra=ALIAS_NAME_RULE)]
AliasPath = Annotated[str, Path(json_schema_extra=ALIAS_NAME_RULE)]


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a mistake to report, not to drop
    version: str = Field(
        min_length=1, description="A version id, 'base', or 'upstream:<name>' (an [[upstreams]] provider)."
    )
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
    force: bool = Field(
        False,
        description="Give a share to a version the gate rejected or never evaluated (logged as forced).",
    )
    reason: str | None = None
    actor: str | None = None


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: AliasName = "learnloop"
    reason: str | None = None
    actor: str | None = None


def _public(a: Any, name: str | None = None) -> dict[str, Any]:
    if a is None:  # never moved: it serves the base model
        return {"name": name, "version": "base", "candidate": None, "split": 0.0, "shadow": 0.0}
    return {
        "name": a.name,
        "version": a.version_id or "base",
        "candidate": a.candidate_id,
        "split": a.split,
        "shadow": a.shadow,
    }


_MOVE, _SPLIT, _ROLLBACK = TypeAdapter(AliasMove), TypeAdapter(AliasSplit), TypeAdapter(RollbackIn)
_REFUSED = (
    "Refused: the gate rejected or never evaluated the version (send force=true to override), "
    "or its files are gone."
)


@router.get("", dependencies=[ReadAuth])
def list_all(db: DbDep) -> list[dict[str, Any]]:
    from learnloop.store.aliases import list_aliases

    return [_public(a) for a in list_aliases(db)]


@router.get("/history", dependencies=[ReadAuth])
def history(
    db: DbDep, alias: str | None = None, limit: int = Query(200, ge=1, le=5000)
) -> list[dict[str, Any]]:
    """The append-only alias log, newest first."""
    from learnloop.registry import alias_history

    return alias_history(db, alias, limit)


# The bodies are read after the token check, as the ingest routes do (401 whatever a client sends).
@router.post(
    "/rollback",
    dependencies=[WriteAuth],
    openapi_extra=request_body("RollbackIn", _ROLLBACK),
    responses=error_responses(409, _409="Nothing earlier to roll back to, or that version is gone."),
)
async def rollback(db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Serve what the alias served before (repeated: v3 -> v2 -> v1 -> base)."""
    from learnloop.registry import rollback

    body: RollbackIn = parse_json_body(_ROLLBACK, await request.body())
    target = await run_in_threadpool(
        rollback, db, settings, alias=body.alias, actor=request_actor(request, body.actor), reason=body.reason
    )
    return {"alias": body.alias, "version_id": target}


@router.put(
    "/{name}",
    dependencies=[WriteAuth],
    openapi_extra=request_body("AliasMove", _MOVE),
    responses=error_responses(
        404, 409, 422, _404="No model version by that id, or no alias by that name.", _409=_REFUSED
    ),
)
async def move(name: AliasPath, request: Request, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Point the alias at a version; every server loads it, then switches. The gate applies as for promote."""
    from learnloop.registry import move
    from learnloop.store.aliases import get_alias

    body: AliasMove = parse_json_body(_MOVE, await request.body())

    def run() -> dict[str, Any]:
        move(
            db,
            settings,
            name,
            "set",
            body.version,
            actor=request_actor(request, body.actor),
            reason=body.reason,
            force=body.force,
            override="Send force=true",
        )
        return _public(get_alias(db, name), name)

    return await run_in_threadpool(run)


@router.put(
    "/{name}/split",
    dependencies=[WriteAuth],
    openapi_extra=request_body("AliasSplit", _SPLIT),
    responses=error_responses(
        404, 409, 422, _404="No model version by that id, or no alias by that name.", _409=_REFUSED
    ),
)
async def split(name: AliasPath, request: Request, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Let a candidate answer a share of the alias's traffic (sticky per user), or shadow it unseen.
    A share for a version the gate has not passed needs force, as promote does."""
    from learnloop.registry import move
    from learnloop.store.aliases import get_alias

    body: AliasSplit = parse_json_body(_SPLIT, await request.body())

    def run() -> dict[str, Any]:
        move(
            db,
            settings,
            name,
            "split",
            body.candidate,
            share=body.split,
            shadow=body.shadow,
            force=body.force,
            actor=request_actor(request, body.actor),
            reason=body.reason,
            override="Send force=true",
        )
        return _public(get_alias(db, name), name)

    return await run_in_threadpool(run)
