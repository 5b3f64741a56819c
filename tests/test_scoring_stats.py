"""Reward statistics and the `learnloop rewards apply|stats|list` commands."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import learnloop
from helpers import chat
from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.scoring import registry as reg
from learnloop.scoring import reward_stats, summarize
from learnloop.store import Database, ingest, parse_batch

DAY1 = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
DAY2 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC)


def test_summarize() -> None:
    s = summarize([-1.0, 0.0, 0.5, 1.0, 2.0])
    assert s["count"] == 5 and s["mean"] == pytest.approx(0.5)
    assert s["p50"] == 0.5 and s["p10"] == pytest.approx(-0.6) and s["p90"] == pytest.approx(1.6)
    assert s["share_negative"] == pytest.approx(0.2)
    assert summarize([3.0])["p10"] == 3.0
    assert summarize([])["mean"] is None


def test_reward_stats_groups(db: Database) -> None:
    def t(tid: str, scenario: str, source: str, when: dt.datetime, scores: dict) -> dict:
        return {
            "id": tid,
            "scenario": scenario,
            "source": source,
            "created_at": when.isoformat(),
            "messages": chat("q", "a"),
            "scores": scores,
        }

    with db.session() as s:
        ingest(
            s,
            parse_batch(
                {
                    "trajectories": [
                        t("a", "math", "production", DAY1, {"correct": 1.0, "style": 0.0}),
                        t("b", "math", "production", DAY2, {"correct": -1.0}),
                        t("c", "chat", "served", DAY2, {"correct": 0.5}),
                    ],
                    "scores": [{"trajectory_id": "c", "name": "correct", "value": 0.9, "source": "judge"}],
                }
            ),
        )
    with db.read_session() as s:
        data = reward_stats(s)
        weighted = reward_stats(s, weights={"style": 0.0})
        only_math = reward_stats(s, scenario="math")
        recent = reward_stats(s, since=DAY2)
    assert data["overall"]["count"] == 3
    by_scenario = {r["scenario"]: r for r in data["by_scenario"]}
    assert by_scenario["math"]["mean"] == pytest.approx((0.5 + -1.0) / 2)
    assert by_scenario["math"]["share_negative"] == 0.5
    assert by_scenario["chat"]["mean"] == pytest.approx(0.9)  # the newest score of an aspect wins
    assert {r["source"]: r["count"] for r in data["by_source"]} == {"production": 2, "served": 1}
    assert {r["day"]: r["count"] for r in data["by_day"]} == {"2026-11-01": 1, "2026-11-02": 2}
    assert {r["score_source"]: r["count"] for r in data["by_score_source"]} == {"env": 3, "judge": 1}
    assert {r["aspect"]: r["count"] for r in data["by_aspect"]} == {"correct": 3, "style": 1}
    assert {r["scenario"]: r["mean"] for r in weighted["by_scenario"]}["math"] == pytest.approx(0.0)
    assert [r["scenario"] for r in only_math["by_scenario"]] == ["math"]
    assert recent["overall"]["count"] == 2


@pytest.fixture
def env(db: Database, settings: Settings) -> dict[str, str]:
    return {"LEARNLOOP_DATABASE_URL": db.url, "LEARNLOOP_DATA_DIR": str(settings.data_dir)}


def test_cli_apply_and_stats(db: Database, env: dict[str, str], tmp_path: Path) -> None:
    saved = dict(reg._REGISTRY)
    try:
        with db.session() as s:
            ingest(
                s,
                parse_batch(
                    {
                        "trajectories": [
                            {
                                "id": "a",
                                "scenario": "s",
                                "messages": chat("q", "I'm sorry, but I can't help with that."),
                                "feedback": {"thumbs": "down"},
                            },
                            {
                                "id": "b",
                                "scenario": "s",
                                "messages": chat("q", "Sure: 42"),
                                "feedback": {"rating": 5},
                            },
                        ]
                    }
                ),
            )
        plugin = tmp_path / "plugin_rewards.py"
        plugin.write_text(
            "import learnloop.scoring as s\n"
            "@s.reward('has_digit')\ndef has_digit(t):\n"
            "    return float(any(c.isdigit() for c in t.completion))\n"
            "@s.reward('explodes')\ndef explodes(t):\n    raise ValueError('bad input ' + t.id)\n"
        )
        runner = CliRunner()
        r = runner.invoke(cli, ["rewards", "apply", "--module", str(plugin)], env=env)
        assert r.exit_code == 0, r.output
        assert "has_digit" in r.stdout and "feedback: 2 scores stored" in r.stdout
        assert "explodes (v1) on trajectory a: ValueError: bad input a" in r.stderr

        r = runner.invoke(cli, ["rewards", "apply", "--module", str(plugin), "--json"], env=env)
        data = json.loads(r.stdout)
        # Only the broken function is retried; everything else was already scored.
        assert data["heuristics"]["scored"] == 0 and data["heuristics"]["failed"] == 2
        assert data["feedback"]["scored"] == 0 and data["feedback"]["already_scored"] == 2

        r = runner.invoke(cli, ["rewards", "stats", "--json"], env=env)
        assert r.exit_code == 0, r.output
        stats = json.loads(r.stdout)
        assert stats["overall"]["count"] == 2
        assert {a["aspect"] for a in stats["by_aspect"]} >= {"feedback", "no_refusal", "has_digit", "length"}
        assert {row["score_source"] for row in stats["by_score_source"]} == {"heuristic", "human"}
        r = runner.invoke(cli, ["rewards", "stats"], env=env)
        assert r.exit_code == 0 and "by scenario" in r.stdout

        r = runner.invoke(cli, ["rewards", "apply", "--only", "nope"], env=env)
        assert r.exit_code == 1 and "Unknown reward function(s): nope" in r.output
    finally:
        reg._REGISTRY.clear()
        reg._REGISTRY.update(saved)


def test_cli_in_a_real_process(settings: Settings, tmp_path: Path) -> None:
    root = Path(learnloop.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env |= {"PYTHONPATH": str(root), "LEARNLOOP_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run(
        [sys.executable, "-m", "learnloop", "rewards", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == ["json_schema", "json_valid", "length", "no_refusal", "refinement", "tool_success"]
    out = subprocess.run(
        [sys.executable, "-m", "learnloop", "rewards", "stats"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "no scored trajectories yet" in out.stdout
