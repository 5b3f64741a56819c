"""`learnloop demo --quick` end to end: a real server and daemon in a subprocess, the tiny model, SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    # The server's log says what changed, once: no repeated trigger lines, the cycle's progress, no chatter.
    log = (data / "serve.log").read_text().splitlines()
    skipped = [ln.split(" trigger.skipped ", 1)[1] for ln in log if " trigger.skipped " in ln]
    assert all(a != b for a, b in zip(skipped, skipped[1:], strict=False)), skipped
    for marker in ("dataset.built", "job.progress", "cycle.evaluating", "cycle.gate"):
        assert any(marker in ln for ln in log), (marker, log)
    assert not [ln for ln in log if "alembic" in ln or "it/s]" in ln or "GET /static/" in ln]
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
