"""From the teacher to the student: the gate against the teacher (non-inferiority, latency and cost
beside quality), the canary's steps, and its fall-back on a live drop. Both databases; the teacher is
the demo's real HTTP server, the student a local backend behind learnloop's real app."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI, Request
from serving_support import version_row
from sqlalchemy import select

from api_support import live_server
from learnloop.config import Settings
from learnloop.daemon import canary
from learnloop.demo.task import SCENARIO, cases
from learnloop.evaluation import evaluate, get_evaluation
from learnloop.registry import alias_history, get_version, move
from learnloop.scoring import apply_rewards
from learnloop.store.aliases import get_alias
from learnloop.store.db import Database
from learnloop.store.models import Event, Trajectory
from learnloop.watch import alerts
from upstream_support import (
    KEY,
    KEY_ENV,
    StudentBackend,
    adapter_folder,
    gateway,
    gateway_settings,
    teacher_server,
    wait_for,
)

VERSION_HEADER = "x-learnloop-version"
OWN_PRICE = {"input": 0.1, "output": 0.2}


@pytest.fixture(autouse=True)
def _teacher_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def _settings(settings: Settings, url: str, **sections: Any) -> Settings:
    return gateway_settings(
        settings,
        url,
        scoring={"reward_modules": ["learnloop.demo.rewards"]},
        serving={"price_per_1k_tokens": OWN_PRICE},
        gate={"min_examples": 8, "teacher_margin": 0.1, "min_scenario_examples": 1000},
        **sections,
    )


def _ask(client: openai.OpenAI, case: Any, user: str = "u") -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model="learnloop",
        messages=case.messages,
        user=user,
        extra_headers={"x-learnloop-scenario": SCENARIO},
    )
    return raw.parse().id, raw.headers[VERSION_HEADER]


def test_gate_against_the_teacher(settings: Settings, db: Database, tmp_path: Path) -> None:
    with teacher_server() as up:
        s = _settings(settings, up.url, datasets={"holdout_fraction": 0.5})
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: "learnloop" in runtime.aliases, "the alias to be read")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            for case in cases(900, 60):
                _ask(client, case)
            assert runtime.capture.flush(60)
        with db.session() as session:
            for vid in ("v0001", "v0002"):
                session.add(version_row(vid, "base-model", adapter_folder(tmp_path, vid), gate=None))
        good = get_evaluation(
            db,
            evaluate(
                db, s, candidate="v0001", baseline="serving", scenario=SCENARIO, backend=StudentBackend()
            ),
        )
        bad = get_evaluation(
            db,
            evaluate(
                db,
                s,
                candidate="v0002",
                baseline="serving",
                scenario=SCENARIO,
                backend=StudentBackend(right=False),
            ),
        )
        with db.read_session() as session:
            held_out = [
                t
                for t in session.scalars(
                    select(Trajectory).where(Trajectory.model_version == "upstream:teacher")
                )
                if t.split.value == "holdout"
            ]
        # Good: as good as the teacher, so no worse by more than the margin; the report puts latency
        # and cost beside quality for both sides.
        assert good["baseline"] == "upstream:teacher" and good["verdict"] == "promote", good["gate"]
        m = good["metrics"]
        assert m["against"] == "teacher" and m["teacher"]["stored_answers"] == m["n"] == len(held_out) >= 8
        assert any("non-inferiority" in r for r in good["gate"]["reasons"])
        latencies = [t.meta["latency_ms"] for t in held_out]
        o = m["overall"]
        assert o["latency_p50_baseline_ms"] == pytest.approx(float(np.percentile(latencies, 50)))
        assert o["latency_p95_baseline_ms"] == pytest.approx(float(np.percentile(latencies, 95)))
        assert o["latency_p50_candidate_ms"] is not None
        teacher_cost = statistics.mean(
            (t.meta["usage"]["prompt_tokens"] * 2.5 + t.meta["usage"]["completion_tokens"] * 10.0) / 1000
            for t in held_out
        )
        assert o["cost_per_1k_requests_baseline"] == pytest.approx(1000 * teacher_cost)
        own_cost = statistics.mean(
            (20 * OWN_PRICE["input"] + (len(e["candidate"]["text"]) // 4) * OWN_PRICE["output"]) / 1000
            for e in good["examples"]
        )
        assert o["cost_per_1k_requests_candidate"] == pytest.approx(1000 * own_cost)
        assert any("cost per 1,000 requests" in r for r in good["gate"]["reasons"])
        # Bad: worse than the teacher by more than the margin.
        assert bad["verdict"] == "reject"
        assert "does not clear -0.1000" in bad["gate"]["reasons"][0], bad["gate"]["reasons"]

        # Fresh teacher answers within a budget, for held-out prompts it has not answered.
        from learnloop.store.trajectories import ingest

        extra = cases(950, 6)
        with db.session() as session:
            ingest(
                session,
                {
                    "trajectories": [
                        {
                            "id": f"prod-{i}",
                            "scenario": SCENARIO,
                            "source": "production",
                            "messages": c.messages,
                        }
                        for i, c in enumerate(extra)
                    ]
                },
                holdout_fraction=0.999,
            )
        before = up.app.state.served
        s2 = s.model_copy(update={"evaluation": s.evaluation.model_copy(update={"upstream_budget": 4})})
        fresh = get_evaluation(
            db,
            evaluate(
                db,
                s2,
                candidate="v0001",
                baseline="serving",
                scenario=SCENARIO,
                backend=StudentBackend(),
                limit=len(held_out) + 10,
            ),
        )
        assert fresh["metrics"]["teacher"]["fresh_answers"] == 4 == up.app.state.served - before
        assert fresh["metrics"]["n"] == len(held_out) + 4
        fresh_answers = [e["baseline"] for e in fresh["examples"] if e["baseline"]["finish"] != "stored"]
        assert len(fresh_answers) == 4 and all(a["latency_ms"] > 0 and a["cost"] > 0 for a in fresh_answers)


def _round(url: str, client: openai.OpenAI, seed: int, users: int = 20) -> dict[str, str]:
    """One request per user, each followed by the app's verdict as feedback; then a scoring pass."""
    from learnloop.demo.task import check

    sides = {}
    for i, case in enumerate(cases(seed, users)):
        raw = client.chat.completions.with_raw_response.create(
            model="learnloop",
            messages=case.messages,
            user=f"user-{i}",
            extra_headers={"x-learnloop-scenario": SCENARIO},
        )
        reply = raw.parse()
        sides[f"user-{i}"] = raw.headers[VERSION_HEADER]
        ok = check(case.message, reply.choices[0].message.content or "") == 1.0
        r = httpx.post(f"{url}/v1/trajectories/{reply.id}/feedback", json={"success": ok}, timeout=60)
        assert r.status_code == 200, r.text
    return sides


