"""The dashboard: server-rendered pages (Jinja2), live fragments, SSE streams and the steering buttons.

Every page is ``<name>.html`` (layout) around ``_<name>.html`` (its body); ``/ui/live/<name>``
renders the body alone, which the page's script swaps in every few seconds, so a page refreshes
without reloading and the live view is exactly the server's rendering. The running job's curve
streams over SSE (``id`` = training step, so a reconnect resumes with ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from learnloop.api.deps import (
    ROW_ID_MAX,
    DbDep,
    RowIdPath,
    RowIdQuery,
    SettingsDep,
    bearer_matches,
    token_matches,
)
from learnloop.config import Settings
from learnloop.store.db import Database
from learnloop.store.models import utcnow
from learnloop.watch import actions, pages, queries
from learnloop.watch.status import build_status

router = APIRouter(include_in_schema=False)
HERE = Path(__file__).resolve().parents[2] / "watch"
templates = Jinja2Templates(directory=str(HERE / "templates"))
TOKEN_COOKIE = "learnloop_token"
# A custom header a cross-site form cannot send: cookie-authenticated writes need it (CSRF guard).
ACTION_HEADER = "x-learnloop-action"
STREAM_SECONDS = 300.0


# -- formatting helpers for the templates ----------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _fmt_secs(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _fmt_time(iso: str | None) -> str:
    if not iso:
        return "–"
    t = dt.datetime.fromisoformat(iso)
    delta = (utcnow() - t).total_seconds()
    when = t.strftime("%Y-%m-%d %H:%M")
    if 0 <= delta < 86400 * 2:
        return f"{when} ({_fmt_secs(delta)} ago)"
    return when


templates.env.filters.update(
    bytes=_fmt_bytes,
    num=_fmt_num,
    secs=_fmt_secs,
    when=_fmt_time,
    tojson_attr=lambda v: json.dumps(v, default=str),
)


# -- auth --------------------------------------------------------------------------------------


def _token_ok(request: Request, settings: Settings) -> bool:
    if settings.api_token is None:
        return True
    if bearer_matches(
        request, settings.api_token
    ):  # compared as bytes: a non-ASCII token is a 401, not a crash
        return True
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    return (
        bool(cookie)
        and token_matches(cookie, settings.api_token)
        and request.headers.get(ACTION_HEADER) == "1"
    )


def require_dashboard_write(request: Request, settings: Settings) -> None:
    if not _token_ok(request, settings):
        raise HTTPException(
            401, "This action needs the API token: log in at /login (or send Authorization: Bearer <token>)."
        )


def _ctx(request: Request, settings: Settings, page: str, **extra: Any) -> dict[str, Any]:
    logged_in = settings.api_token is None or bool(request.cookies.get(TOKEN_COOKIE))
    return {
        "request": request,
        "page": page,
        "auth_required": settings.api_token is not None,
        "logged_in": logged_in,
        **extra,
    }


# -- context builders: one per page, shared by the page and its live fragment ------------------

STAGES = ("capture", "score", "datasets", "train", "registry", "evaluate", "serve")


def _stage_states(status: dict[str, Any], extra: dict[str, Any]) -> list[dict[str, Any]]:
    t = status.get("trajectories") or {}
    running = status.get("running_job")
    queue = (status.get("queue") or {}).get("by_state", {})
    ev = status.get("last_evaluation")
    serving = status.get("serving") or []
    latest = extra.get("latest_version")
    dataset = extra.get("latest_dataset")
    out = []

    def add(name: str, state: str, detail: str, href: str) -> None:
        out.append({"name": name, "state": state, "detail": detail, "href": href})

    add(
        "capture",
        "ok" if t.get("today") else "idle",
        f"{t.get('today', 0):,} today · {t.get('total', 0):,} total",
        "/trajectories",
    )
    add(
        "score",
        "ok" if extra.get("scored_share") else "idle",
        f"{(extra.get('scored_share') or 0) * 100:.0f}% of recent scored",
        "/rewards",
    )
    add(
        "datasets",
        "ok" if dataset else "idle",
        f"#{dataset['id']} {dataset['kind']} · {dataset['count']:,} rows" if dataset else "none yet",
        "/datasets",
    )
    if running:
        step = f"step {running['step'] or 0}/{running['total_steps'] or '?'}"
        add(
            "train",
            "busy" if running["state"] == "running" else "warn",
            f"job {running['id']} {running['state']} · {step}",
            f"/jobs/{running['id']}",
        )
    else:
        add(
            "train",
            "error" if queue.get("failed") and not queue.get("succeeded") else "idle",
            f"{queue.get('queued', 0)} queued · {queue.get('failed', 0)} failed",
            "/jobs",
        )
    add(
        "registry",
        "ok" if latest else "idle",
        f"{latest['id']} {latest['state']}" if latest else "no versions",
        "/versions",
    )
    if ev:
        add(
            "evaluate",
            "ok" if ev["verdict"] == "promote" else ("error" if ev["verdict"] == "reject" else "warn"),
            f"{ev['candidate_id']}: {ev['verdict']}",
            "/versions",
        )
    else:
        add("evaluate", "idle", "no evaluations", "/versions")
    main = next((a for a in serving if a["alias"] == "learnloop"), serving[0] if serving else None)
    if main:
        split = (
            f" · {main['split'] * 100:.0f}% → {main['candidate']}"
            if main["candidate"] and main["split"]
            else ""
        )
        add("serve", "ok", f"{main['alias']} → {main['version']}{split}", "/serving")
    else:
        add("serve", "idle", "base model", "/serving")
    return out


def overview_ctx(db: Database, settings: Settings) -> dict[str, Any]:
    status = build_status(db, settings, self_role="server")
    extra: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    if status["host"]["database"]["reachable"]:
        from learnloop.datasets.catalog import list_datasets

        with db.read_session() as s:
            versions = queries.list_versions(s, limit=1)
            extra["latest_version"] = versions[0] if versions else None
            ds = list_datasets(s, limit=1)
            extra["latest_dataset"] = (
                {"id": ds[0].id, "kind": ds[0].kind, "count": ds[0].count} if ds else None
            )
            extra["scored_share"] = pages.scored_share(s, utcnow() - dt.timedelta(days=7))
            events = queries.events_after(s, None, limit=12)
            events.reverse()
    loops = status.get("loops") or []
    countdowns = [lp["next_check_in_s"] for lp in loops if lp.get("next_check_in_s") is not None]
    return {
        "status": status,
        "stages": _stage_states(status, extra),
        "events": events,
        "next_check_in_s": min(countdowns) if countdowns else None,
    }


def jobs_ctx(db: Database, settings: Settings, offset: int = 0) -> dict[str, Any]:
    with db.read_session() as s:
        return {
            "queue": queries.queue_summary(s),
            "active": queries.active_jobs(s),
            "queued": queries.queued_jobs(s, 50),
            "recent": queries.list_jobs(s, limit=50, offset=offset),
            "offset": offset,
        }


def job_ctx(db: Database, settings: Settings, job_id: int) -> dict[str, Any]:
    with db.read_session() as s:
        job = queries.get_job(s, job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id}.")
        series = queries.metric_series(s, job_id)
        from sqlalchemy import select

        from learnloop.store.models import Event

        evs = [
            queries.event_view(e)
            for e in s.scalars(
                select(Event).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(20)
            )
        ]
    pts = series["points"]
    return {
        "job": job,
        "series": series,
        "job_events": evs,
        "loss_chart": {
            "type": "line",
            "empty": "No steps recorded yet.",
            "series": [{"name": "loss", "points": [[p["step"], p["loss"]] for p in pts]}],
        },
        "lr_chart": {
            "type": "line",
            "empty": "No steps recorded yet.",
            "series": [
                {"name": "learning rate", "color": "#d97706", "points": [[p["step"], p["lr"]] for p in pts]}
            ],
        },
    }


def versions_ctx(db: Database, settings: Settings) -> dict[str, Any]:
    with db.read_session() as s:
        versions = queries.list_versions(s, limit=200)
        evaluations = queries.list_evaluations(s, limit=200)
        serving = queries.serving(s)
        history = queries.alias_events(s, limit=30)
    by_id = {v["id"]: v for v in versions}
    # Lineage: each version under its parent, depth-first, newest branches first.
    children: dict[str | None, list[dict[str, Any]]] = {}
    for v in versions:
        parent = v["parent_id"] if v["parent_id"] in by_id else None
        children.setdefault(parent, []).append(v)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        # A straight chain (one child each) stays at one indent: only branches indent further.
        kids = children.get(parent, [])
        for v in kids:
            ordered.append({**v, "depth": min(depth, 6)})
            walk(v["id"], depth + 1 if len(kids) > 1 or depth == 0 else depth)

    walk(None, 0)
    metric_keys = sorted(
        {k for e in evaluations for k, val in e["metrics"].items() if isinstance(val, (int, float))}
    )[:8]
    serving_ids = {a["version_id"] for a in serving}
    return {
        "versions": ordered,
        "evaluations": evaluations[:50],
        "metric_keys": metric_keys,
        "serving": serving,
        "serving_ids": serving_ids,
        "history": history,
    }


def serving_ctx(db: Database, settings: Settings) -> dict[str, Any]:
    from learnloop.watch.metrics import serving_snapshot

    since = utcnow() - dt.timedelta(days=14)
    with db.read_session() as s:
        traffic = queries.served_traffic(s, since)
        aliases = queries.serving(s)
    days = sorted({r["day"] for r in traffic["per_day"]})
    versions = sorted({r["version"] for r in traffic["per_day"]})
    series = [
        {
            "name": v,
            "points": [
                [
                    d,
                    next(
                        (r["requests"] for r in traffic["per_day"] if r["day"] == d and r["version"] == v), 0
                    ),
                ]
                for d in days
            ],
        }
        for v in versions
    ]
    return {
        "aliases": aliases,
        "traffic": traffic,
        "chart": {"type": "bars", "x": days, "series": series},
        "process": serving_snapshot(),
    }


def quality_ctx(db: Database, settings: Settings) -> dict[str, Any]:
    since = utcnow() - dt.timedelta(days=60)
    with db.read_session() as s:
        live = queries.live_reward_by_day(s, since)
        evaluations = queries.list_evaluations(s, limit=200)
        moves = queries.alias_events(s, limit=200, since=since)
    versions = sorted({r["version"] for r in live})
    series = [
        {
            "name": f"live reward · {v}",
            "points": [[r["day"], r["reward_mean"]] for r in live if r["version"] == v],
        }
        for v in versions
    ]
    metric_keys = sorted(
        {k for e in evaluations for k, val in e["metrics"].items() if isinstance(val, (int, float))}
    )
    eval_series = [
        {
            "name": f"eval {k}",
            "dashed": True,
            "points": [
                [e["created_at"][:10], e["metrics"][k]]
                for e in reversed(evaluations)
                if isinstance(e["metrics"].get(k), (int, float))
            ],
        }
        for k in metric_keys[:3]
    ]
    markers = [
        {"x": m["created_at"][:10], "label": f"{m['action']} {m['to'] or 'base'}", "kind": m["action"]}
        for m in moves
        if m["action"] != "split"
    ]
    return {
        "chart": {"type": "line", "x_is_date": True, "series": series + eval_series, "markers": markers},
        "live": live,
        "moves": [m for m in moves if m["action"] != "split"],
        "evaluations": evaluations[:20],
    }


def rewards_ctx(db: Database, settings: Settings, days: int = 30) -> dict[str, Any]:
    with db.read_session() as s:
        data = pages.reward_overview(s, utcnow() - dt.timedelta(days=days))
    edges = data["edges"]
    labels = [f"{(edges[i] + edges[i + 1]) / 2:.2g}" for i in range(len(edges) - 1)] if edges else []
    hist = {
        "type": "bars",
        "x": labels,
        "stacked": True,
        "series": [
            {"name": sc, "points": list(zip(labels, counts))}
            for sc, counts in sorted(data["histograms"].items())
        ],
    }
    by_day = {
        "type": "line",
        "x_is_date": True,
        "series": [{"name": "mean score", "points": [[r["key"], r["mean"]] for r in data["by_day"]]}],
    }
    n = sum(r["count"] for r in data["by_scenario"])
    share = sum(r["count"] * (r["share_negative"] or 0) for r in data["by_scenario"]) / n if n else None
    return {"data": data, "hist": hist, "by_day_chart": by_day, "days": days, "share_negative": share}


def datasets_ctx(db: Database, settings: Settings) -> dict[str, Any]:
    from learnloop.datasets.catalog import list_datasets

    with db.read_session() as s:
        return {"datasets": [d.as_dict() for d in list_datasets(s, limit=100)]}


LIVE = {
    "overview": overview_ctx,
    "jobs": jobs_ctx,
    "versions": versions_ctx,
    "serving": serving_ctx,
    "quality": quality_ctx,
    "rewards": rewards_ctx,
    "datasets": datasets_ctx,
}


def _render(
    request: Request, settings: Settings, template: str, page: str, ctx: dict[str, Any]
) -> HTMLResponse:
    return templates.TemplateResponse(request, template, _ctx(request, settings, page, **ctx))


# -- pages -------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render(
        request, settings, "overview.html", "overview", await run_in_threadpool(overview_ctx, db, settings)
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request, db: DbDep, settings: SettingsDep, offset: Annotated[int, Query(ge=0, le=ROW_ID_MAX)] = 0
) -> HTMLResponse:
    return _render(
        request,
        settings,
        "jobs.html",
        "jobs",
        await run_in_threadpool(jobs_ctx, db, settings, max(0, offset)),
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: RowIdPath, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render(
        request, settings, "job.html", "jobs", await run_in_threadpool(job_ctx, db, settings, job_id)
    )


@router.get("/versions", response_class=HTMLResponse)
async def versions_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render(
        request, settings, "versions.html", "versions", await run_in_threadpool(versions_ctx, db, settings)
    )


@router.get("/serving", response_class=HTMLResponse)
async def serving_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render(
        request, settings, "serving.html", "serving", await run_in_threadpool(serving_ctx, db, settings)
    )


@router.get("/quality", response_class=HTMLResponse)
async def quality_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render(
        request, settings, "quality.html", "quality", await run_in_threadpool(quality_ctx, db, settings)
    )


@router.get("/rewards", response_class=HTMLResponse)
async def rewards_page(
    request: Request, db: DbDep, settings: SettingsDep, days: Annotated[int, Query(ge=1, le=36500)] = 30
) -> HTMLResponse:
    return _render(
        request,
        settings,
        "rewards.html",
        "rewards",
        await run_in_threadpool(rewards_ctx, db, settings, max(1, days)),
    )


@router.get("/datasets", response_class=HTMLResponse)
async def datasets_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render(
        request, settings, "datasets.html", "datasets", await run_in_threadpool(datasets_ctx, db, settings)
    )


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
async def dataset_page(
    request: Request, dataset_id: RowIdPath, db: DbDep, settings: SettingsDep
) -> HTMLResponse:
    from learnloop.datasets.catalog import get_dataset

    def load() -> dict[str, Any]:
        with db.read_session() as s:
            return get_dataset(s, dataset_id).as_dict()

    return _render(request, settings, "dataset.html", "datasets", {"ds": await run_in_threadpool(load)})


@router.get("/trajectories", response_class=HTMLResponse)
async def trajectories_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    f = pages.TrajectoryFilter.parse(dict(request.query_params))

    def load() -> dict[str, Any]:
        with db.read_session() as s:
            return {"result": pages.search_trajectories(s, f), "options": pages.filter_options(s)}

    return _render(
        request, settings, "trajectories.html", "trajectories", {"f": f, **await run_in_threadpool(load)}
    )


@router.get("/trajectories/{trajectory_id}", response_class=HTMLResponse)
async def trajectory_page(
    request: Request, trajectory_id: str, db: DbDep, settings: SettingsDep
) -> HTMLResponse:
    def load() -> dict[str, Any] | None:
        with db.read_session() as s:
            return pages.trajectory_detail(s, trajectory_id)

    t = await run_in_threadpool(load)
    if t is None:
        raise HTTPException(404, f"No trajectory {trajectory_id!r}.")
    return _render(request, settings, "trajectory.html", "trajectories", {"t": t})


@router.get("/ui/live/{name}", response_class=HTMLResponse)
async def live_fragment(request: Request, name: str, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    """The body of page ``name`` alone, for the page's periodic refresh."""
    if name.startswith("job-"):
        ctx = await run_in_threadpool(job_ctx, db, settings, int(name[4:]) if name[4:].isdigit() else -1)
        return _render(request, settings, "_job.html", "jobs", ctx)
    builder = LIVE.get(name)
    if builder is None:
        raise HTTPException(404, f"No live view {name!r}.")
    return _render(request, settings, f"_{name}.html", name, await run_in_threadpool(builder, db, settings))


