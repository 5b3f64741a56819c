"""`learnloop demo --quick` end to end: a real server and daemon in a subprocess, the tiny model, SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api_support import cli_env
from learnloop.demo.task import SCENARIO, cases, check, expected_from_message
from learnloop.store.db import Database
from learnloop.store.models import AliasEvent, Evaluation, Job, JobState, ModelVersion, Source, Trajectory


def test_task_verifier_recovers_every_case_and_grades_answers() -> None:
    for case in cases(3, 300):
        assert expected_from_message(case.message) == case.answer
        assert check(case.message, case.teacher_answer()) == 1.0
    case = cases(4, 1)[0]
    wrong_city = dict(case.answer, city="Nowhere")
    assert check(case.message, json.dumps(wrong_city)) == 0.5 * 3 / 4
    assert check(case.message, "```json\n" + case.teacher_answer() + "\n```") == 0.0
    assert check(case.message, "Sure! Here is the order.") == 0.0


def test_quick_demo_runs_every_stage_of_the_loop(tmp_path: Path) -> None:
    """The app talks to `learnloop` only: the teacher upstream answers first (captured as teacher data),
    the loop trains on it, the gate checks the student against the teacher, the canary moves the users
    over in its steps and the student ends up answering everyone."""
    data = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "learnloop", "demo", "--quick", "--json", "--data-dir", str(data)],
        env=cli_env(tmp_path / "unused"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:] + (data / "serve.log").read_text()[-3000:]
    report = json.loads(out.stdout)
    promoted = report["promoted"]
    assert promoted and report["after"]["n"] == 8 and report["before"]["n"] == 4
    assert Path(report["plot"]).stat().st_size > 10_000
    # The app's requests moved from the teacher to the student; the report says what that saved.
    shares = report["share_over_time"]
    assert shares[0]["teacher_share"] == 1.0 and shares[-1]["by_target"].get(promoted, 0) >= 8
    assert (
        report["gate"]["baseline"] == "upstream:teacher"
        and report["gate"]["cost_per_1k_requests_baseline"] > 0
    )
    assert report["cost"]["cost_saved"] > 0 and report["cost"]["own_requests"] >= 8
    whats = [row["what"] for row in report["timeline"]]
    assert any(w.startswith(f"canary: {promoted} answers 50%") for w in whats)

    db = Database(f"sqlite:///{data / 'learnloop.db'}")
    with db.read_session() as s:
        by_source = dict(
            s.execute(
                select(Trajectory.source, func.count())
                .where(Trajectory.scenario == SCENARIO)
                .group_by(Trajectory.source)
            ).all()
        )
        assert by_source[Source.teacher] >= 60  # the backfill, plus the sampled answers the proxy kept
        proxied = s.scalar(select(func.count()).where(Trajectory.model_version == "upstream:teacher"))
        assert proxied >= 1
        served_by_promoted = s.scalar(select(func.count()).where(Trajectory.model_version == promoted))
        assert served_by_promoted >= 8  # every fresh case after the swap was answered by it
        jobs = s.scalars(select(Job)).all()
        assert any(j.state == JobState.succeeded for j in jobs)
        version = s.get(ModelVersion, promoted)
        assert version is not None and version.ever_served and version.loop == "orders"
        ev = s.scalars(select(Evaluation).where(Evaluation.candidate_id == promoted)).first()
        assert ev is not None and ev.baseline_id == "upstream:teacher" and ev.metrics["against"] == "teacher"
        moves = s.scalars(
            select(AliasEvent).where(AliasEvent.alias == "learnloop").order_by(AliasEvent.id)
        ).all()
        assert [(m.action, m.to_version, m.actor) for m in moves] == [
            ("set", "upstream:teacher", moves[0].actor),
            ("split", promoted, "canary"),
            ("split", promoted, "canary"),
            ("promote", promoted, "canary"),
        ]
    db.dispose()


@pytest.mark.slow
def test_quick_demo_without_a_teacher_learns_from_the_verifier_alone(tmp_path: Path) -> None:
    """`demo --quick --no-teacher`: no teacher and no backfill; the app's requests go to the base model
    through `learnloop`, are captured as served traffic (one answer each), and an RFT loop samples its
    own answers to those prompts, scores them with the app's `@reward` verifier, trains, gates the
    candidate against the base and promotes it. The budget is generous: this checks what happens, not
    how fast on a shared machine."""
    data = tmp_path / "demo"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "learnloop",
            "demo",
            "--quick",
            "--no-teacher",
            "--json",
            "--budget",
            "20",
            "--data-dir",
            str(data),
        ],  # fmt: skip
        env=cli_env(tmp_path / "unused"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:] + (data / "serve.log").read_text()[-3000:]
    report = json.loads(out.stdout)
    promoted = report["promoted"]
    assert report["teacher"] is False and report["algorithm"] == "rft"
    assert promoted and report["before"]["n"] == 4 and report["after"]["n"] == 8
    assert "ci95" in report["before"] and "ci95" in report["after"]
    first = report["cycles"][0]
    assert first["state"] == "succeeded" and first["gate"] == "promote" and first["promoted"] is True
    assert first["examples"] >= 8 and first["steps"] == 2
    assert report["gate"] is not None and report["gate"]["baseline"] == "base"
    whats = [row["what"] for row in report["timeline"]]
    assert "server up: `learnloop` serves base" in whats and f"{promoted} serves every user" in whats

    db = Database(f"sqlite:///{data / 'learnloop.db'}")
    with db.read_session() as s:
        by_source = dict(
            s.execute(
                select(Trajectory.source, func.count())
                .where(Trajectory.scenario == SCENARIO)
                .group_by(Trajectory.source)
            ).all()
        )
        assert Source.teacher not in by_source and by_source[Source.served] >= 8  # no teacher, no backfill
        job = s.get(Job, first["job_id"])
        assert job.payload["loop"] == "orders"
        config = json.loads((Path(job.result["adapter_dir"]).parent / "job-config.json").read_text())
        assert config["algorithm"] == "rft" and config["rollout"]["rewards"] == ["order_json"]
        assert s.get(ModelVersion, promoted).algorithm == "rft"
        moves = s.scalars(
            select(AliasEvent).where(AliasEvent.alias == "learnloop").order_by(AliasEvent.id)
        ).all()
        # `alias set learnloop base` records no version (the base model), then the promotion.
        assert [(m.action, m.to_version) for m in moves][:2] == [("set", None), ("promote", promoted)]
    db.dispose()
