"""ASGI middleware that times the ingest routes for /metrics (plain ASGI: no per-request task overhead)."""

from __future__ import annotations

import time
from typing import Any

from learnloop.watch import observe_ingest

Scope = dict[str, Any]


class IngestTimingMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not (
                path == "/v1/ingest" or (path.startswith("/v1/trajectories/") and path.endswith("/feedback"))
            )
        ):
            await self.app(scope, receive, send)
            return
        route = "/v1/ingest" if path == "/v1/ingest" else "/v1/trajectories/{id}/feedback"
        started = time.perf_counter()
        status = {"code": 500}

        async def _send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            observe_ingest(route, status["code"], time.perf_counter() - started)
