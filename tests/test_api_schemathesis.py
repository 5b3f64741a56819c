"""Issue 16.5: the OpenAPI document is true. Schemathesis generates requests from it (valid
bodies and deliberately invalid ones, odd path ids) and sends them to the real server over HTTP,
with the token configured and sent (on both databases), configured and not sent, and without one; any 5xx, an
undocumented status, or an answer that does not match its documented schema fails.

Bounded: MAX_EXAMPLES per operation and generation mode, derandomized (the same cases each run).
Driven through Hypothesis directly: Schemathesis' pytest plugin does not run under pytest 9.
The OpenAI-compatible routes are served by a real ServingRuntime over a canned backend (no model:
what is under test is the routes' parsing and answers, not generation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api_support import live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.serving.backend import BASE, ChatRequest, ChatResult, Chunk
from learnloop.serving.runtime import ServingRuntime
from learnloop.store import Database

MAX_EXAMPLES = 10
TOKEN = "fuzz-tøken"  # not ASCII: the comparison is on bytes
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


class CannedBackend:
    """A ServingBackend that answers "ok" for every choice; adapters are only names."""

    def __init__(self) -> None:
        self.loaded = {BASE}

    def load_adapter(self, name: str, path: Path) -> None:
        self.loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        self.loaded.discard(name)

    def list(self) -> list[str]:
        return sorted(self.loaded)

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        return [ChatResult("ok", "stop", 1, 1) for _ in range(request.n)]

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        yield "ok"

    async def achat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        return self.chat(model, request)

    async def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        for i in range(request.n):
            yield Chunk(index=i, text="ok", finish_reason="stop", prompt_tokens=1, completion_tokens=1)


def _fuzz(url: str, headers: dict[str, str] | None) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tested.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:  # type: ignore[no-untyped-def]
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (GET /healthz has no parameters)
                assert mode == GenerationMode.NEGATIVE
    return tested


def _run(settings: Settings, db: Database, token: str) -> None:
    if token != "none":
        settings = settings.model_copy(
            update={
                "api_token": SecretStr(TOKEN),
                "server": settings.server.model_copy(update={"read_token": SecretStr("reader")}),
            }
        )
    headers = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")} if token == "sent" else None
    serving = ServingRuntime(CannedBackend(), db)
    with live_server(create_app(settings, db, watch_inbox=False, serving=serving)) as url:
        tested = _fuzz(url, headers)
    assert {
        "GET /v1/models",
        "POST /v1/chat/completions",
        "PUT /v1/aliases/{name}",
        "GET /v1/versions/diff",
        "POST /v1/versions/{version_id}/promote",
        "GET /v1/status",
        "POST /v1/jobs",
        "POST /v1/jobs/{job_id}/{action}",
        "GET /v1/jobs/{job_id}",
        "POST /v1/loops/{name}/run",
        "POST /v1/daemon/{action}",
    } <= set(tested)
    assert {
        "POST /v1/ingest",
        "POST /v1/trajectories/{trajectory_id}/feedback",
        "GET /v1/trajectories/{trajectory_id}",
        "GET /v1/stats",
        "GET /healthz",
    } <= set(tested)


def test_api_answers_as_documented_with_the_token(settings: Settings, db: Database) -> None:
    """Bodies reach validation and the store: both databases."""
    _run(settings, db, "sent")


@pytest.mark.parametrize("token", ["none", "missing"])
def test_api_answers_as_documented_open_or_refused(
    settings: Settings, sqlite_db: Database, token: str
) -> None:
    """No token configured (everything open), or configured and not sent (every protected route 401)."""
    _run(settings, sqlite_db, token)
