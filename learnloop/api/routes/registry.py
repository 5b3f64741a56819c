"""Registry, evaluation and export routes. Reads are open; writes need the token when one is set.

Each route parses its input and calls the registry's or evaluation's public functions; domain
errors become 404 (unknown id), 409 (refused: gate, serving version, hash mismatch) or 422.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from learnloop.api.deps import DbDep, SettingsDep, WriteAuth

router = APIRouter(prefix="/v1", tags=["registry"])


def _actor(request: Request, given: str | None) -> str:
    who = "api-token" if request.app.state.settings.api_token is not None else "api"
    return f"{who}:{given}" if given else who


class RegisterIn(BaseModel):
    adapter_dir: str = Field(description="A training run folder or LoRA adapter folder on the server's disk.")
    base_model: str | None = None
    parent_id: str | None = None
    dataset_id: int | None = None
    job_id: int | None = None
    loop: str | None = None
    name: str | None = None
    note: str | None = None
    actor: str | None = None


class MoveIn(BaseModel):
    alias: str = "learnloop"
    reason: str | None = None
    evaluation_id: int | None = None
    force: bool = False
    actor: str | None = None


class RollbackIn(BaseModel):
    alias: str = "learnloop"
    reason: str | None = None
    actor: str | None = None


class RestoreIn(BaseModel):
    loop: str | None = None
    serve: bool = False
    force: bool = False
    reason: str | None = None
    actor: str | None = None


class EvaluateIn(BaseModel):
    candidate: str
    baseline: str = Field("serving", description="serving, base, a version id, or teacher.")
    scenario: str | None = None
    limit: int | None = Field(None, ge=1)
    judge: bool | None = None


class ExportIn(BaseModel):
    format: Literal["merged", "gguf", "ollama"] = "merged"
    quant: Literal["f32", "f16", "q8_0"] = "q8_0"
    out: str | None = None
    ollama_name: str | None = None


@router.get("/versions")
def list_versions_route(db: DbDep, loop: str | None = None,
                        state: Literal["candidate", "serving", "archived", "rejected"] | None = None) -> list[dict[str, Any]]:
    """Every version, newest first."""
    from learnloop.registry import list_versions

    return [v.as_dict() for v in list_versions(db, loop=loop, state=state)]


@router.get("/versions/diff")
def diff_route(db: DbDep, a: str = Query(...), b: str = Query(...)) -> dict[str, Any]:
    from learnloop.registry import diff_versions

    return diff_versions(db, a, b)


@router.get("/versions/{version_id}")
def get_version_route(version_id: str, db: DbDep) -> dict[str, Any]:
    from learnloop.registry import get_version

    return get_version(db, version_id).as_dict()


@router.get("/versions/{version_id}/lineage")
def lineage_route(version_id: str, db: DbDep) -> dict[str, Any]:
    from learnloop.registry import lineage

    return lineage(db, version_id)


@router.get("/trajectories/{trajectory_id}/lineage")
def trajectory_lineage_route(trajectory_id: str, db: DbDep) -> dict[str, Any]:
    """From a served answer back to the data that trained its model."""
    from learnloop.registry import trace_trajectory

    return trace_trajectory(db, trajectory_id)


@router.post("/versions", status_code=201, dependencies=[WriteAuth])
def register_route(body: RegisterIn, db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Register an adapter folder on the server's disk as a new version (422 when its base does not match)."""
    from learnloop.registry import get_version, register_version

    vid = register_version(db, settings, adapter_dir=body.adapter_dir, base_model=body.base_model, parent_id=body.parent_id,
                           dataset_id=body.dataset_id, job_id=body.job_id, loop=body.loop, name=body.name, note=body.note,
                           actor=_actor(request, body.actor))
    return get_version(db, vid).as_dict()


@router.post("/versions/{version_id}/promote", dependencies=[WriteAuth])
def promote_route(version_id: str, body: MoveIn, db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Serve the version under the alias (409 without a passing gate verdict unless force)."""
    from learnloop.registry import promote

    return promote(db, settings, version_id, alias=body.alias, actor=_actor(request, body.actor), reason=body.reason,
                   evaluation_id=body.evaluation_id, force=body.force)


@router.post("/aliases/rollback", dependencies=[WriteAuth])
def rollback_route(body: RollbackIn, db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    from learnloop.registry import rollback

    target = rollback(db, settings, alias=body.alias, actor=_actor(request, body.actor), reason=body.reason)
    return {"alias": body.alias, "version_id": target}


@router.post("/versions/{version_id}/restore", dependencies=[WriteAuth])
def restore_route(version_id: str, body: RestoreIn, db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    from learnloop.registry import restore

    return restore(db, settings, version_id, loop=body.loop, serve=body.serve, force=body.force, reason=body.reason,
                   actor=_actor(request, body.actor)).as_dict()


@router.delete("/versions/{version_id}", dependencies=[WriteAuth])
def delete_route(version_id: str, db: DbDep, settings: SettingsDep, request: Request, force: bool = False) -> dict[str, Any]:
    from learnloop.registry import delete_version

    delete_version(db, settings, version_id, force=force, actor=_actor(request, None))
    return {"deleted": version_id}


@router.post("/versions/{version_id}/export", dependencies=[WriteAuth])
def export_route(version_id: str, body: ExportIn, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Write merged weights, a GGUF file or an Ollama Modelfile on the server's disk (blocks until done)."""
    from learnloop.registry import export_version

    return export_version(db, settings, version_id, fmt=body.format, quant=body.quant, out=body.out,
                          ollama_name=body.ollama_name).as_dict()


@router.get("/aliases/history")
def alias_history_route(db: DbDep, alias: str | None = None, limit: int = Query(200, ge=1, le=5000)) -> list[dict[str, Any]]:
    """The append-only alias log, newest first."""
    from learnloop.store.aliases import alias_history

    return [{"id": e.id, "alias": e.alias, "action": e.action, "from": e.from_version, "to": e.to_version, "actor": e.actor,
             "reason": e.reason, "evaluation_id": e.evaluation_id, "at": e.created_at.isoformat()}
            for e in alias_history(db, alias, limit)]


@router.get("/evaluations")
def list_evaluations_route(db: DbDep, candidate: str | None = None, limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
    from learnloop.evaluation import list_evaluations

    return list_evaluations(db, candidate=candidate, limit=limit)


@router.get("/evaluations/compare")
def compare_route(db: DbDep, a: str = Query(...), b: str = Query(...), top: int = Query(5, ge=1, le=100)) -> dict[str, Any]:
    from learnloop.evaluation import compare_evaluations

    return compare_evaluations(db, a, b, top=top)


@router.get("/evaluations/{evaluation_id}")
def get_evaluation_route(evaluation_id: int, db: DbDep, examples: bool = True) -> dict[str, Any]:
    from learnloop.evaluation import get_evaluation

    return get_evaluation(db, evaluation_id, examples=examples)


@router.post("/evaluations", status_code=201, dependencies=[WriteAuth])
def evaluate_route(body: EvaluateIn, db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Run an evaluation now (blocks while the answers are generated) and return it with its gate verdict.

    Uses the server's serving backend when it has one, so no second copy of the model is loaded.
    """
    from learnloop.evaluation import evaluate, get_evaluation

    serving = getattr(request.app.state, "serving", None)
    backend = serving.backend if serving is not None else None
    ev_id = evaluate(db, settings, candidate=body.candidate, baseline=body.baseline, scenario=body.scenario,
                     limit=body.limit, judge=body.judge, backend=backend)
    return get_evaluation(db, ev_id, examples=False)
