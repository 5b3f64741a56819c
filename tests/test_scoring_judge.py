"""The LLM judge against a real local HTTP server speaking the OpenAI chat-completions protocol.

The server (FastAPI in uvicorn on 127.0.0.1) is the one stand-in: a remote paid judge cannot
run here. Each test scripts its answers: good JSON, a wrong count, garbage, HTTP 500, a stall.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import delete, func, select

from helpers import chat
from learnloop.cli.main import cli
from learnloop.config import ScoringSettings, Settings
from learnloop.errors import ConfigError, NotFound
from learnloop.scoring import JudgeError, judge_scenario
from learnloop.scoring.judge import parse_judgment
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Judgment, Score, ScoreSource

Action = Callable[[dict[str, Any]], Any]


def n_candidates(body: dict[str, Any]) -> int:
    return int(re.search(r"Score all (\d+) candidates", body["messages"][-1]["content"]).group(1))


def good(body: dict[str, Any]) -> str:
    """Scores candidate i as i/10, with a rationale naming it."""
    n = n_candidates(body)
    return json.dumps(
        {
            "scores": [
                {"index": i, "score": i / 10, "rationale": f"candidate {i} is fine"} for i in range(1, n + 1)
            ]
        }
    )


def wrong_count(body: dict[str, Any]) -> str:
    return json.dumps({"scores": [{"index": 1, "score": 0.5, "rationale": "only one"}]})


def garbage(body: dict[str, Any]) -> str:
    return "Candidate 1 is clearly the best, followed by 2."


def status(code: int) -> Action:
    return lambda body: JSONResponse({"error": {"message": "overloaded"}}, status_code=code)


def stall(seconds: float) -> Action:
    def act(body: dict[str, Any]) -> str:
        time.sleep(seconds)
        return good(body)

    return act


class ScriptedJudge:
    def __init__(self) -> None:
        self.script: deque[Action] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        def completions(
            body: dict[str, Any], request: Request
        ) -> Any:  # sync: a stall blocks only its thread
            with self.lock:
                self.requests.append(body)
                self.headers.append(dict(request.headers))
                action = self.script.popleft() if self.script else good
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                out = action(body)
            finally:
                with self.lock:
                    self.in_flight -= 1
            if isinstance(out, str):
                return {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": out},
                        }
                    ],
                }
            return out

    def reset(self, *actions: Action) -> None:
        self.script = deque(actions)
        self.requests.clear()
        self.headers.clear()
        self.max_in_flight = 0


@pytest.fixture(scope="module")
def judge_server() -> Iterator[tuple[ScriptedJudge, str]]:
    judge = ScriptedJudge()
    server = uvicorn.Server(uvicorn.Config(judge.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "judge server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield judge, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def judge(judge_server: tuple[ScriptedJudge, str]) -> ScriptedJudge:
    judge_server[0].reset()
    return judge_server[0]


@pytest.fixture
def config(judge_server: tuple[ScriptedJudge, str]) -> ScoringSettings:
    return ScoringSettings(
        judge_base_url=judge_server[1],
        judge_model="judge-1",
        judge_api_key="sk-test",
        judge_retry_backoff=0,
        judge_max_attempts=3,
        judge_timeout=2,
        judge_concurrency=1,  # scripted answers go to groups in a known order; concurrency has its own test
    )


SYSTEM = "You are the support bot of ACME. Answer briefly."


def _store_scenario(db: Database) -> None:
    items = (
        [
            {
                "id": f"a{i}",
                "scenario": "support",
                "messages": chat("How do I reset my password?", f"answer {i}", SYSTEM),
            }
            for i in range(3)
        ]
        + [
            {
                "id": f"b{i}",
                "scenario": "support",
                "group": "g-b",
                "messages": chat(f"Refund order {i}?", f"refund {i}", SYSTEM),
            }
            for i in range(2)
        ]
        + [
            {"id": "lonely", "scenario": "support", "messages": chat("Something unique", "ok", SYSTEM)},
            {
                "id": "other",
                "scenario": "sales",
                "messages": chat("How do I reset my password?", "x", SYSTEM),
            },
        ]
    )
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": items}))


def _judge_scores(db: Database) -> dict[str, Score]:
    with db.read_session() as s:
        return {r.trajectory_id: r for r in s.scalars(select(Score).where(Score.source == ScoreSource.judge))}


def _judgments(db: Database) -> list[dict]:
    with db.read_session() as s:
        return [
            dict(r.result) | {"ids": r.trajectory_ids}
            for r in s.scalars(select(Judgment).order_by(Judgment.id))
        ]


def test_groups_are_judged_relative_and_cached(
    db: Database, judge: ScriptedJudge, config: ScoringSettings
) -> None:
    _store_scenario(db)
    report = judge_scenario(db, "support", config)
    assert (report.groups_judged, report.groups_skipped, report.scores_stored, report.failures) == (
        2,
        1,
        5,
        [],
    )
    assert len(judge.requests) == 2
    scores = _judge_scores(db)
    assert set(scores) == {"a0", "a1", "a2", "b0", "b1"}  # not the singleton, not the other scenario
    # Candidates are numbered in id order; the scripted judge gives candidate i the score i/10.
    assert [scores[t].value for t in ("a0", "a1", "a2")] == [0.1, 0.2, 0.3]
    assert scores["a1"].judge_model == "judge-1" and scores["a1"].rationale == "candidate 2 is fine"

    body = next(r for r in judge.requests if "answer 0" in r["messages"][1]["content"])
    user = body["messages"][1]["content"]
    assert body["model"] == "judge-1" and body["temperature"] == 0.0
    assert user.count(SYSTEM) == 1 and user.count("How do I reset my password?") == 1  # shared context once
    assert [f"## Candidate {i}" in user for i in (1, 2, 3, 4)] == [True, True, True, False]
    assert user.index("answer 0") < user.index("answer 1") < user.index("answer 2")
    assert "strict JSON" in body["messages"][0]["content"]
    assert judge.headers[0]["authorization"] == "Bearer sk-test"

    # Nothing new: no request. Scores lost (e.g. deleted by hand): restored from the cache, still no request.
    assert judge_scenario(db, "support", config).groups_judged == 0 and len(judge.requests) == 2
    with db.session() as s:
        s.execute(delete(Score).where(Score.trajectory_id.in_(["a0", "a1", "a2"])))
    again = judge_scenario(db, "support", config)
    assert (again.groups_cached, again.groups_judged, again.scores_stored) == (1, 0, 3)
    assert len(judge.requests) == 2
    assert _judge_scores(db)["a2"].value == 0.3

    # A new judge model is a new cache key: everything is judged again.
    other = config.model_copy(update={"judge_model": "judge-2"})
    assert judge_scenario(db, "support", other).groups_judged == 2 and len(judge.requests) == 4


@pytest.mark.parametrize(
    "bad", [wrong_count, garbage, status(500)], ids=["wrong-count", "garbage", "http-500"]
)
def test_bad_answer_is_retried(
    db: Database, judge: ScriptedJudge, config: ScoringSettings, bad: Action
) -> None:
    _store_scenario(db)
    judge.reset(bad, good, good)
    report = judge_scenario(db, "support", config)
    assert report.groups_judged == 2 and report.failures == []
    assert len(judge.requests) == 3
    assert sorted(j["attempts"] for j in _judgments(db)) == [1, 2]
    assert len(_judge_scores(db)) == 5


def test_group_fails_whole_after_bounded_retries_then_recovers(
    db: Database, judge: ScriptedJudge, config: ScoringSettings
) -> None:
    _store_scenario(db)
    judge.reset(status(500), garbage, wrong_count)  # the first group fails three times; the second is fine
    report = judge_scenario(db, "support", config)
    assert report.groups_judged == 1 and len(report.failures) == 1
    failure = report.failures[0]
    assert "HTTP 500" in failure.error and "not JSON" in failure.error and "1 scores for" in failure.error
    scores = _judge_scores(db)
    assert not set(failure.trajectory_ids) & set(scores)  # no half of the failed group stored
    assert len(scores) == 5 - len(failure.trajectory_ids)
    failed = [j for j in _judgments(db) if j["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["ids"] == failure.trajectory_ids and failed[0]["attempts"] == 3

    # The failed group is retried on the next run and its judgment turns ok.
    retry = judge_scenario(db, "support", config)
    assert retry.groups_judged == 1 and retry.failures == []
    assert len(_judge_scores(db)) == 5
    assert [j["status"] for j in _judgments(db)] == ["ok", "ok"]


def test_timeout_is_retried(db: Database, judge: ScriptedJudge, config: ScoringSettings) -> None:
    _store_scenario(db)
    judge.reset(stall(1.5), good, good)
    report = judge_scenario(db, "support", config.model_copy(update={"judge_timeout": 0.5}))
    assert report.groups_judged == 2 and report.failures == []
    assert len(_judge_scores(db)) == 5


def test_groups_are_judged_concurrently(db: Database, judge: ScriptedJudge, config: ScoringSettings) -> None:
    items = [
        {"id": f"t{g}-{i}", "scenario": "s", "group": f"g{g}", "messages": chat(f"task {g}", f"answer {i}")}
        for g in range(4)
        for i in range(2)
    ]
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": items}))
    judge.reset(*[stall(0.4)] * 4)
    report = judge_scenario(db, "s", config.model_copy(update={"judge_concurrency": 4}))
    assert report.groups_judged == 4 and report.scores_stored == 8
    assert judge.max_in_flight >= 2


def test_group_size_cut_and_min_size(db: Database, judge: ScriptedJudge, config: ScoringSettings) -> None:
    items = [
        {"id": f"t{i:02d}", "scenario": "s", "messages": chat("same task", f"answer {i}")} for i in range(9)
    ]
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": items}))
    report = judge_scenario(
        db, "s", config.model_copy(update={"judge_group_size": 4, "judge_json_mode": True})
    )
    # 9 candidates in groups of at most 4: 3 + 3 + 3, never a lone leftover.
    assert report.groups_judged == 3 and sorted(n_candidates(r) for r in judge.requests) == [3, 3, 3]
    assert all(r["response_format"] == {"type": "json_object"} for r in judge.requests)


def test_configuration_and_scenario_errors(db: Database, config: ScoringSettings) -> None:
    _store_scenario(db)
    with pytest.raises(ConfigError, match="No LLM judge is configured"):
        judge_scenario(db, "support", ScoringSettings())
    with pytest.raises(NotFound, match="nope"):
        judge_scenario(db, "nope", config)


def test_parse_judgment_variants() -> None:
    fenced = (
        '```json\n{"scores": [{"index": 2, "score": 1, "rationale": "b"}, {"index": 1, "score": 0.0}]}\n```'
    )
    assert parse_judgment(fenced, 2) == [(0.0, ""), (1.0, "b")]
    assert parse_judgment("[0.2, 0.9]", 2) == [(0.2, ""), (0.9, "")]
    with pytest.raises(JudgeError, match="repeated index"):
        parse_judgment('{"scores": [{"index": 1, "score": 0.1}, {"index": 1, "score": 0.2}]}', 2)
    with pytest.raises(JudgeError, match=r"not a number in \[0, 1\]"):
        parse_judgment('{"scores": [{"index": 1, "score": 7}]}', 1)


def test_cli_judge(db: Database, judge: ScriptedJudge, settings: Settings, judge_server) -> None:
    _store_scenario(db)
    runner = CliRunner()
    env = {"LEARNLOOP_DATABASE_URL": db.url, "LEARNLOOP_DATA_DIR": str(settings.data_dir)}
    r = runner.invoke(cli, ["rewards", "judge", "--scenario", "support"], env=env)
    assert r.exit_code == 1 and "No LLM judge is configured" in r.output
    env |= {
        "LEARNLOOP_SCORING__JUDGE_BASE_URL": judge_server[1],
        "LEARNLOOP_SCORING__JUDGE_MODEL": "j",
        "LEARNLOOP_SCORING__JUDGE_RETRY_BACKOFF": "0",
        "LEARNLOOP_SCORING__JUDGE_MAX_ATTEMPTS": "1",
    }
    judge.reset(status(503))
    r = runner.invoke(cli, ["rewards", "judge", "--scenario", "support", "--json"], env=env)
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert data["groups_failed"] == 1 and data["groups_judged"] == 1 and data["scores_stored"] in (2, 3)
    r = runner.invoke(cli, ["rewards", "judge", "--scenario", "support"], env=env)
    assert r.exit_code == 0, r.output
    assert "1 groups judged" in r.output and "0 failed" in r.output
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Score).where(Score.source == ScoreSource.judge)) == 5


def test_the_daemon_judges_its_loops_scenarios_in_the_background(
    db: Database, judge: ScriptedJudge, config: ScoringSettings, settings: Settings
) -> None:
    from learnloop.daemon.service import Daemon
    from learnloop.store.models import Event

    _store_scenario(db)
    data = settings.model_dump()
    data["scoring"] = {**data["scoring"], **config.model_dump()}
    loop = {"name": "support", "algorithm": "sft", "scenario": "support", "sources": ["production"]}
    data["loops"] = [loop]
    data["daemon"] = {**data["daemon"], "judge": True, "score_interval": 0.2, "poll_interval": 0.2}
    daemon = Daemon(Settings.model_validate(data), db, scoring=True)
    thread = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(_judge_scores(db)) < 5:  # nobody calls the judge: the daemon's scorer does
            assert time.monotonic() < deadline, f"no judge scores after 60 s: {judge.requests}"
            time.sleep(0.1)
        time.sleep(1.0)  # several more scoring rounds
    finally:
        daemon.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert set(_judge_scores(db)) == {"a0", "a1", "a2", "b0", "b1"}  # only the loop's scenario, groups of 2+
    assert len(judge.requests) == 2  # each group once, however many rounds ran: the cache holds
    with db.read_session() as s:
        applied = [e.data for e in s.scalars(select(Event).where(Event.kind == "scoring.applied"))]
    assert sum(d["judge"] for d in applied) == 5
