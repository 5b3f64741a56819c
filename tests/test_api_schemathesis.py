"""Issues 16.5 and 20.9: the OpenAPI document is true. Schemathesis generates requests from it
(its coverage phase: boundary values, every undocumented method, OPTIONS; its fuzzing phase:
valid bodies and deliberately invalid ones, odd path ids) and sends them to the real server over
HTTP, with the token configured and sent (on both databases), configured and not sent, and without
one. Every check Schemathesis has for a single request runs: any 5xx, an undocumented status, an
answer unlike its documented schema or headers, a valid request refused, an invalid one accepted,
an undocumented method not answered 405 with a complete ``Allow``, a protected route answering
without the token.

Two allowances, each for what JSON Schema cannot state (tests/schemathesis_hooks.py): a request
valid by the document may break a rule across values (an id repeated in a batch with different
content; a time that leaves years 1-9999 in UTC), which is refused with 422 naming the rule; and
the OpenAI-compatible route follows OpenAI's own contract (tool call arguments are JSON *text*,
system and user messages need non-empty text), so valid/invalid data is not judged there, while
every other check runs on it (tests/test_serving_api.py covers its parsing).

Run as Schemathesis' own command (its pytest plugin does not run under pytest 9), seeded, with
MAX_EXAMPLES per operation and mode. The OpenAI-compatible routes are served by a real
ServingRuntime over a canned backend (no model: what is under test is the routes' parsing and
answers, not generation).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api_support import REPO_ROOT, live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.serving.backend import BASE, ChatRequest, ChatResult, Chunk
from learnloop.serving.runtime import ServingRuntime
from learnloop.store import Database

MAX_EXAMPLES = 10
SEED = 20
TOKEN = "fuzz-tøken"  # not ASCII: the comparison is on bytes
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "accepts_valid_data",  # positive_data_acceptance, less what JSON Schema cannot state
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
]
# The OpenAI-compatible route: OpenAI's contract, not all of it expressible as JSON Schema.
CONFIG = """
[[operations]]
include-path = "/v1/chat/completions"
checks.negative_data_rejection.enabled = false
"""


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


def _schemathesis(
    url: str, headers: dict[str, str] | None, tmp_path: Path, phases: str, examples: int
) -> str:
    """Run Schemathesis' ``phases`` against ``url``; its output (asserts 0 failures)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT)]),
    }
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config)]
    command += [
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        phases,
        "--mode",
        "all",
    ]
    command += ["--max-examples", str(examples), "--seed", str(SEED), "--workers", "1", "--no-shrink"]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}: {value}"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
    return run.stdout


def _run(settings: Settings, db: Database, token: str, tmp_path: Path, phases: str, examples: int) -> None:
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
        document = httpx.get(f"{url}/openapi.json").json()
        output = _schemathesis(url, headers, tmp_path, phases, examples)
    operations = {f"{m.upper()} {p}" for p, methods in document["paths"].items() for m in methods}
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
        "POST /v1/ingest",
        "POST /v1/trajectories/{trajectory_id}/feedback",
        "GET /v1/trajectories/{trajectory_id}",
        "GET /v1/stats",
        "GET /healthz",
    } <= operations
    tested = re.search(r"Tested:\s+(\d+)", output)
    assert tested and int(tested.group(1)) == len(operations), output[-3000:]


@pytest.mark.slow(seconds=50)
def test_api_answers_as_documented_without_a_token(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """Everything open: every body reaches validation and the store. Both phases."""
    _run(settings, sqlite_db, "none", tmp_path, "coverage,fuzzing", MAX_EXAMPLES)


def test_api_answers_as_documented_with_the_token(settings: Settings, db: Database, tmp_path: Path) -> None:
    """The token sent: bodies reach PostgreSQL (what it refuses, SQLite would keep: NUL, say)."""
    if db.dialect == "sqlite":
        pytest.skip("the run without a token covers SQLite")
    _run(settings, db, "sent", tmp_path, "fuzzing", MAX_EXAMPLES)


def test_api_refuses_as_documented_without_the_token(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """The token configured and not sent: every protected route answers 401, as documented."""
    _run(settings, sqlite_db, "missing", tmp_path, "fuzzing", MAX_EXAMPLES // 2)