CANARY = {"steps": [0.25, 0.6, 1.0], "min_step_seconds": 0, "min_answers": 4, "teacher_window": 200}


def test_canary_steps_up_sticky_then_promotes(settings: Settings, db: Database, tmp_path: Path) -> None:
    with db.session() as session:
        session.add(version_row("v0001", "base-model", adapter_folder(tmp_path, "v0001")))
    with teacher_server() as up:
        s = _settings(settings, up.url, canary=CANARY)
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        assert canary.wanted(db, s, "learnloop", None)
        assert canary.start(db, s, "learnloop", "v0001") == "started"
        assert canary.start(db, s, "learnloop", "v0001") == "running"
        assert get_alias(db).split == 0.25
        with gateway(s, db) as (url, runtime):
            wait_for(lambda: getattr(runtime.aliases.get("learnloop"), "split", 0) == 0.25, "step 1")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            shares, on_student = [], set()
            for r in range(12):
                sides = _round(url, client, 1000 + r)
                now_on = {u for u, side in sides.items() if side == "v0001"}
                assert on_student <= now_on  # users who met the student stay with it as the share grows
                on_student = now_on
                assert runtime.capture.flush(60)
                apply_rewards(db, s.scoring)
                status = canary.status(db, s)
                acted = canary.tick(db, s)
                shares.append([a.decision for a in acted])
                if any(a.decision == "promote" for a in acted):
                    break
                if acted:
                    share = get_alias(db).split
                    wait_for(lambda share=share: runtime.aliases["learnloop"].split == share, "the step")
                    assert status and status[0]["candidate"] == "v0001"
            wait_for(lambda: runtime.aliases["learnloop"].version_id == "v0001", "the promotion")
            assert _round(url, client, 2000, users=5) == {f"user-{i}": "v0001" for i in range(5)}
            runtime.flush_traffic()
            st = httpx.get(f"{url}/v1/status", timeout=60).json()
    decisions = [d for step in shares for d in step]
    assert decisions == ["advance", "advance", "promote"]
    alias = get_alias(db)
    assert (alias.version_id, alias.candidate_id, alias.split) == ("v0001", None, 0.0)
    log = [e for e in reversed(alias_history(db, "learnloop")) if e["actor"] == "canary"]
    assert [(e["action"], e["to"]) for e in log] == [("split", "v0001")] * 3 + [("promote", "v0001")]
    assert "canary step 2/3: 60% of users" in log[1]["reason"] and "live reward" in log[1]["reason"]
    assert get_version(db, "v0001").state == "serving"
    with db.read_session() as session:
        kinds = [
            e.kind
            for e in session.scalars(select(Event).where(Event.kind.like("canary.%")).order_by(Event.id))
        ]
    assert kinds == ["canary.started", "canary.step", "canary.step", "canary.finished"]
    # Status: each target's share, and the cost the student saved against the teacher's price.
    (traffic,) = st["traffic"]
    targets = {t["target"]: t for t in traffic["targets"]}
    assert set(targets) == {"upstream:teacher", "v0001"}
    assert traffic["own_requests"] == targets["v0001"]["requests_all_time"] > 0
    per_request = (
        targets["upstream:teacher"]["cost_all_time"] / targets["upstream:teacher"]["requests_all_time"]
    )
    saved = traffic["own_requests"] * per_request - targets["v0001"]["cost_all_time"]
    assert traffic["cost_saved"] == pytest.approx(saved, rel=1e-6) and saved > 0
    # `learnloop status` renders the same figures.
    from rich.console import Console

    from learnloop.cli.watch import render_status

    console = Console(width=200, record=True)
    console.print(render_status(st))
    text = console.export_text()
    assert "upstream:teacher" in text and f"saved {traffic['cost_saved']:.4g}" in text
    # A person can still take the alias back to the teacher: a rollback walks back to it.
    from learnloop.registry import rollback

    assert rollback(db, s, alias="learnloop", actor="test") == "upstream:teacher"
    assert get_alias(db).version_id == "upstream:teacher" and get_version(db, "v0001").state == "archived"


