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

    db = Database(f"sqlite:///{data / 'learnloop.db'}")
    with db.read_session() as s:
        by_source = dict(
            s.execute(
                select(Trajectory.source, func.count())
                .where(Trajectory.scenario == SCENARIO)
                .group_by(Trajectory.source)
            ).all()
        )
        assert by_source[Source.teacher] >= 60  # the backfill, plus the sampled live teacher answers
        assert by_source[Source.served] >= 4 + 8
        served_by_promoted = s.scalar(select(func.count()).where(Trajectory.model_version == promoted))
        assert served_by_promoted >= 8  # every fresh case after the swap was answered by it
        jobs = s.scalars(select(Job)).all()
        assert any(j.state == JobState.succeeded for j in jobs)
        version = s.get(ModelVersion, promoted)
        assert version is not None and version.ever_served and version.loop == "orders"
        assert s.scalar(select(func.count()).where(Evaluation.candidate_id == promoted)) >= 1
        moves = s.scalars(select(AliasEvent).where(AliasEvent.to_version == promoted)).all()
        assert len(moves) == 1 and moves[0].action == "promote"
    db.dispose()
