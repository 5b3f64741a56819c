"""Registry, evaluation and export routes. Reads are open; writes need the token when one is set.

Each route parses its input and calls the registry's or evaluation's public functions; domain
errors become 404 (unknown id), 409 (refused: gate, serving version, hash mismatch) or 422.
The write routes read their body themselves after the token check, as the ingest routes do (a
client without the token gets 401 whatever it sends), and run the registry off the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from learnloop.api.deps import ROW_ID_MAX, DbDep, ReadAuth, RowIdPath, SettingsDep, WriteAuth, request_actor
from learnloop.api.openapi import error_responses, request_body
from learnloop.api.routes.aliases import AliasName
from learnloop.registry import EXPORT_NAME, OLLAMA_NAME
from learnloop.store.records import JsonBool, JsonInt, parse_json_body

router = APIRouter(prefix="/v1", tags=["registry"])


class _Body(BaseModel):
    # A misspelt field is a mistake to report, not to drop (and the document says no others are taken).
    model_config = ConfigDict(extra="forbid")


# A path the server reads, as a request gives it: absolute, taken as it is (never expanded with '~',
# which names the server's users' homes), no NUL (no file system takes it).
ServerPath = Annotated[str, Field(pattern=r"^/[^\x00]*$", max_length=4096)]


class RegisterIn(_Body):
    adapter_dir: ServerPath = Field(
        description="Absolute path of a training run folder or LoRA adapter folder on the server's disk."
    )
    base_model: str | None = Field(
        None,
        pattern=r"^[^~\x00][^\x00]*$",
        description="A prepared model name or an absolute path on the server (default: the adapter's).",
    )
    parent_id: str | None = None
    dataset_id: JsonInt | None = Field(None, ge=0, le=ROW_ID_MAX)
    job_id: JsonInt | None = Field(None, ge=0, le=ROW_ID_MAX)
    loop: str | None = None
    name: str | None = None
    note: str | None = None
    actor: str | None = None


class MoveIn(_Body):
    alias: AliasName = "learnloop"
    reason: str | None = None
    evaluation_id: JsonInt | None = Field(None, ge=0, le=ROW_ID_MAX)
    force: JsonBool = False
    actor: str | None = None


class RestoreIn(_Body):
    loop: str | None = None
    serve: JsonBool = False
    force: JsonBool = False
    reason: str | None = None
    actor: str | None = None


class EvaluateIn(_Body):
    candidate: str
    baseline: str = Field("serving", description="serving, base, a version id, or teacher.")
    scenario: str | None = None
    limit: JsonInt | None = Field(None, ge=1, le=ROW_ID_MAX)
    judge: JsonBool | None = None


class ExportIn(_Body):
    format: Literal["merged", "gguf", "ollama"] = "merged"
    quant: Literal["f32", "f16", "q8_0"] = "q8_0"
    out: str | None = Field(
        None,
        pattern=EXPORT_NAME,
        description="Name of the folder under the data dir's exports/ to write (default <id>-<format>): "
        "a name, not a path; `learnloop versions export --out` writes anywhere.",
    )
    ollama_name: str | None = Field(None, pattern=OLLAMA_NAME)


def _body(model: type[BaseModel]) -> tuple[TypeAdapter[Any], dict[str, Any]]:
    adapter = TypeAdapter(model)
    return adapter, request_body(model.__name__, adapter)


_REGISTER, _REGISTER_DOC = _body(RegisterIn)
_MOVE, _MOVE_DOC = _body(MoveIn)
_RESTORE, _RESTORE_DOC = _body(RestoreIn)
_EVALUATE, _EVALUATE_DOC = _body(EvaluateIn)
_EXPORT, _EXPORT_DOC = _body(ExportIn)

_NO_VERSION = "No model version by that id."
_READ = {"dependencies": [ReadAuth]}
_WRITE = {"dependencies": [WriteAuth]}


async def _read(request: Request, adapter: TypeAdapter[Any]) -> Any:
    """The JSON body validated by ``adapter``: 400 when it is not JSON, 422 naming each bad field."""
    return parse_json_body(adapter, await request.body())


@router.get("/versions", **_READ)
def list_versions_route(
    db: DbDep,
    loop: str | None = None,
    state: Literal["candidate", "serving", "archived", "rejected"] | None = None,
) -> list[dict[str, Any]]:
    """Every version, newest first."""
    from learnloop.registry import list_versions

    return [v.as_dict() for v in list_versions(db, loop=loop, state=state)]


@router.get("/versions/diff", **_READ, responses=error_responses(404, _404=_NO_VERSION))
def diff_route(db: DbDep, a: str = Query(...), b: str = Query(...)) -> dict[str, Any]:
    from learnloop.registry import diff_versions

    return diff_versions(db, a, b)


@router.get("/versions/{version_id}", **_READ, responses=error_responses(404, _404=_NO_VERSION))
def get_version_route(version_id: str, db: DbDep) -> dict[str, Any]:
    from learnloop.registry import get_version

    return get_version(db, version_id).as_dict()


@router.get("/versions/{version_id}/lineage", **_READ, responses=error_responses(404, _404=_NO_VERSION))
def lineage_route(version_id: str, db: DbDep) -> dict[str, Any]:
    from learnloop.registry import lineage

    return lineage(db, version_id)


@router.get(
    "/trajectories/{trajectory_id}/lineage",
    **_READ,
    responses=error_responses(404, _404="No trajectory by that id."),
)
def trajectory_lineage_route(trajectory_id: str, db: DbDep) -> dict[str, Any]:
    """From a served answer back to the data that trained its model."""
    from learnloop.registry import trace_trajectory

    return trace_trajectory(db, trajectory_id)


@router.post(
    "/versions",
    status_code=201,
    **_WRITE,
    openapi_extra=_REGISTER_DOC,
    responses=error_responses(
        404,
        409,
        _404="No adapter at adapter_dir, or the parent version or the dataset does not exist.",
        _409="The adapter folder cannot be placed in the registry.",
    ),
)
async def register_route(db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Register an adapter folder on the server's disk as a new version (422 when its base does not match)."""
    from learnloop.registry import get_version, register_version

    body: RegisterIn = await _read(request, _REGISTER)

    def run() -> dict[str, Any]:
        _adapter_exists(body.adapter_dir)
        vid = register_version(
            db,
            settings,
            adapter_dir=body.adapter_dir,
            base_model=body.base_model,
            parent_id=body.parent_id,
            dataset_id=body.dataset_id,
            job_id=body.job_id,
            loop=body.loop,
            name=body.name,
            note=body.note,
            actor=request_actor(request, body.actor),
        )
        return get_version(db, vid).as_dict()

    return await run_in_threadpool(run)


