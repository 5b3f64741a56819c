"""No cross-site writes: a web page the user visits must not be able to write to learnloop.

A default server (no token, bound to 127.0.0.1) is reachable by any page open in the user's
browser. Browsers let a page send some cross-site requests without asking the server first (a
"simple" request: a form post, ``text/plain``), and a page whose domain is made to resolve to
127.0.0.1 (DNS rebinding) is, to the browser, the server's own origin. Three rules, checked before
anything else runs, refuse both, as Jupyter and Ollama do:

* **Host** (every method): a request that arrived on a loopback address must name a local host
  (``localhost``, ``*.localhost``, ``*.local``, ``*.internal``, this machine's name, an IP address)
  or a host of ``server.allowed_origins``; a rebound domain is refused with 403.
* **Origin / Sec-Fetch-Site** (writes: POST, PUT, PATCH, DELETE): a browser names the page a
  request comes from. ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (typed by the
  user), or an ``Origin`` that is not this server (nor in ``server.allowed_origins``), is a 403.
  Clients that are not browsers (curl, the SDK, OpenAI's clients) send neither and pass.
* **Content type** (writes to documented API routes): a body must come as one of the types the
  route documents in the OpenAPI document, ``application/json`` unless it declares others; a
  ``text/plain`` or form body, which a browser sends cross-site without asking, is a 415. A route
  that takes another type (the OTLP protobuf ingest) declares it as its request body content in
  ``openapi_extra`` (``{"requestBody": {"content": {"application/x-protobuf": ...}}}``) and is
  accepted with it; see ``accepted_content_types``. The dashboard's own routes are not in the
  document: its forms and buttons are same-origin, which the Origin rule checks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from learnloop.api.body_limit import send_error
from learnloop.api.methods import app_routes

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
# Values of Sec-Fetch-Site that mean the server's own page, or the user typing the address.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})
# Names no public DNS can hand out: a page cannot rebind them to this machine.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def accepted_content_types(route: Any) -> frozenset[str]:
    """The media types a write route takes: those its OpenAPI request body documents (an
    ``openapi_extra`` requestBody, or the body FastAPI reads for it), else ``application/json``."""
    extra = getattr(route, "openapi_extra", None) or {}
    declared = set((extra.get("requestBody") or {}).get("content") or ())
    body = getattr(route, "body_field", None)
    if body is not None:
        declared.add(getattr(body.field_info, "media_type", JSON))
    return frozenset(t.lower() for t in declared) or frozenset({JSON})


class CrossSiteGuard:
    """ASGI middleware applying the module's three rules; ``allowed_origins`` are full origins
    (``https://learnloop.example.com``) whose pages may write, and whose hosts the server answers to."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_origins = frozenset(_origin_key(o) for o in allowed_origins)
        self.allowed_hosts = frozenset(
            h for h in (urlsplit(o).hostname for o in allowed_origins) if h is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        code = "cross_site_refused" if status == 403 else "unsupported_media_type"
        await send_error(send, scope, status, message, code)

    def problem(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the request is refused, else None."""
        headers = _headers(scope)
        host = headers.get("host", "")
        if host and _arrived_on_loopback(scope) and not self._local_host(host):
            return 403, (
                f"Host {host!r} is not a name of this server. A server bound to a loopback address "
                "answers only to local names (localhost, an IP address); a web page whose domain points "
                "at this machine is refused. Behind a proxy, add its origin to server.allowed_origins."
            )
        if scope["method"] not in WRITE_METHODS:
            return None
        origin = headers.get("origin")
        allowed = origin is not None and _origin_key(origin) in self.allowed_origins
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in _OWN_FETCH_SITES and not allowed:
            return 403, (
                f"Cross-site request refused (Sec-Fetch-Site: {site}): a web page on another site "
                "cannot write to learnloop. Call the API from a program (curl, the SDK), or add the "
                "page's origin to server.allowed_origins."
            )
        if origin is not None and not allowed and not _same_origin(origin, host, scope):
            return 403, (
                f"Cross-site request refused: Origin {origin!r} is not this server. A web page on "
                "another origin cannot write to learnloop; call the API from a program (curl, the "
                "SDK), or add the page's origin to server.allowed_origins."
            )
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not media or media == JSON:
            return None
        accepted = self._route_content_types(scope)
        if accepted is not None and media not in accepted:
            return 415, (
                f"Content-Type {media!r} is not accepted here: send the body as "
                f"{' or '.join(sorted(accepted))} (curl: -H 'Content-Type: {sorted(accepted)[0]}'). "
                "Form and text/plain bodies are refused on every write so that web pages cannot send "
                "them. Nothing was stored."
            )
        return None

    def _local_host(self, host: str) -> bool:
        name = _hostname(host)
        return name in self.allowed_hosts or is_local_name(name)

    @staticmethod
    def _route_content_types(scope: Scope) -> frozenset[str] | None:
        """The content types the documented route this request goes to takes (None: not a documented
        route, or none matches, which the router answers itself)."""
        for route in app_routes(scope.get("app")):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                if not getattr(route, "include_in_schema", False):
                    return None
                return accepted_content_types(route)
        return None


def is_local_name(name: str) -> bool:
    """Whether ``name`` (a host name without port) can only mean this machine or the local network."""
    if name == "localhost" or name.endswith(_LOCAL_SUFFIXES) or name in _machine_names():
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1)
def _machine_names() -> frozenset[str]:
    name = socket.gethostname().lower()
    return frozenset({name, name.split(".", 1)[0]})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _arrived_on_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    return bool(server) and _is_loopback(server[0])


@lru_cache(maxsize=64)
def _is_loopback(address: str) -> bool:
    """Parsed once per address a server listens on (every request asks, the chat route included)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a Unix socket path, or a test client's made-up name
        return False


def _hostname(host: str) -> str:
    """``host`` (a Host header or netloc) without its port, lower-case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_key(origin: str) -> str:
    """An origin as ``host:port`` (default port for its scheme when absent), for comparison."""
    parts = urlsplit(origin.strip().lower())
    try:
        port = parts.port
    except ValueError:
        return origin
    if parts.hostname is None:
        return origin  # "null" (a sandboxed page, a file) and anything malformed match nothing
    return f"{parts.hostname}:{port or _DEFAULT_PORTS.get(parts.scheme, 0)}"


def _same_origin(origin: str, host: str, scope: Scope) -> bool:
    """Whether ``Origin`` names the host the request was sent to. The scheme is not compared: a
    proxy in front may end TLS, and two servers cannot share one host and port."""
    if not host:
        return False
    key = _origin_key(origin)
    default = _DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)
    name = _hostname(host)
    port = host.rsplit(":", 1)[1] if (":" in host and not host.endswith("]")) else None
    if port is not None and not port.isdigit():
        return False
    target = f"{name}:{port or default}"
    if key == target:
        return True
    # An https page behind a TLS-ending proxy names port 443 while the Host header has none.
    return port is None and key.rsplit(":", 1)[0] == name and key.endswith((":80", ":443"))
