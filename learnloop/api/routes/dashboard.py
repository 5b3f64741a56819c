"""The dashboard over HTTP: every page ``learnloop.watch`` registers, their live fragments, the SSE
streams, the login and the buttons. Each route checks who is asking, calls one watch function and
renders; what a page shows and what a button does live in ``learnloop.watch``.

Every page is ``<name>.html`` (layout) around ``_<name>.html`` (its body); ``/ui/live/<name>``
renders the body alone, which the page's script swaps in every few seconds, so a page refreshes
without reloading and the live view is exactly the server's rendering. The running job's curve
streams over SSE (``id`` = training step, so a reconnect resumes with ``Last-Event-ID``).

With ``server.read_token`` set, every page, fragment and stream needs a login (pages send a
browser to ``/login``; fragments and streams answer 401). Open: ``/login``, ``/logout`` and the
static assets under ``/static`` (styles, scripts, the icon: no data).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from learnloop import watch
from learnloop.api.deps import (
    LEGACY_COOKIE,
    SESSION_COOKIE,
    DashboardPage,
    DashboardRead,
    DashboardWrite,
    DbDep,
    RowIdPath,
    RowIdQuery,
    SettingsDep,
    dashboard_role,
    login_role,
    session_value,
)
from learnloop.config import Settings

router = APIRouter(include_in_schema=False)
# A name a template uses that its context lacks renders as nothing, and is logged: a page that lost a
# value says so in the server's log (the dashboard's tests fail on it).
TEMPLATE_LOG = logging.getLogger("learnloop.dashboard")
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(watch.TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.make_logging_undefined(TEMPLATE_LOG),
    )
)
templates.env.filters.update(watch.FILTERS)
STREAM_SECONDS = 300.0
SESSION_DAYS = 30


def _render(
    request: Request, settings: Settings, template: str, section: str, ctx: dict[str, Any]
) -> Response:
    auth_required = settings.api_token is not None or settings.server.read_token is not None
    role = dashboard_role(request, settings)
    logged_in = not auth_required or role is not None
    return templates.TemplateResponse(
        request,
        template,
        {
            "request": request,
            "page": section,
            "nav": watch.navigation(),
            "auth_required": auth_required,
            "logged_in": logged_in,
            "can_steer": role == "write" or (settings.api_token is None and logged_in),
            **ctx,
        },
    )


# -- pages: one route per registered page --------------------------------------------------------


def _server(request: Request) -> dict[str, Any]:
    """What this server runs, for the views (the database cannot say): whether its OpenAI routes answer."""
    runtime = getattr(request.app.state, "serving", None)
    backend = getattr(runtime, "backend", None)
    return {
        "serving": runtime is not None,
        "serving_model": str(getattr(backend, "base_model", "") or "") or None,
        "serving_off": getattr(request.app.state, "serving_off_reason", None),
    }


def _page_route(p: watch.Page) -> Callable[..., Any]:
    async def show(request: Request, db: DbDep, settings: SettingsDep) -> Response:
        params = watch.Params(dict(request.query_params), request.path_params.get("key"), _server(request))
        ctx = await run_in_threadpool(p.view, db, settings, params)
        return _render(request, settings, f"{p.name}.html", p.section, ctx)

    show.__name__ = f"page_{p.name}"
    return show


def page_routes() -> APIRouter:
    """One GET route per page registered in ``learnloop.watch``, built with each app, so every page
    registered by then is mounted."""
    pages = APIRouter(include_in_schema=False)
    for p in watch.PAGES.values():
        pages.add_api_route(
            p.path, _page_route(p), methods=["GET"], response_class=HTMLResponse, dependencies=[DashboardPage]
        )
    return pages


@router.get("/ui/live/{name}", response_class=HTMLResponse, dependencies=[DashboardRead])
async def live_fragment(request: Request, name: str, db: DbDep, settings: SettingsDep) -> Response:
    """The body of page ``name`` alone (``job-12``: job 12's), for the page's periodic refresh."""
    p, key = watch.live_page(name)
    params = watch.Params(dict(request.query_params), key, _server(request))
    ctx = await run_in_threadpool(p.view, db, settings, params)
    return _render(request, settings, f"_{p.name}.html", p.section, ctx)


# -- login -----------------------------------------------------------------------------------------


def _back(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never another site)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, settings: SettingsDep, error: str | None = None, next: str | None = None
) -> Response:
    return _render(request, settings, "login.html", "login", {"error": error, "next": _back(next)})


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    # A plain urlencoded form: parsed here rather than pulling in python-multipart for two fields.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token, back = (form.get("token") or [""])[0].strip(), _back((form.get("next") or [None])[0])
    if settings.api_token is None and settings.server.read_token is None:
        return RedirectResponse(back, status_code=303)
    role = login_role(token, settings)
    if role is None:
        return RedirectResponse(
            "/login?" + urlencode({"error": "wrong token", "next": back}), status_code=303
        )
    secret = settings.api_token if role == "write" else settings.server.read_token
    assert secret is not None
    resp = RedirectResponse(back, status_code=303)
    resp.delete_cookie(LEGACY_COOKIE)
    resp.set_cookie(
        SESSION_COOKIE,
        session_value(secret),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_DAYS * 86400,
    )
    return resp


@router.post("/logout")
async def logout() -> Response:
    resp = RedirectResponse("/", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    resp.delete_cookie(LEGACY_COOKIE)
    return resp


# -- actions: the buttons ----------------------------------------------------------------------------


@router.post("/ui/jobs/{job_id}/{action}", dependencies=[DashboardWrite])
async def job_action(job_id: RowIdPath, action: str, db: DbDep) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(watch.control_job, db, job_id, action))


@router.post("/ui/versions/{version_id}/promote", dependencies=[DashboardWrite])
async def promote(
    version_id: str, db: DbDep, settings: SettingsDep, alias: str = "learnloop", force: bool = False
) -> JSONResponse:
    """Through the registry: 409 naming the gate's reason for a rejected or unevaluated
    version unless force."""
    return JSONResponse(
        await run_in_threadpool(
            lambda: watch.promote_version(db, settings, version_id, alias=alias, force=force)
        )
    )


@router.post("/ui/aliases/{alias}/rollback", dependencies=[DashboardWrite])
async def rollback(alias: str, db: DbDep, settings: SettingsDep) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(lambda: watch.rollback_alias(db, settings, alias=alias)))


@router.post("/ui/aliases/{alias}/target", dependencies=[DashboardWrite])
async def set_target(alias: str, target: str, db: DbDep, settings: SettingsDep) -> JSONResponse:
    """Serve ``alias`` from ``target`` (e.g. ``upstream:teacher``) through the registry."""
    return JSONResponse(await run_in_threadpool(lambda: watch.set_alias_target(db, settings, alias, target)))


@router.post("/ui/trajectories/{trajectory_id:path}/feedback", dependencies=[DashboardWrite])
async def add_feedback(
    request: Request, trajectory_id: str, db: DbDep, settings: SettingsDep
) -> JSONResponse:
    body = await request.body()
    return JSONResponse(await run_in_threadpool(watch.add_feedback, db, settings, trajectory_id, body))


# -- live data ---------------------------------------------------------------------------------------


@router.get("/ui/api/jobs/{job_id}/metrics", dependencies=[DashboardRead])
async def job_metrics(
    job_id: RowIdPath,
    db: DbDep,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 400,
    after_step: RowIdQuery = None,
) -> dict[str, Any]:
    points = min(max(10, max_points), 5000)
    return await run_in_threadpool(watch.metric_points, db, job_id, points, after_step)


def _stream(request: Request, feed: Any, poll_s: float, max_s: float, retry_ms: int) -> StreamingResponse:
    """``feed``'s frames as server-sent events until ``max_s`` (the browser then reconnects on its own
    and resumes from the last id), the client leaves, or the feed says its subject is gone."""

    async def gen() -> Any:
        deadline = asyncio.get_running_loop().time() + max(1.0, max_s)
        yield f"retry: {retry_ms}\n\n"
        while asyncio.get_running_loop().time() < deadline:
            for event, data, event_id in await run_in_threadpool(feed.poll):
                head = f"id: {event_id}\n" if event_id is not None else ""
                yield f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"
                if event == "gone":
                    return
            if await request.is_disconnected():
                return
            await asyncio.sleep(max(0.1, poll_s))

    return StreamingResponse(
        gen(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/ui/stream/jobs/{job_id}", dependencies=[DashboardRead])
async def job_stream(
    request: Request,
    job_id: RowIdPath,
    db: DbDep,
    after: RowIdQuery = None,
    poll_s: float = 1.0,
    max_s: float = STREAM_SECONDS,
) -> StreamingResponse:
    """New training metric points of a job (``id`` = last step sent) and its state, as SSE.
    Resumes after ``Last-Event-ID`` (what EventSource sends on reconnect) or ``after``."""
    start = watch.resume_point(request.headers.get("last-event-id"), after)
    return _stream(request, watch.JobFeed(db, job_id, start), poll_s, max_s, 1000)


@router.get("/ui/stream/events", dependencies=[DashboardRead])
async def event_stream(
    request: Request, db: DbDep, after: RowIdQuery = None, poll_s: float = 1.0, max_s: float = STREAM_SECONDS
) -> StreamingResponse:
    """The event log as SSE (``id`` = event id; resumes after ``Last-Event-ID``)."""
    start = watch.resume_point(request.headers.get("last-event-id"), after)
    return _stream(request, watch.EventFeed(db, start), poll_s, max_s, 2000)
