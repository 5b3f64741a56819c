"""Request body size limit with a JSON 413 that says which setting to change.

Starlette's own limiter answers a bare text "Content Too Large" whenever a Content-Length is
over the limit, overriding the app's error handlers, so learnloop applies its own.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large_message(limit: int) -> str:
    return (
        f"Request body is larger than {limit} bytes (server.max_request_bytes). "
        "Send smaller batches; nothing was stored."
    )


# Routes that answer errors in OpenAI's shape (learnloop.api.routes.openai_compat).
OPENAI_PATHS = frozenset({"/v1/chat/completions"})


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes: at once from Content-Length, or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            await send_error(send, scope, 413, too_large_message(self.limit), "request_too_large", close=True)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside body parsing, FastAPI passes an HTTPException on to the error handlers.
                    raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, limited_receive, send)


async def send_error(
    send: Send,
    scope: Scope,
    status: int,
    message: str,
    code: str | None = None,
    *,
    close: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
    problems: list[dict[str, str]] | None = None,
) -> None:
    """Answer with learnloop's JSON error (OpenAI's shape on the OpenAI routes, which OpenAI's
    clients read) from a middleware, before the app runs."""
    if scope.get("path") in OPENAI_PATHS:
        answer: dict = {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        }
    else:
        answer = {"error": message, "detail": message}
        if problems:
            answer["problems"] = problems
    body = json.dumps(answer).encode()
    sent = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the body was not read: the connection cannot carry another request
        sent.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": sent + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