# -- login ---------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, settings: SettingsDep, error: str | None = None) -> HTMLResponse:
    return _render(request, settings, "login.html", "login", {"error": error})


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    # A plain urlencoded form: parsed here rather than pulling in python-multipart for one field.
    token = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0]
    if settings.api_token is None:
        return RedirectResponse("/", status_code=303)
    if not token_matches(token.strip(), settings.api_token):
        return RedirectResponse("/login?error=wrong+token", status_code=303)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(TOKEN_COOKIE, token.strip(), httponly=True, samesite="strict", max_age=30 * 86400)
    return resp


@router.post("/logout")
async def logout() -> Response:
    resp = RedirectResponse("/", status_code=303)
    resp.delete_cookie(TOKEN_COOKIE)
    return resp


# -- actions -----------------------------------------------------------------------------------


@router.post("/ui/jobs/{job_id}/{action}")
async def job_action(
    request: Request, job_id: RowIdPath, action: str, db: DbDep, settings: SettingsDep
) -> JSONResponse:
    require_dashboard_write(request, settings)
    return JSONResponse(await run_in_threadpool(actions.control_job, db, job_id, action))


@router.post("/ui/versions/{version_id}/promote")
async def promote(
    request: Request,
    version_id: str,
    db: DbDep,
    settings: SettingsDep,
    alias: str = "learnloop",
    force: bool = False,
) -> JSONResponse:
    """Through the registry: 409 naming the gate's reason for a rejected or unevaluated
    version unless force."""
    require_dashboard_write(request, settings)
    return JSONResponse(
        await run_in_threadpool(
            lambda: actions.promote_version(db, settings, version_id, alias=alias, force=force)
        )
    )