def _adapter_exists(adapter_dir: str) -> None:
    """404 when the request names a folder holding no adapter (a path is a resource the request names)."""
    from learnloop.errors import NotFound, ValidationFailed
    from learnloop.registry import find_adapter

    try:
        find_adapter(Path(adapter_dir))
    except ValidationFailed as exc:
        raise NotFound(str(exc)) from None
    except OSError as exc:  # a name too long for the file system, a folder it may not read
        raise NotFound(f"No adapter can be read at {adapter_dir[:200]!r}: {exc.strerror or exc}.") from None


@router.post(
    "/versions/{version_id}/promote",
    **_WRITE,
    openapi_extra=_MOVE_DOC,
    responses=error_responses(
        404,
        409,
        _404="No such version or evaluation.",
        _409="Refused: no passing gate verdict (send force to override), or the version's files are gone.",
    ),
)
async def promote_route(
    version_id: str, db: DbDep, settings: SettingsDep, request: Request
) -> dict[str, Any]:
    """Serve the version under the alias (409 without a passing gate verdict unless force)."""
    from learnloop.registry import promote

    body: MoveIn = await _read(request, _MOVE)
    return await run_in_threadpool(
        promote,
        db,
        settings,
        version_id,
        alias=body.alias,
        actor=request_actor(request, body.actor),
        reason=body.reason,
        evaluation_id=body.evaluation_id,
        force=body.force,
    )


