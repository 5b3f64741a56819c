"""App factory: one process serves the API, OpenAI routes and dashboard."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from learnloop import __version__
from learnloop.api.body_limit import BodyLimitMiddleware
from learnloop.api.cross_site import CrossSiteGuard
from learnloop.api.deps import IngestGate
from learnloop.api.methods import MethodsMiddleware
from learnloop.api.openapi import install_openapi
from learnloop.config import Settings, load_settings
from learnloop.errors import (
    Conflict,
    LearnloopError,
    NotFound,
    Overloaded,
    StoreError,
    StoreUnavailable,
    ValidationFailed,
)
from learnloop.paths import data_dir
from learnloop.store.db import Database, open_database
from learnloop.store.records import error_location

log = logging.getLogger("learnloop.api")

# Seconds a client is told to wait when the database is unreachable or busy.
STORE_RETRY_AFTER = 5


def create_app(
    settings: Settings | None = None,
    db: Database | None = None,
    *,
    watch_inbox: bool | None = None,
    serving: Any = None,
    serving_off_reason: str | None = None,
) -> FastAPI:
    """Build the app. ``db`` defaults to the configured database, migrated to head.

    The inbox watcher runs during the app's lifespan when ``watch_inbox`` (default:
    ``settings.server.watch_inbox``) is true; TestClient runs the lifespan only inside ``with``.
    ``serving`` (a ``learnloop.serving.ServingRuntime``) answers the OpenAI routes under ``/v1``;
    without one they answer 503 with ``serving_off_reason``.
    """
    settings = settings or load_settings()
    db = db or open_database(settings)
    watch = settings.server.watch_inbox if watch_inbox is None else watch_inbox

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from learnloop.store.inbox import InboxWatcher

        app.state.inbox = None
        alerts = _start_alerts(db, settings)
        if watch:
            data_dir(settings.data_dir).ensure()
            app.state.inbox = InboxWatcher(db, settings)
            app.state.inbox.start()
            log.info("watching %s every %ss", app.state.inbox.dirs.inbox, app.state.inbox.poll_seconds)
        if serving is not None:
            serving.start()  # alias watcher
        try:
            yield
        finally:
            if serving is not None:
                if hasattr(serving, "aclose"):
                    await serving.aclose()  # the upstreams' connections live in this event loop
                serving.stop()
            if app.state.inbox is not None:
                app.state.inbox.stop()
            if alerts is not None:
                alerts.stop()

    app = FastAPI(
        title="learnloop",
        version=__version__,
        description="Continuous learning for LLM applications.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limit=settings.server.max_request_bytes)
    app.state.settings = settings
    app.state.db = db
    app.state.inbox = None
    app.state.ingest_gate = IngestGate(settings.server.ingest_queue_size)

    from learnloop.api.routes import health, ingest

    app.include_router(health.router)
    app.include_router(ingest.router)
    from learnloop.api.routes import jobs

    app.include_router(jobs.router)
    from learnloop.api.routes import registry as registry_routes

    app.include_router(registry_routes.router)
    from learnloop.api.routes import aliases, openai_compat

    app.state.serving, app.state.serving_off_reason = serving, serving_off_reason
    app.include_router(openai_compat.router)
    app.include_router(aliases.router)
    from learnloop.api.routes import otlp

    app.include_router(otlp.router)
    _install_watch(app)
    _install_error_handlers(app)
    install_openapi(app, settings)
    # Added last, so it runs first: a refused request costs no body reading, no timing, no route.
    app.add_middleware(MethodsMiddleware)
    app.add_middleware(CrossSiteGuard, allowed_origins=settings.server.allowed_origins)
    return app


def _install_watch(app: FastAPI) -> None:
    """Status, /readyz, /metrics, the dashboard and its static files (the `watch` stage)."""
    from fastapi.staticfiles import StaticFiles

    from learnloop import watch
    from learnloop.api.routes import dashboard, status
    from learnloop.api.timing import IngestTimingMiddleware

    app.add_middleware(IngestTimingMiddleware)
    app.include_router(status.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard.page_routes())
    app.mount("/static", StaticFiles(directory=str(watch.STATIC_DIR)), name="static")


def _start_alerts(db: Database, settings: Settings) -> Any:
    if not settings.alerts:
        return None
    from learnloop.watch import AlertService

    service = AlertService(db, settings)
    service.start()
    return service


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    # "detail" mirrors "error" so clients written against FastAPI's default shape keep working.
    return JSONResponse({"error": message, "detail": message, **extra}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": error_location({**e, "loc": [p for p in e["loc"] if p != "body"]}), "msg": e["msg"]}
            for e in exc.errors()
        ]
        shown = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        return _error(422, f"Invalid request — {shown}{more}. Nothing was stored.", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(LearnloopError)
    async def _domain(request: Request, exc: LearnloopError) -> JSONResponse:
        if isinstance(exc, ValidationFailed):
            return _error(422, str(exc), problems=[{"loc": loc, "msg": m} for loc, m in exc.problems])
        if isinstance(exc, NotFound):
            return _error(404, str(exc))
        if isinstance(exc, Conflict):
            return _error(409, str(exc))
        if isinstance(exc, Overloaded):
            return _error(429, str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after)))})
        if isinstance(exc, StoreUnavailable):
            # The message names the database's address and the driver's words: for the log, not
            # for whoever is calling (healthz and reads may be open to anyone).
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
            if "locked" in str(exc):
                text = (
                    "The database is busy (locked by another writer). Nothing was stored; "
                    "retry after Retry-After seconds."
                )
            else:
                text = (
                    "Cannot reach the database right now. Nothing was stored; "
                    "retry after Retry-After seconds."
                )
            return _error(503, text, headers={"Retry-After": str(STORE_RETRY_AFTER)})
        if isinstance(exc, StoreError):
            log.error("database error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
            return _error(500, str(exc))
        return _error(400, str(exc))  # Unparsable (a body that is not JSON) and any other refusal