@router.post("/ui/aliases/{alias}/rollback")
async def rollback(request: Request, alias: str, db: DbDep, settings: SettingsDep) -> JSONResponse:
    require_dashboard_write(request, settings)
    return JSONResponse(await run_in_threadpool(lambda: actions.rollback_alias(db, settings, alias=alias)))


@router.post("/ui/trajectories/{trajectory_id}/feedback")
async def add_feedback(
    request: Request, trajectory_id: str, db: DbDep, settings: SettingsDep
) -> JSONResponse:
    require_dashboard_write(request, settings)
    form = await request.json()
    fb: dict[str, Any] = {"trajectory_id": trajectory_id, "author": "dashboard"}
    if form.get("thumbs") in ("up", "down"):
        fb["thumbs"] = form["thumbs"]
    if str(form.get("rating") or "").strip():
        try:
            fb["rating"] = float(form["rating"])
        except ValueError:
            raise HTTPException(422, "rating: not a number") from None
    for key in ("comment", "correction"):
        if str(form.get(key) or "").strip():
            fb[key] = str(form[key]).strip()

    def store() -> dict[str, Any]:
        from learnloop.store.records import parse_batch
        from learnloop.store.trajectories import ingest

        batch = parse_batch(
            {"feedback": [fb]}
        )  # the same validation as POST /v1/ingest (422 names the field)
        with db.session() as s:
            return ingest(s, batch, project=settings.project).as_dict()

    return JSONResponse(await run_in_threadpool(store))


