"""Trusting the capture of real traffic: no served answer is refused at capture whatever text it holds,
and feedback sent the instant an answer arrives is always stored (both databases, real HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serving_support import PROMPTS, one_torch_thread

from api_support import live_server
from learnloop.api import create_app
from learnloop.capture import CaptureClient, wrap_openai
from learnloop.config import Settings
from learnloop.serving.backend import ChatRequest, ChatResult, Chunk
from learnloop.serving.runtime import ServedCapture, ServingRuntime
from learnloop.store.db import Database
from learnloop.store.models import Feedback, Source, Trajectory
from learnloop.store.records import ESCAPED_MARK, unescape_record

# What a model server outside our control may answer: a NUL (the tiny model emits them), half of an
# emoji, and bytes that were not UTF-8 (as Python holds them: lone surrogates, errors="surrogateescape").
ANSWERS = {
    "nul": "a\x00b \\ end",
    "surrogate": "half of \ud83d an emoji",
    "bytes": b"caf\xe9 \xff\xfe ok".decode("utf-8", "surrogateescape"),
}


class TextBackend:
    """A ServingBackend whose model answers the text named by the prompt, in pieces when streamed.

    It stands in for a model server whose output we do not control (a remote vLLM or a provider); the
    routes, runtime and capture around it are the real ones."""

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def list(self) -> list[str]:
        return ["base"]

    def _text(self, request: ChatRequest) -> str:
        return ANSWERS[request.messages[-1]["content"].split()[-1]]

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        text = self._text(request)
        return [ChatResult(text, "stop", 3, len(text))]

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        yield self._text(request)

    async def astream(self, model: str, request: ChatRequest) -> AsyncIterator[Chunk]:
        text = self._text(request)
        for i in range(0, len(text), 3):  # cut anywhere, even between the halves of what was a character
            yield Chunk(text=text[i : i + 3])
        yield Chunk(finish_reason="stop", prompt_tokens=3, completion_tokens=len(text))

    async def achat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        return self.chat(model, request)


def _rejected(spool: Path) -> list[Path]:
    return (
        [p for p in (spool / "rejected").glob("*") if p.stat().st_size]
        if (spool / "rejected").exists()
        else []
    )


def test_answers_no_database_holds_are_stored_losslessly(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    capture = ServedCapture(settings, db)
    runtime = ServingRuntime(TextBackend(), db, poll_seconds=0.1, capture=capture)
    runtime.start()
    sdk = CaptureClient(settings, database=db, spool_dir=tmp_path / "sdk-spool", flush_interval=0.05)
    try:
        with live_server(create_app(settings, db, watch_inbox=False, serving=runtime)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            wrapped = wrap_openai(
                openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0), capture_client=sdk
            )
            served, wrapped_ids = {}, {}
            for kind, text in ANSWERS.items():
                prompt = [{"role": "user", "content": f"say it \x00 {kind}"}]  # the request holds a NUL too
                reply = client.chat.completions.create(model="learnloop", messages=prompt)
                assert reply.choices[0].message.content == text  # the client gets it whole
                served[reply.id] = text
                pieces, rid = [], None
                for chunk in client.chat.completions.create(model="learnloop", messages=prompt, stream=True):
                    rid = chunk.id
                    pieces += [c.delta.content for c in chunk.choices if c.delta.content]
                assert "".join(pieces) == text
                served[rid] = text
                # Feedback on each, the instant it arrives: its trajectory is there.
                for tid in (reply.id, rid):
                    r = httpx.post(f"{url}/v1/trajectories/{tid}/feedback", json={"thumbs": 1})
                    assert r.status_code == 200, r.text
                # The same answers through a wrapped client: the app's own capture keeps them too.
                wrapped.chat.completions.create(model="learnloop", messages=prompt)
                for _ in wrapped.chat.completions.create(model="learnloop", messages=prompt, stream=True):
                    pass
                wrapped_ids[kind] = text
            assert sdk.flush(60), sdk.stats()
            for tid, text in served.items():
                stored = httpx.get(f"{url}/v1/trajectories/{tid}").json()
                assert stored["source"] == "served" and ESCAPED_MARK in stored["metadata"]  # marked
                original = unescape_record(stored)  # the documented escape, reversed
                assert original["messages"][-1]["content"] == text
                assert original["messages"][0]["content"].startswith("say it \x00")
                assert ESCAPED_MARK not in original["metadata"]
            # What a client sends to the ingest API is still refused, naming the field.
            r = httpx.post(
                f"{url}/v1/ingest",
                json={"trajectories": [{"messages": [{"role": "user", "content": "a\x00"}]}]},
            )
            assert r.status_code == 422 and "NUL" in r.text
    finally:
        sdk.close(10)
        runtime.stop()
    with db.read_session() as s:
        rows = list(s.query(Trajectory).where(Trajectory.source == Source.production))
        assert len(rows) == 2 * len(ANSWERS)  # every wrapped call, plain and streamed
        for row in rows:
            record = unescape_record({"messages": row.messages, "metadata": row.meta})
            assert record["messages"][-1]["content"] in ANSWERS.values(), row.messages
        assert s.query(Feedback).count() == len(served)
    assert _rejected(tmp_path / "sdk-spool") == []
    assert _rejected(Path(settings.data_dir) / "spool") == []


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir: Path) -> Iterator[object]:
    from learnloop.serving.local import LocalBackend

    with one_torch_thread():
        backend = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=8, max_queued=64)
        yield backend
        backend.close()


ANSWERS_PER_RUN, CLIENTS = 200, 8


def test_feedback_sent_the_instant_an_answer_arrives_is_always_stored(
    settings: Settings, db: Database, tiny_backend: object, tmp_path: Path
) -> None:
    """The README's loop (answer, then feedback on reply.id at once) at the rates that lost feedback:
    200 answers, half streamed, 8 clients at once, each followed at once by feedback through the SDK
    and through the HTTP route."""
    runtime = ServingRuntime(tiny_backend, db, poll_seconds=0.1, capture=ServedCapture(settings, db))
    runtime.start()
    spool = tmp_path / "sdk-spool"
    failures: list[str] = []
    ids: list[str] = []
    lock = threading.Lock()
    try:
        with live_server(create_app(settings, db, watch_inbox=False, serving=runtime)) as url:
            sdk = CaptureClient(settings, server_url=url, spool_dir=spool, flush_interval=0.01)
            http = httpx.Client(base_url=url, timeout=60)

            def app(worker: int) -> None:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
                for i in range(ANSWERS_PER_RUN // CLIENTS):
                    prompt = PROMPTS[(worker + i) % len(PROMPTS)]
                    try:
                        if i % 2:
                            reply = client.chat.completions.create(
                                model="learnloop", messages=prompt, max_tokens=3
                            )
                            tid = reply.id
                        else:
                            tid = None
                            stream = client.chat.completions.create(
                                model="learnloop", messages=prompt, max_tokens=3, stream=True
                            )
                            for chunk in stream:
                                tid = chunk.id
                                if any(c.finish_reason for c in chunk.choices):
                                    break  # the answer is complete: feedback now, before the stream's end
                            stream.close()
                        sdk.feedback(tid, success=True)  # the README's snippet
                        r = http.post(f"/v1/trajectories/{tid}/feedback", json={"rating": 5})
                        if r.status_code != 200:
                            failures.append(f"{tid}: {r.status_code} {r.text}")
                        with lock:
                            ids.append(tid)
                    except Exception as exc:  # counted below
                        failures.append(repr(exc))

            threads = [threading.Thread(target=app, args=(w,)) for w in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            assert sdk.flush(120), sdk.stats()
            stats = sdk.stats()
            sdk.close(10)
            http.close()
    finally:
        runtime.stop()
    assert failures == []
    assert len(ids) == ANSWERS_PER_RUN and len(set(ids)) == ANSWERS_PER_RUN
    with db.read_session() as s:
        stored = {t.id for t in s.query(Trajectory).where(Trajectory.source == Source.served)}
        assert set(ids) <= stored
        by_id: dict[str, int] = {}
        for f in s.query(Feedback).where(Feedback.trajectory_id.in_(ids)):
            by_id[f.trajectory_id] = by_id.get(f.trajectory_id, 0) + 1
    assert sorted(by_id) == sorted(ids) and set(by_id.values()) == {2}  # SDK and route, every one
    assert stats["rejected"] == 0 and _rejected(spool) == []


def test_the_sdk_waits_for_a_trajectory_still_on_its_way(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    """Feedback naming a trajectory the store does not have yet is retried, not set aside at once;
    after ``capture.unknown_trajectory_wait`` it is set aside with the reason."""
    from learnloop.store import ingest, parse_batch

    patient = settings.model_copy(
        update={"capture": settings.capture.model_copy(update={"unknown_trajectory_wait": 600.0})}
    )
    spool = tmp_path / "spool"
    sdk = CaptureClient(patient, database=db, spool_dir=spool, flush_interval=0.01)
    try:
        sdk.feedback("late", thumbs=1)
        deadline = time.monotonic() + 60
        while sdk.stats()["retries"] < 2:  # the store said "unknown trajectory" and the writer waits
            assert time.monotonic() < deadline, sdk.stats()
            time.sleep(0.02)
        with db.session() as s:  # the trajectory arrives (a server finishing its write)
            ingest(
                s,
                parse_batch(
                    {"trajectories": [{"id": "late", "messages": [{"role": "user", "content": "q"}]}]}
                ),
            )
        assert sdk.flush(60), sdk.stats()
        assert sdk.stats()["rejected"] == 0
    finally:
        sdk.close(10)
    with db.read_session() as s:
        assert [f.thumbs for f in s.query(Feedback).where(Feedback.trajectory_id == "late")] == [1]

    impatient = settings.model_copy(
        update={"capture": settings.capture.model_copy(update={"unknown_trajectory_wait": 0.0})}
    )
    sdk = CaptureClient(impatient, database=db, spool_dir=tmp_path / "spool2", flush_interval=0.01)
    try:
        sdk.feedback("never", thumbs=1)
        assert sdk.flush(60), sdk.stats()
        assert sdk.stats()["rejected"] == 1
    finally:
        sdk.close(10)
    (only,) = _rejected(tmp_path / "spool2")
    assert "unknown trajectory id(s): never" in only.read_text()
