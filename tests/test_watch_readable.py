"""The dashboard as a person reads it: a cycle's stage, named evaluation columns, what a version's state
means, charts with axis titles on one scale, this server's processes only, the Serve box without a
model, and an empty state that says what to do next."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient
from watch_support import seed_loop, seed_trajectories

from learnloop.api.app import create_app
from learnloop.config import Settings
from learnloop.config.loops import LoopConfig
from learnloop.store.db import Database
from learnloop.store.models import Evaluation, Job, Trajectory

PAGES = ["/", "/trajectories", "/rewards", "/datasets", "/jobs", "/versions", "/serving", "/quality"]
NO_MODEL = "No base model to serve: run `learnloop models prepare smollm2`, or set serving.base_model."


def client(settings: Settings, db: Database, **kw: object) -> TestClient:
    return TestClient(create_app(settings, db, watch_inbox=False, **kw))


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def _empties(page: str) -> list[str]:
    return [_text(m) for m in re.findall(r'<div class="empty"[^>]*>(.*?)</div>', page, re.S)]


def _charts(page: str) -> list[dict]:
    return [json.loads(html.unescape(m)) for m in re.findall(r'data-chart="([^"]*)"', page)]


def test_every_empty_state_says_the_next_step(settings: Settings, db: Database) -> None:
    c = client(settings, db, serving_off_reason=NO_MODEL)
    seen = {}
    for page in PAGES:
        body = c.get(page).text
        for text in _empties(body):
            # A next step: a command to run, a setting to add, or where the data comes from.
            assert ":" in text or "`" in text, (page, text)
            seen[text] = page
        for spec in _charts(body):
            assert ":" in spec.get("empty", ":"), (page, spec)
    home = _text(c.get("/").text)
    assert "No loops configured: add a [[loops]] entry to learnloop.toml (see learnloop.example.toml)" in home
    assert any(t.startswith("No jobs yet: configure a [[loops]] entry") for t in seen)
    assert any("point your app's OpenAI client at this server's /v1" in t for t in seen)

    with_loop = settings.model_copy(update={"loops": [LoopConfig(name="qa", scenario="qa")]})
    home = _text(client(with_loop, db).get("/").text)
    assert "1 loop(s) configured, not checked yet" in home and "No loops configured" not in home


def test_the_serve_box_says_when_no_model_is_loaded(settings: Settings, db: Database) -> None:
    c = client(settings, db, serving_off_reason=NO_MODEL)
    body = c.get("/").text
    serve = re.search(r'data-stage="serve" data-state="(\w+)">(.*?)</a>', body, re.S)
    assert serve and serve.group(1) == "warn", body
    assert "no model prepared: /v1 answers 503" in _text(serve.group(2))
    assert "base model" not in _text(serve.group(2))
    assert "no model" in _text(re.search(r'id="kpi-serving">(.*?)</div></div>', body, re.S).group(1))
    assert c.post("/v1/chat/completions", json={"model": "learnloop", "messages": []}).status_code == 503
    assert "its OpenAI routes are off (No base model to serve" in _text(c.get("/serving").text)


def test_a_cycle_job_shows_its_stage_not_a_finished_training_bar(settings: Settings, db: Database) -> None:
    ids = seed_loop(db)
    with db.session() as s:
        job = s.get(Job, ids["running"])
        # Training is over (80/80) and the cycle evaluates: the page says so, with no ETA of 0 s.
        job.progress = {
            "step": 80,
            "total_steps": 80,
            "eta_s": 0.0,
            "stage": "evaluating",
            "stage_done": 3,
            "stage_total": 8,
        }
    c = client(settings, db)
    page = _text(c.get(f"/jobs/{ids['running']}").text)
    assert "stage evaluating 3/8" in page and "ETA" not in page, page
    assert "evaluating 3/8" in _text(c.get("/jobs").text)
    assert f"job {ids['running']} running · evaluating 3/8" in _text(c.get("/").text)
    api = c.get(f"/v1/jobs/{ids['running']}").json()
    assert api["stage"] == "evaluating" and api["stage_label"] == "evaluating" and api["eta_s"] is None
    # Priority by its name, wherever the queue is shown.
    jobs = _text(c.get("/jobs").text)
    assert "high" in jobs and "normal" in jobs and re.search(r"#\d+ evaluate 10\b", jobs) is None


def test_the_evaluation_table_names_its_columns_and_folds_long_reasons(
    settings: Settings, db: Database
) -> None:
    seed_loop(db)
    reasons = [f"reason {i}: " + "x" * 40 for i in range(4)]
    with db.session() as s:
        s.add(
            Evaluation(
                candidate_id="v0003",
                baseline_id="v0002",
                verdict="reject",
                metrics={
                    "n": 40,
                    "reward_candidate": 0.5,
                    "overall": {
                        "n": 40,
                        "reward_candidate": 0.5,
                        "reward_baseline": 0.625,
                        "reward_diff": -0.125,
                        "reward_diff_ci": [-0.2, -0.05],
                        "wins": 10,
                        "ties": 5,
                        "losses": 25,
                        "latency_p95_candidate_ms": 812.4,
                        "latency_p95_baseline_ms": 790.0,
                    },
                },
                gate={"reasons": reasons},
            )
        )
    body = client(settings, db).get("/versions").text
    table = body[body.index('<table class="evals">') :]
    table = table[: table.index("</table>")]
    heads = [_text(h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    assert heads[4:10] == [
        "Examples",
        "Reward (candidate)",
        "Reward (baseline)",
        "Difference [95% CI]",
        "Wins / ties / losses",
        "p95 latency",
    ]
    row = _text(table.split("</tr>")[1])
    assert "40 0.500 0.625 -0.125 [-0.200, -0.050] 10 / 5 / 25 812 / 790 ms" in row, row
    assert "<details><summary>reason 0" in table and "(+3)" in table  # four reasons fold out
    assert 'href="/versions/v0003"' in table  # the candidate links to its page
    # Every state's meaning, as the README gives it.
    assert (
        'title="an alias serves it now (its version, or its A/B candidate with a share of the '
        'traffic)">serving' in body
    )
    assert (
        'title="it served before and no alias serves it now; rollback or restore can bring it back">archived'
        in body
    )
    legend = _text(body[body.index('id="state-legend"') :].split("</p>")[0])
    for state in ("serving", "archived", "rejected", "candidate"):
        assert state in legend


def test_every_chart_has_axis_titles_and_one_scale(settings: Settings, db: Database) -> None:
    seed_trajectories(db)
    ids = seed_loop(db)
    c = client(settings, db)
    specs = {p: _charts(c.get(p).text) for p in [*PAGES, f"/jobs/{ids['running']}"]}
    assert sum(len(v) for v in specs.values()) >= 6
    for page, charts in specs.items():
        for spec in charts:
            assert spec.get("x_label") and spec.get("y_label"), (page, spec)
    (quality,) = specs["/quality"]
    # The reward axis carries rewards only: the evaluations' reward lines, not their example counts.
    assert quality["y_label"] == "mean reward"
    names = [s["name"] for s in quality["series"] if s["points"]]
    assert names and all("reward" in n for n in names), names
    assert all(
        isinstance(p[1], float) and -1.5 <= p[1] <= 1.5 for s in quality["series"] for p in s["points"]
    )


def test_served_latency_comes_from_the_captured_answers(settings: Settings, db: Database) -> None:
    from sqlalchemy import update

    from learnloop.store.records import parse_batch
    from learnloop.store.trajectories import ingest

    seed_trajectories(db)
    # An answer an upstream gave through this server: captured as teacher data, with its latency.
    item = {
        "id": "t-upstream-1",
        "source": "teacher",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "metadata": {"latency_ms": 120.0},
    }
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": [item]}))
    with db.session() as s:
        s.execute(
            update(Trajectory).where(Trajectory.id == "t-upstream-1").values(model_version="upstream:teacher")
        )
    body = _text(client(settings, db).get("/serving").text)
    assert "upstream:teacher 1 120 ms 120 ms" in body, body
    assert "– ms" not in body


def test_health_lists_this_servers_processes_only(settings: Settings, db: Database, tmp_path: Path) -> None:
    sleep = "import time; time.sleep(60)"
    # A learnloop daemon of someone else on this host: started by a shell that exits, so not ours.
    marker = tmp_path / "pid"
    subprocess.run(
        ["sh", "-c", f"{sys.executable} -c '{sleep}' learnloop daemon & echo $! > {marker}"], check=True
    )
    stranger = int(marker.read_text())
    ours = subprocess.Popen([sys.executable, "-c", sleep, "-m", "learnloop.training.run"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(stranger).ppid() == psutil.Process().pid and time.monotonic() < deadline:
            time.sleep(0.1)
        procs = {p["pid"]: p for p in client(settings, db).get("/v1/status").json()["host"]["processes"]}
        assert stranger not in procs, procs
        assert procs[ours.pid]["role"] == "training"
        assert [p["role"] for p in procs.values() if p["self"]] == ["server"]
    finally:
        ours.kill()
        ours.wait()
        psutil.Process(stranger).kill()


@pytest.mark.parametrize("stage", ["dataset", "registering", "gate", "promoting"])
def test_every_cycle_stage_reads_as_words(settings: Settings, db: Database, stage: str) -> None:
    from learnloop.daemon.queue import STAGES

    ids = seed_loop(db)
    with db.session() as s:
        s.get(Job, ids["running"]).progress = {"step": 80, "total_steps": 80, "stage": stage}
    page = _text(client(settings, db).get(f"/jobs/{ids['running']}").text)
    assert f"stage {STAGES[stage]}" in page