@router.post(
    "/versions/{version_id}/restore",
    **_WRITE,
    openapi_extra=_RESTORE_DOC,
    responses=error_responses(
        404,
        409,
        _404=_NO_VERSION,
        _409="Refused: the version's files are gone, or serving it lacks a passing gate verdict.",
    ),
)
async def restore_route(
    version_id: str, db: DbDep, settings: SettingsDep, request: Request
) -> dict[str, Any]:
    from learnloop.registry import restore

    body: RestoreIn = await _read(request, _RESTORE)
    restored = await run_in_threadpool(
        restore,
        db,
        settings,
        version_id,
        loop=body.loop,
        serve=body.serve,
        force=body.force,
        reason=body.reason,
        actor=request_actor(request, body.actor),
    )
    return restored.as_dict()


@router.delete(
    "/versions/{version_id}",
    **_WRITE,
    responses=error_responses(
        404,
        409,
        _404=_NO_VERSION,
        _409="Refused: the version serves, another one's lineage needs it, or its files changed.",
    ),
)
def delete_route(
    version_id: str, db: DbDep, settings: SettingsDep, request: Request, force: bool = False
) -> dict[str, Any]:
    from learnloop.registry import delete_version

    delete_version(db, settings, version_id, force=force, actor=request_actor(request, None))
    return {"deleted": version_id}


@router.post(
    "/versions/{version_id}/export",
    **_WRITE,
    openapi_extra=_EXPORT_DOC,
    responses=error_responses(
        404, 409, _404=_NO_VERSION, _409="The version's files are gone or do not match their hashes."
    ),
)
async def export_route(version_id: str, db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Write merged weights, a GGUF file or an Ollama Modelfile under the data dir's exports/ folder
    (blocks until done); ``out`` names the folder there.

    400 names what cannot be exported (an unsupported architecture, an unknown chat format)."""
    from learnloop.registry import export_version, named_export_dir

    body: ExportIn = await _read(request, _EXPORT)
    result = await run_in_threadpool(
        export_version,
        db,
        settings,
        version_id,
        fmt=body.format,
        quant=body.quant,
        out=named_export_dir(settings, body.out) if body.out else None,
        ollama_name=body.ollama_name,
    )
    return result.as_dict()


@router.get("/evaluations", **_READ)
def list_evaluations_route(
    db: DbDep, candidate: str | None = None, limit: int = Query(50, ge=1, le=1000)
) -> list[dict[str, Any]]:
    from learnloop.evaluation import list_evaluations

    return list_evaluations(db, candidate=candidate, limit=limit)


@router.get(
    "/evaluations/compare",
    **_READ,
    responses=error_responses(404, _404="Neither an evaluation id nor a version id with an evaluation."),
)
def compare_route(
    db: DbDep,
    settings: SettingsDep,
    a: str = Query(...),
    b: str = Query(...),
    top: int = Query(5, ge=1, le=100),
) -> dict[str, Any]:
    from learnloop.evaluation import compare_evaluations

    return compare_evaluations(db, a, b, top=top, settings=settings)


@router.get(
    "/evaluations/{evaluation_id}", **_READ, responses=error_responses(404, _404="No evaluation by that id.")
)
def get_evaluation_route(evaluation_id: RowIdPath, db: DbDep, examples: bool = True) -> dict[str, Any]:
    from learnloop.evaluation import get_evaluation

    return get_evaluation(db, evaluation_id, examples=examples)


@router.post(
    "/evaluations",
    status_code=201,
    **_WRITE,
    openapi_extra=_EVALUATE_DOC,
    responses=error_responses(
        404, 409, _404="The candidate or baseline version does not exist.", _409="A version's files are gone."
    ),
)
async def evaluate_route(db: DbDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Run an evaluation now (blocks while the answers are generated) and return it with its gate verdict.

    Uses the server's serving backend when it has one, so no second copy of the model is loaded.
    """
    from learnloop.evaluation import evaluate, get_evaluation

    body: EvaluateIn = await _read(request, _EVALUATE)
    serving = getattr(request.app.state, "serving", None)
    backend = serving.backend if serving is not None else None

    def run() -> dict[str, Any]:
        ev_id = evaluate(
            db,
            settings,
            candidate=body.candidate,
            baseline=body.baseline,
            scenario=body.scenario,
            limit=body.limit,
            judge=body.judge,
            backend=backend,
        )
        return get_evaluation(db, ev_id, examples=False)

    return await run_in_threadpool(run)