# -- live data -----------------------------------------------------------------------------------


@router.get("/ui/api/jobs/{job_id}/metrics")
async def job_metrics(
    job_id: RowIdPath,
    db: DbDep,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 400,
    after_step: RowIdQuery = None,
) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        with db.read_session() as s:
            return queries.metric_series(
                s, job_id, max_points=min(max(10, max_points), 5000), after_step=after_step
            )

    return await run_in_threadpool(load)


def _sse(event: str, data: Any, event_id: Any = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _resume_point(request: Request, after: int | None) -> int | None:
    last = request.headers.get("last-event-id")
    if (
        last and last.strip().lstrip("-").isdigit() and abs(int(last)) <= ROW_ID_MAX
    ):  # a bigger one is no id we sent
        return int(last)
    return after


@router.get("/ui/stream/jobs/{job_id}")
async def job_stream(
    request: Request,
    job_id: RowIdPath,
    db: DbDep,
    after: RowIdQuery = None,
    poll_s: float = 1.0,
    max_s: float = STREAM_SECONDS,
) -> StreamingResponse:
    """New training metric points of a job (``id`` = last step sent) and its state, as SSE.

    Resumes after ``Last-Event-ID`` (what EventSource sends on reconnect) or ``after``; the
    stream ends after ``max_s`` and the browser reconnects on its own, resuming where it was.
    """
    start = _resume_point(request, after)

    async def gen() -> Any:
        last = start
        deadline = asyncio.get_running_loop().time() + max(1.0, max_s)
        yield "retry: 1000\n\n"
        while asyncio.get_running_loop().time() < deadline:

            def load(last: int | None = last) -> tuple[dict[str, Any] | None, dict[str, Any]]:
                with db.read_session() as s:
                    job = queries.get_job(s, job_id)
                    # Raw points after the last one sent (the page drew the downsampled history).
                    new = queries.metric_series(
                        s, job_id, max_points=1000, after_step=last if last is not None else -1
                    )
                    return job, new

            job, new = await run_in_threadpool(load)
            if job is None:
                yield _sse("gone", {"job_id": job_id})
                return
            if new["points"]:
                last = new["points"][-1]["step"]
                yield _sse("metrics", {"points": new["points"], "bucket": new["bucket"]}, last)
            yield _sse(
                "job",
                {
                    k: job[k]
                    for k in (
                        "id",
                        "state",
                        "desired_state",
                        "step",
                        "total_steps",
                        "loss",
                        "tokens_per_s",
                        "eta_s",
                        "error",
                    )
                },
            )
            if await request.is_disconnected():
                return
            await asyncio.sleep(max(0.1, poll_s))

    return StreamingResponse(
        gen(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/ui/stream/events")
async def event_stream(
    request: Request, db: DbDep, after: RowIdQuery = None, poll_s: float = 1.0, max_s: float = STREAM_SECONDS
) -> StreamingResponse:
    """The event log as SSE (``id`` = event id; resumes after ``Last-Event-ID``)."""
    start = _resume_point(request, after)

    async def gen() -> Any:
        last = start
        deadline = asyncio.get_running_loop().time() + max(1.0, max_s)
        yield "retry: 2000\n\n"
        while asyncio.get_running_loop().time() < deadline:

            def load(last: int = last) -> list[dict[str, Any]]:
                with db.read_session() as s:
                    return queries.events_after(s, last, limit=100)

            for e in await run_in_threadpool(load):
                last = e["id"]
                yield _sse("event", e, e["id"])
            if last is None:
                last = 0
            if await request.is_disconnected():
                return
            await asyncio.sleep(max(0.1, poll_s))

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
