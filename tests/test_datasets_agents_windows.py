"""Agents and capture windows in dataset filters, `learnloop stats` and `learnloop datasets windows`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import chat
from learnloop.cli import main as cli_main
from learnloop.datasets import build_dataset, parse_filters
from learnloop.datasets.windows import list_windows
from learnloop.errors import ValidationFailed
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.trajectories import stats


def _traj(
    tid: str, window: str, agent: str | None, *, score: float | None = 1.0, group: str | None = None
) -> dict:
    item: dict = {"id": tid, "window": window, "messages": chat(f"question {tid}", f"answer {tid} " * 3)}
    if agent:
        item["agent"] = agent
    if score is not None:
        item["scores"] = {"ok": score}
    if group:
        item["group"] = group
    return item


def _fill(db: Database) -> None:
    with db.session() as s:
        ingest(
            s,
            parse_batch(
                {
                    "trajectories": [
                        # 2026-12-02T10: three agents; T11: one agent (twice);
                        # T12: two agents, nothing scored.
                        _traj("a1", "2026-12-02T10", "planner"),
                        _traj("a2", "2026-12-02T10", "coder"),
                        _traj("a3", "2026-12-02T10", "critic"),
                        _traj("b1", "2026-12-02T11", "planner"),
                        _traj("b2", "2026-12-02T11", "planner"),
                        _traj("c1", "2026-12-02T12", "planner", score=None),
                        _traj("c2", "2026-12-02T12", "coder", score=None),
                    ]
                }
            ),
            holdout_fraction=0.0,
        )


def test_agent_and_min_agents_filters(db: Database, settings) -> None:
    _fill(db)
    s = settings
    info = build_dataset(db, "sft", {"agents": ["coder"], "min_reward": 0.5}, settings=s)
    assert info.count == 1  # c2 is unscored
    info = build_dataset(db, "sft", {"min_agents": 3, "dedup": False}, settings=s)
    assert info.count == 3  # only window T10 (a1..a3)
    info = build_dataset(db, "sft", {"min_agents": 2, "dedup": False}, settings=s)
    assert info.count == 5  # T10 and T12; T11 had one agent
    with pytest.raises(ValidationFailed, match="no rows matched"):  # one agent left in every window
        build_dataset(db, "sft", {"min_agents": 2, "agents": ["planner"], "dedup": False}, settings=s)
    assert parse_filters({"min_agents": 2, "agents_per": "group"}).agents_per == "group"


def test_min_agents_per_group(db: Database, settings) -> None:
    with db.session() as s:
        ingest(
            s,
            parse_batch(
                {
                    "trajectories": [
                        _traj("g1", "w", "planner", group="task-1"),
                        _traj("g2", "w", "coder", group="task-1"),
                        _traj("h1", "w", "planner", group="task-2"),
                        _traj("h2", "w", "planner", group="task-2"),
                    ]
                }
            ),
            holdout_fraction=0.0,
        )
    info = build_dataset(
        db, "sft", {"min_agents": 2, "agents_per": "group", "dedup": False}, settings=settings
    )
    answers = {json.loads(line)["messages"][-1]["content"].split()[1] for line in open(info.path)}
    assert answers == {"g1", "g2"}


def test_windows_listing_and_readiness(db: Database) -> None:
    _fill(db)
    with db.read_session() as s:
        rows = {w.window: w for w in list_windows(s, min_agents=2)}
    assert list(rows) == ["2026-12-02T12", "2026-12-02T11", "2026-12-02T10"]
    t10, t11, t12 = rows["2026-12-02T10"], rows["2026-12-02T11"], rows["2026-12-02T12"]
    assert (t10.trajectories, t10.agents, t10.scored, t10.ready) == (3, 3, 3, True)
    assert (t11.trajectories, t11.agents, t11.scored, t11.ready) == (2, 1, 2, False) and t11.reasons == [
        "1 agents (needs 2)"
    ]
    assert (t12.trajectories, t12.agents, t12.scored, t12.ready) == (2, 2, 0, False) and t12.reasons == [
        "0 scored (needs 1)"
    ]
    with db.read_session() as s:
        only = list_windows(s, parse_filters({"agents": ["coder"]}))
    assert [(w.window, w.trajectories, w.ready) for w in only] == [
        ("2026-12-02T12", 1, False),
        ("2026-12-02T10", 1, True),
    ]


def test_stats_by_agent(db: Database) -> None:
    _fill(db)
    with db.read_session() as s:
        data = stats(s)
        only = stats(s, agent="coder")
    assert {"agent": "planner", "count": 4} in data["by_agent"]
    assert {"agent": "coder", "count": 2} in data["by_agent"]
    assert sum(r["count"] for r in only["by_source"]) == 2 and only["by_agent"] == [
        {"agent": "coder", "count": 2}
    ]


def test_cli_windows_and_stats(db: Database, settings, monkeypatch) -> None:
    # Through the environment, as a user would
    # (patching cli.main.settings would stick in modules importing it).
    monkeypatch.setenv("LEARNLOOP_DATABASE_URL", db.url)
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(settings.data_dir))
    _fill(db)
    runner = CliRunner()
    out = runner.invoke(cli_main.cli, ["datasets", "windows", "--json", "--min-agents", "2"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert all({"window", "trajectories", "agents", "scored", "ready"} <= set(r) for r in rows)
    table = runner.invoke(cli_main.cli, ["datasets", "windows"])
    assert table.exit_code == 0 and "2026-12-02T1" in table.output
    st = runner.invoke(cli_main.cli, ["stats", "--json", "--agent", "planner"])
    assert st.exit_code == 0 and json.loads(st.output)["by_agent"] == [{"agent": "planner", "count": 4}]


def test_imports_and_the_api_assign_windows_too(db: Database, tmp_path) -> None:
    from learnloop.store.jsonl import import_jsonl
    from learnloop.windows import fill_windows

    path = tmp_path / "day.jsonl"
    path.write_text(
        json.dumps({"id": "j1", "messages": chat("q1", "a1"), "created_at": "2026-11-05T08:59:00Z"})
        + "\n"
        + json.dumps({"id": "j2", "messages": chat("q2", "a2"), "window": "mine"})
        + "\n"
    )
    import_jsonl(db, path, window="1d")
    with db.read_session() as s:
        from learnloop.store.models import Trajectory

        got = {r.id: r.window_id for r in s.query(Trajectory).all()}
    assert got == {"j1": "2026-11-05", "j2": "mine"}
    recs = [{"created_at": "2026-11-05T08:59:00+00:00"}, {"window": "keep"}, {}]
    fill_windows(recs, "1h")
    assert (
        recs[0]["window"] == "2026-11-05T08"
        and recs[1]["window"] == "keep"
        and recs[2]["window"].startswith("20")
    )
