"""Which methods a path takes, said completely and kept to: ``Allow``, ``OPTIONS`` and 405.

A path is the resource of its most concrete route template, as OpenAPI reads it (concrete paths
before templated ones): ``/v1/versions/diff`` is the diff, not version ``diff``, and takes GET only,
though ``DELETE /v1/versions/{version_id}`` would also match it. Starlette answered 405 with the
methods of the first route whose path matched (``GET`` and ``POST /v1/versions`` are two routes),
answered ``OPTIONS`` with 405, and let ``DELETE /v1/versions/diff`` through to the templated
route. Here every request is checked against its resource's methods: ``OPTIONS`` answers 204 with
``Allow`` listing them all, any other method not among them 405 with the same ``Allow``. No CORS
headers are sent: a browser's preflight from another origin still fails, which is what keeps other
sites from writing (see ``api.cross_site``). A NUL character in the query string (``%00``), which no
stored name or id can hold, is a 422 naming the parameter here too, on every route alike (path
parameters are each route's: a trajectory id with NUL is a 404, as any id not stored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import iter_route_contexts
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from learnloop.api.body_limit import send_error

_PARAM = re.compile(r"\{[^}]*\}")
_CACHED_PATHS = 4096


def app_routes(app: Any) -> Iterator[Any]:
    """Every route ``app`` serves, those of included routers with their full path."""
    return iter_route_contexts(getattr(app, "routes", ()))


class RouteTable:
    """The app's route templates, each with its pattern and methods, to find a path's resource."""

    def __init__(self, app: Any) -> None:
        templates: dict[str, tuple[re.Pattern[str], set[str]]] = {}
        for route in app_routes(app):
            if isinstance(route.original_route, Mount):  # static files
                methods, template = {"GET", "HEAD"}, route.path + "/{path:path}"
            else:
                methods, template = set(route.methods or ()), route.path
            pattern = getattr(route, "path_regex", None)
            if pattern is None or not methods:
                continue
            templates.setdefault(template, (pattern, set()))[1].update(methods)
        # Most concrete first: fewest parameters.
        self.templates = sorted(templates.items(), key=lambda t: len(_PARAM.findall(t[0])))
        self._cache: dict[str, list[str] | None] = {}

    def methods(self, path: str) -> list[str] | None:
        """The methods of the resource ``path`` names (with OPTIONS), or None when no route has it."""
        if path not in self._cache:
            if len(self._cache) >= _CACHED_PATHS:
                self._cache.clear()
            self._cache[path] = self._find(path)
        return self._cache[path]

    def _find(self, path: str) -> list[str] | None:
        found: set[str] = set()
        params = None
        for template, (pattern, methods) in self.templates:
            count = len(_PARAM.findall(template))
            if params is not None and count > params:
                break  # a more concrete template matched: the templated ones do not name this path
            if pattern.match(path):
                params = count
                found |= methods
        return sorted(found | {"OPTIONS"}) if found else None


class MethodsMiddleware:
    """``OPTIONS``: 204 with ``Allow``; a method the path's resource does not take: 405 with ``Allow``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._table: RouteTable | None = None
        self._routes = -1

    def table(self, app: Any) -> RouteTable:
        count = len(getattr(app, "routes", ()))
        if self._table is None or count != self._routes:  # routes added since: read them again
            self._table, self._routes = RouteTable(app), count
        return self._table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b""):
            # No stored name or id holds one, and PostgreSQL refuses one in a query: one answer, any route.
            names = [k for k, v in parse_qsl(scope["query_string"].decode("latin-1")) if "\x00" in k + v]
            message = (
                f"Invalid input — {', '.join(names) or 'query'}: holds a NUL character (%00), which no name, "
                "id or filter can contain; remove it."
            )
            await send_error(
                send,
                scope,
                422,
                message,
                "invalid_query",
                problems=[{"loc": n, "msg": "NUL character"} for n in names],
            )
            return
        methods = self.table(scope.get("app")).methods(scope["path"])
        method = scope["method"]
        if methods is None or (method in methods and method != "OPTIONS"):
            await self.app(scope, receive, send)
            return
        allow = [(b"allow", ", ".join(methods).encode())]
        if method == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [*allow, (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        message = f"{method} is not allowed on {scope['path']}; it takes {', '.join(methods)}."
        await send_error(send, scope, 405, message, "method_not_allowed", headers=allow)
