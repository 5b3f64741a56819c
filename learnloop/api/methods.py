"""Which methods a path takes, said completely: ``Allow`` on 405 answers, and ``OPTIONS``.

Starlette answers 405 with the methods of the first route whose path matched, so a path served by
two routes (``GET`` and ``POST /v1/versions``) named only one of them, and ``OPTIONS`` was a 405.
Here ``Allow`` lists every method of every route on the path, and ``OPTIONS`` on a path that exists
answers 204 with it. No CORS headers are sent: a browser's preflight from another origin still fails,
which is what keeps other sites from writing (see ``api.cross_site``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send


def app_routes(app: Any) -> Iterator[Any]:
    """Every route ``app`` serves, those of included routers with their full path."""
    return iter_route_contexts(getattr(app, "routes", ()))


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """Every method some route of ``app`` takes on the scope's path (empty: no route has the path)."""
    methods: set[str] = set()
    for route in app_routes(app):
        match, _ = route.matches(scope)  # PARTIAL: the path matches, the method does not
        if match == Match.NONE:
            continue
        if isinstance(route.original_route, Mount):  # static files
            methods |= {"GET", "HEAD"}
        else:
            methods |= set(route.methods or ())
    if methods:
        methods.add("OPTIONS")
    return sorted(methods)


def allow_header(app: Any, scope: Scope) -> str:
    return ", ".join(allowed_methods(app, scope))


class OptionsMiddleware:
    """``OPTIONS`` on a path some route serves: 204 with the complete ``Allow``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            allow = allow_header(scope.get("app"), scope)
            if allow:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [(b"allow", allow.encode()), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)