def test_canary_falls_back_to_the_teacher_on_a_live_drop(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    hooks: list[dict[str, Any]] = []
    hook_app = FastAPI()

    @hook_app.post("/hook")
    async def hook(request: Request) -> dict[str, bool]:
        hooks.append(await request.json())
        return {"ok": True}

    with db.session() as session:
        session.add(version_row("v0002", "base-model", adapter_folder(tmp_path, "v0002")))
    with teacher_server() as up, live_server(hook_app) as hook_url:
        s = _settings(settings, up.url, canary=CANARY)
        rule = {"name": "canary", "when": "canary_fallback", "url": f"{hook_url}/hook"}
        alerting = Settings(**{**s.model_dump(), "alerts": [rule]})
        alerts.evaluate(db, alerting)  # alerting watches from now on
        move(db, s, "learnloop", "set", "upstream:teacher", actor="test")
        canary.start(db, s, "learnloop", "v0002")
        with gateway(s, db, backend=StudentBackend(right=False)) as (url, runtime):
            wait_for(lambda: getattr(runtime.aliases.get("learnloop"), "split", 0) == 0.25, "step 1")
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            acted: list[Any] = []
            for r in range(10):
                _round(url, client, 3000 + r)
                assert runtime.capture.flush(60)
                apply_rewards(db, s.scoring)
                acted = canary.tick(db, s)
                if acted:
                    break
            assert [a.decision for a in acted] == ["fall_back"]
            wait_for(lambda: runtime.aliases["learnloop"].candidate_id is None, "the fall-back")
            sides = _round(url, client, 4000)
            assert set(sides.values()) == {"upstream:teacher"}  # every user is back on the teacher
        alias = get_alias(db)
        assert (alias.version_id, alias.candidate_id, alias.split) == ("upstream:teacher", None, 0.0)
        last = alias_history(db, "learnloop")[0]
        assert last["actor"] == "canary" and last["action"] == "split" and last["to"] is None
        assert last["reason"].startswith("canary fell back: live reward -") and "for sure" in last["reason"]
        assert get_version(db, "v0002").state == "archived"
        with db.read_session() as session:
            (event,) = session.scalars(select(Event).where(Event.kind == "canary.fell_back"))
            assert event.level == "error" and event.version_id == "v0002"
        assert alerts.evaluate(db, alerting) == [f"canary:canary:{event.id}"]
        assert alerts.deliver(db, alerting) == {"sent": 1, "retry": 0, "failed": 0}
    (payload,) = hooks
    assert payload["when"] == "canary_fallback" and "fell back" in payload["text"]
    assert canary.active(db, "learnloop") is None and canary.tick(db, s) == []
