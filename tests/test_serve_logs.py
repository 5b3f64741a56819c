"""`learnloop serve`'s own log, read from a real server in a subprocess: what it leaves out (library
chatter, the dashboard's polls and assets), its JSON form, and Ctrl-C with an answer still streaming."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from api_support import LEARNLOOP, cli_env, free_port
from learnloop.api.shutdown import SHUTTING_DOWN
from learnloop.config import Settings
from learnloop.demo.teacher import MODEL
from learnloop.serving.backend import Chunk
from learnloop.store.db import Database
from upstream_support import KEY, KEY_ENV, StudentBackend, gateway, teacher_server

POLLS = ["/v1/status", "/healthz", "/static/app.css", "/ui/live/overview", "/metrics"]


def _serve(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [*LEARNLOOP, "serve", "--port", str(port), "--no-watch-inbox", *args],
        env=cli_env(tmp_path / "data", **env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"server exited: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the server did not stop on Ctrl-C") from None
    log = proc.stderr.read()
    assert proc.returncode == 0, log  # a stop asked for is a clean exit
    return log


def _visit(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in [*POLLS, *POLLS, "/v1/status"]:
            assert http.get(path).status_code < 400, path
        assert http.get("/jobs").status_code == 200  # a page a person opened: logged
        assert http.get("/v1/nothing-here").status_code == 404  # a request that failed: logged


def test_the_default_log_leaves_out_polls_assets_and_library_chatter(tmp_path: Path) -> None:
    proc, url = _serve(tmp_path, "--no-openai")
    try:
        _visit(url)
    finally:
        log = _stop(proc)
    access = [ln for ln in log.splitlines() if "uvicorn.access" in ln]
    assert any('"GET /jobs HTTP/1.1" 200' in ln for ln in access), log
    assert any('"GET /v1/nothing-here HTTP/1.1" 404' in ln for ln in access), log
    for path in POLLS:
        assert not any(f" {path} " in ln for ln in access), (path, access)
    assert "alembic" not in log and "it/s]" not in log, log  # migrations, schema checks, progress bars
    assert "shutting down" in log  # Ctrl-C is acknowledged in the log


def test_json_log_and_polls_logged_on_request(tmp_path: Path) -> None:
    proc, url = _serve(
        tmp_path, "--no-openai", "--log-format", "json", LEARNLOOP_SERVER__ACCESS_LOG_POLLS="true"
    )
    try:
        _visit(url)
    finally:
        log = _stop(proc)
    lines = [ln for ln in log.splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    access = [r["message"] for r in records if r["logger"] == "uvicorn.access"]
    for path in POLLS:
        assert any(f" {path} " in m for m in access), (path, access)
    assert any(r["logger"] == "learnloop.daemon" and "daemon.started" in r["message"] for r in records)


def test_ctrl_c_cuts_an_answer_still_streaming_with_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The upstream holds its answer for up to 60 s after the first piece; Ctrl-C must not wait for it."""
    (tmp_path / "learnloop.toml").write_text(
        "[[upstreams]]\n"
        'name = "teacher"\n'
        "base_url = '{url}/v1'\n"
        f'model = "{MODEL}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
    )
    with teacher_server() as up:
        up.faults["kind"] = "hold_stream"
        toml = (tmp_path / "learnloop.toml").read_text().replace("{url}", up.url)
        (tmp_path / "learnloop.toml").write_text(toml)
        proc, url = _serve(tmp_path, "--model", str(tiny_model_dir), **{KEY_ENV: KEY})
        events: list[str] = []
        with httpx.Client(base_url=url, timeout=120) as http:
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "upstream:teacher",
                    "stream": True,
                    "messages": [{"role": "user", "content": "a long answer, please"}],
                },
            ) as resp:
                assert resp.status_code == 200, resp.read()
                lines = resp.iter_lines()
                for line in lines:
                    events.append(line)
                    if "first piece" in line:
                        break
                proc.send_signal(signal.SIGINT)
                started = time.monotonic()
                events.extend(lines)  # the rest, until the server ends the stream
        cut_after = time.monotonic() - started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the server did not exit on Ctrl-C") from None
        log = proc.stderr.read()
        assert "released_after_first" not in up.faults  # the upstream's answer was never waited for
    errors = [json.loads(e[5:])["error"] for e in events if e.startswith("data:") and '"error"' in e]
    assert errors and errors[0]["code"] == "server_shutting_down", events
    assert "shutting down" in errors[0]["message"] and "Retry" in errors[0]["message"]
    assert cut_after < 50, f"the stream ended {cut_after:.0f} s after Ctrl-C: it waited for the answer"
    assert "shutting down" in log


class _SlowStudent(StudentBackend):
    """Answers one piece, then takes a minute for the rest (a long generation); records that it was cut."""

    cut = False

    async def astream(self, model: str, request: Any) -> Any:
        yield Chunk(text="the first words")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            type(self).cut = True
            raise
        yield Chunk(finish_reason="stop", prompt_tokens=5, completion_tokens=3)


def test_a_whole_answer_in_flight_gets_503_when_the_server_shuts_down(
    settings: Settings, sqlite_db: Database
) -> None:
    with gateway(settings, sqlite_db, backend=_SlowStudent()) as (url, _):
        body = {"model": "base", "messages": [{"role": "user", "content": "tell me everything"}]}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=120)
            time.sleep(1.0)  # the request is in flight, waiting on the slow generation
            assert not pending.done()
            SHUTTING_DOWN.set()
            try:
                r = pending.result(timeout=30)
            finally:
                SHUTTING_DOWN.clear()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "server_shutting_down" and "Retry" in r.json()["error"]["message"]
    assert _SlowStudent.cut  # the generation behind it was stopped, not left running
