"""An upstream's answers become teacher data: sampled, queued (never delaying the answer), with the
model, scenario, latency and usage; feedback on them is stored or, when sampled out, dropped; a
teacher loop's dataset picks them up. Both databases, real HTTP on both sides."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select, text

from learnloop.capture.client import CaptureClient
from learnloop.config import Settings
from learnloop.demo.task import SCENARIO, cases
from learnloop.demo.teacher import MODEL, confidence_of, count_tokens
from learnloop.registry import move
from learnloop.store.db import Database
from learnloop.store.models import Feedback, Source, Trajectory
from learnloop.store.traffic import totals
from upstream_support import KEY, KEY_ENV, gateway, gateway_settings, teacher_server, wait_for

N = 40


@pytest.fixture(autouse=True)
def _teacher_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def _rejected(spool: Path) -> list[Path]:
    folder = spool / "rejected"
    return [p for p in folder.glob("*") if p.stat().st_size] if folder.exists() else []


def test_upstream_answers_are_sampled_teacher_data(settings: Settings, db: Database, tmp_path: Path) -> None:
    """Seed 003's rule: 0% at random plus every confident answer (confidence from the upstream's
    logprobs), so exactly the confident ones are kept: known in advance from the teacher's rule."""
    with teacher_server() as up:
        s = gateway_settings(
            settings,
            up.url,
            upstream={"confidence_from_logprobs": True},
            capture={"source_sample_rates": {"teacher": 0.0}, "keep_confident": 0.8},
        )
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        batch = cases(500, N)
        sdk = CaptureClient(
            s, server_url=None, database=None, spool_dir=tmp_path / "sdk", flush_interval=0.05
        )
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            app_sdk = CaptureClient(s, server_url=url, spool_dir=tmp_path / "app-sdk", flush_interval=0.05)
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            ids, streamed = {}, set()
            for i, case in enumerate(batch):
                headers = {"x-learnloop-scenario": SCENARIO}
                if i % 2:
                    reply = client.chat.completions.create(
                        model="learnloop", messages=case.messages, extra_headers=headers
                    )
                    rid = reply.id
                    assert reply.choices[0].message.content == case.teacher_answer()
                else:
                    rid = None
                    for chunk in client.chat.completions.create(
                        model="learnloop", messages=case.messages, stream=True, extra_headers=headers
                    ):
                        rid = chunk.id
                    streamed.add(rid)
                ids[rid] = case
                # Feedback at once, both ways an app sends it: nothing refused, nothing set aside.
                r = httpx.post(f"{url}/v1/trajectories/{rid}/feedback", json={"thumbs": 1}, timeout=60)
                assert r.status_code == 200, r.text
                app_sdk.feedback(rid, success=True)
            assert app_sdk.flush(60), app_sdk.stats()
            assert app_sdk.stats()["rejected"] == 0
            app_sdk.close(10)
            assert runtime.capture.flush(60)
            runtime.flush_traffic()
        sdk.close(1)
    keep = {rid for rid, case in ids.items() if confidence_of(case.message) >= 0.8}
    assert 0 < len(keep) < N  # the rule kept some and dropped some
    with db.read_session() as session:
        rows = {t.id: t for t in session.scalars(select(Trajectory))}
        assert set(rows) == keep
        for rid, t in rows.items():
            case = ids[rid]
            assert (t.source, t.model, t.model_version, t.scenario) == (
                Source.teacher,
                MODEL,
                "upstream:teacher",
                SCENARIO,
            )
            assert t.messages[-1] == {"role": "assistant", "content": case.teacher_answer()}
            meta = t.meta
            assert meta["upstream"] == "teacher" and meta["alias"] == "learnloop"
            assert meta["latency_ms"] > 0 and meta["confidence"] >= 0.8
            assert meta["usage"] == {
                "prompt_tokens": sum(count_tokens(m["content"]) for m in case.messages),
                "completion_tokens": len(range(0, len(case.teacher_answer()), 4)),
            }
            assert meta["params"]["stream"] == (rid in streamed)
        fb = list(session.scalars(select(Feedback)))
        assert {f.trajectory_id for f in fb} == keep and len(fb) == 2 * len(keep)
        (traffic,) = totals(session, alias="learnloop")
        assert (traffic.target, traffic.requests, traffic.cut) == ("upstream:teacher", N, 0)
        tokens_in = sum(sum(count_tokens(m["content"]) for m in c.messages) for c in ids.values())
        tokens_out = sum(len(range(0, len(c.teacher_answer()), 4)) for c in ids.values())
        assert traffic.cost == pytest.approx((tokens_in * 2.5 + tokens_out * 10.0) / 1000)
    assert _rejected(tmp_path / "app-sdk") == [] and _rejected(Path(s.data_dir) / "spool") == []


def test_capture_never_delays_the_answer(settings: Settings, db: Database) -> None:
    """With the trajectories table locked by another transaction, the upstream's answer still arrives;
    its trajectory is stored once the lock goes."""
    with teacher_server() as up:
        s = gateway_settings(settings, up.url)
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        case = cases(600, 1)[0]
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            locked, release, done = threading.Event(), threading.Event(), threading.Event()

            def hold_lock() -> None:
                if db.dialect == "sqlite":  # the one writer's lock, taken past SQLAlchemy
                    conn = sqlite3.connect(db.engine.url.database, isolation_level=None)
                    conn.execute("BEGIN EXCLUSIVE")
                    locked.set()
                    release.wait(120)
                    conn.rollback()
                    conn.close()
                else:
                    with db.engine.connect() as pg:
                        pg.execute(text("LOCK TABLE trajectories IN ACCESS EXCLUSIVE MODE"))
                        locked.set()
                        release.wait(120)
                        pg.rollback()
                done.set()

            holder = threading.Thread(target=hold_lock)
            holder.start()
            assert locked.wait(60)
            try:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=60)
                reply = client.chat.completions.create(model="learnloop", messages=case.messages)
                assert reply.choices[0].message.content == case.teacher_answer()
                assert not done.is_set()  # answered while the table was still locked
            finally:
                release.set()
                holder.join(60)
            assert runtime.capture.flush(60)
    with db.read_session() as session:
        assert session.get(Trajectory, reply.id) is not None


def test_a_teacher_loop_learns_from_proxied_answers(settings: Settings, db: Database) -> None:
    """`sources = ["teacher"]` is all a loop needs: its dataset holds the proxied answers."""
    from learnloop.config.loops import LoopConfig
    from learnloop.daemon.loops import dataset_filters
    from learnloop.datasets import build_dataset, read_records

    with teacher_server() as up:
        s = gateway_settings(settings, up.url, datasets={"holdout_fraction": 0.0})
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        batch = cases(700, 12)
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            for case in batch:
                client.chat.completions.create(
                    model="learnloop",
                    messages=case.messages,
                    extra_headers={"x-learnloop-scenario": SCENARIO},
                )
            assert runtime.capture.flush(60)
    loop = LoopConfig(name="orders", scenario=SCENARIO, sources=["teacher"])
    info = build_dataset(db, "sft", dataset_filters(loop, None, None), settings=s)
    records = list(read_records(info.path))
    assert info.count == len(batch) == len(records)
    answers = sorted(r["messages"][-1]["content"] for r in records)
    assert answers == sorted(c.teacher_answer() for c in batch)
