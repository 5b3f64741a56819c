"""Heuristic rewards: built-ins on typical trajectories, the registry, and applying them to the store."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

import learnloop.scoring as scoring
from helpers import chat
from learnloop.config import ScoringSettings
from learnloop.errors import ConfigError
from learnloop.scoring import TrajectoryView, apply_heuristics
from learnloop.scoring import registry as reg
from learnloop.scoring.heuristics import json_schema, json_valid, length, no_refusal, tool_success
from learnloop.store import Database, ingest, parse_batch
from learnloop.store.models import Score, ScoreRun, ScoreSource


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(reg._REGISTRY)
    yield
    reg._REGISTRY.clear()
    reg._REGISTRY.update(saved)


def view(
    answer: str | None,
    *,
    metadata: dict | None = None,
    tags: list | None = None,
    messages: list | None = None,
    config: ScoringSettings | None = None,
) -> TrajectoryView:
    msgs = messages if messages is not None else chat("question", answer or "")
    return TrajectoryView(
        "t", msgs, metadata=metadata or {}, tags=tags or [], config=config or ScoringSettings()
    )


def tool_messages(*results: str) -> list[dict]:
    msgs: list[dict] = [{"role": "user", "content": "do it"}]
    for i, r in enumerate(results):
        msgs.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": "{}"}}
                ],
            }
        )
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": r})
    msgs.append({"role": "assistant", "content": "done"})
    return msgs


# --------------------------------------------------------------------------- built-ins


def test_json_valid() -> None:
    assert json_valid(view('{"a": 1}')) == 1.0
    assert json_valid(view('```json\n{"a": 1}\n```')) == 0.5
    assert json_valid(view('{"a": 1', metadata={"response_format": {"type": "json_object"}})) == 0.0
    assert json_valid(view("Sure! here it is", tags=["json"])) == 0.0
    assert json_valid(view("Plain prose answer.")) is None  # JSON not expected and not attempted
    assert json_valid(view("[1] See the manual.")) is None
    assert json_valid(view('{"a": 1,}')) == 0.0  # attempted, broken


def test_json_schema_inline_named_and_unknown() -> None:
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    assert json_schema(view('{"city": "Oslo"}', metadata={"json_schema": schema})) == 1.0
    assert json_schema(view('{"town": "Oslo"}', metadata={"json_schema": schema})) == 0.0
    assert json_schema(view("not json", metadata={"json_schema": schema})) == 0.0
    assert json_schema(view('{"city": 1}')) is None  # no schema named
    cfg = ScoringSettings(json_schemas={"place": schema})
    assert json_schema(view('{"city": "Oslo"}', tags=["schema:place"], config=cfg)) == 1.0
    assert json_schema(view('{"city": 3}', metadata={"schema": "place"}, config=cfg)) == 0.0
    with pytest.raises(ConfigError, match="'nope' is not registered"):
        json_schema(view("{}", metadata={"schema": "nope"}))


def test_register_schema_from_file_and_bad_schema(tmp_path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"type": "array", "items": {"type": "integer"}}))
    scoring.register_schema("ints", path)
    assert json_schema(view("[1, 2]", tags=["schema:ints"])) == 1.0
    assert json_schema(view('[1, "x"]', tags=["schema:ints"])) == 0.0
    with pytest.raises(ConfigError, match="not a valid schema"):
        scoring.register_schema("bad", {"type": 12})
    with pytest.raises(ConfigError, match="cannot read"):
        scoring.register_schema("missing", tmp_path / "nope.json")


def test_length() -> None:
    cfg = ScoringSettings(length_target_chars=100)
    assert length(view("x" * 100, config=cfg)) == 1.0
    assert length(view("x" * 150, config=cfg)) == pytest.approx(0.5)
    assert length(view("x" * 500, config=cfg)) == 0.0
    assert length(view("x" * 150, metadata={"target_chars": 200}, config=cfg)) == 1.0
    assert length(view(None, messages=[{"role": "user", "content": "hi"}])) is None


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot assist with this request.",
        "As an AI language model, I cannot browse the internet.",
        "I must decline to answer.",
        "I\u2019m sorry, but I can\u2019t share that.",
    ],
)
def test_refusals_detected(answer: str) -> None:
    assert no_refusal(view(answer)) == 0.0


@pytest.mark.parametrize(
    "answer",
    [
        "The capital of France is Paris.",
        "Sorry for the delay! Here is the summary you asked for.",
        "x" * 400 + " I can't help with that part, but the rest is above.",  # past the opening
    ],
)
def test_non_refusals(answer: str) -> None:
    assert no_refusal(view(answer)) == 1.0


def test_structured_refusal_field() -> None:
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "refusal": "no"}]
    assert no_refusal(view(None, messages=msgs)) == 0.0


def test_tool_success() -> None:
    assert tool_success(view(None, messages=tool_messages('{"results": [1, 2]}', "42 rows"))) == 1.0
    assert tool_success(view(None, messages=tool_messages('{"error": "no such city"}', "ok"))) == 0.5
    bad = tool_messages(
        "Traceback (most recent call last):\n  File x",
        '{"status": "failed"}',
        "HTTP 503 Service Unavailable",
        '{"ok": false}',
    )
    assert tool_success(view(None, messages=bad)) == 0.0
    assert tool_success(view("no tools used")) is None


@pytest.mark.parametrize(
    "result, ok",
    [
        ("Error: city not known", False),
        ("exception raised in handler", False),
        ("HTTP 404", False),
        ('{"status_code": 500}', False),
        ("status_code: 502 Bad Gateway", False),
        ("File not found", False),
        ("request timed out after 30s", False),
        ("Status: 200 OK", True),
        ("The HTTP API returned 3 items", True),
        ('{"status": "done", "rows": []}', True),
        ("", True),
        ("Errors are handled upstream; 3 rows", True),
    ],
)
def test_tool_result_classification(result: str, ok: bool) -> None:
    assert scoring.tool_result_ok(result) is ok


# --------------------------------------------------------------------------- registry


def test_decorator_registers_plain_function(clean_registry: None) -> None:
    @scoring.reward("polite", version="2")
    def polite(t: TrajectoryView) -> float | None:
        """Says please."""
        return 1.0 if "please" in t.completion else 0.0

    assert polite(view("please")) == 1.0  # still a plain function
    entry = {f.name: f for f in scoring.registered()}["polite"]
    assert (entry.version, entry.description) == ("2", "Says please.")
    with pytest.raises(ConfigError, match="already registered"):
        scoring.register(lambda t: 0.0, name="polite")
    scoring.register(lambda t: 0.5, name="polite", replace=True)
    with pytest.raises(ConfigError, match="reserved"):
        scoring.register(lambda t: 0.0, name="feedback")
    with pytest.raises(ConfigError, match="Unknown reward function"):
        reg.get(["nope"])


def test_load_module_from_file(clean_registry: None, tmp_path) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "import learnloop.scoring as s\n@s.reward('has_digit')\ndef has_digit(t):\n"
        "    return float(any(c.isdigit() for c in t.completion))\n"
    )
    scoring.load_modules([str(tmp_path / "my_rewards.py")])
    scoring.load_modules([str(tmp_path / "my_rewards.py")])  # importing twice is not a clash
    assert "has_digit" in {f.name for f in scoring.registered()}
    with pytest.raises(ConfigError, match="does not exist"):
        scoring.load_modules([str(tmp_path / "missing.py")])
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="boom"):
        scoring.load_modules([str(tmp_path / "broken.py")])


# --------------------------------------------------------------------------- applying to the store


def _store(db: Database, items: list[dict]) -> None:
    with db.session() as s:
        ingest(s, parse_batch({"trajectories": items}))


def _scores(db: Database, name: str) -> dict[str, float]:
    with db.read_session() as s:
        rows = s.execute(select(Score.trajectory_id, Score.value).where(Score.name == name)).all()
    return {tid: v for tid, v in rows}


def test_apply_is_idempotent_and_new_version_rescores(db: Database, clean_registry: None) -> None:
    _store(
        db,
        [
            {"id": "a", "messages": chat("q", '{"x": 1}')},
            {"id": "b", "messages": chat("q", "I'm sorry, but I can't help with that.")},
            {"id": "c", "messages": chat("q", "fine answer")},
        ],
    )
    calls: list[str] = []

    def counting(t: TrajectoryView) -> float:
        calls.append(t.id)
        return 0.25

    fns = [reg.register(counting, name="counting", version="1"), *reg.get(["json_valid", "no_refusal"])]
    first = apply_heuristics(db, functions=fns, batch_size=2)
    assert first.counts["counting"].scored == 3
    assert first.counts["json_valid"].scored == 1 and first.counts["json_valid"].not_applicable == 2
    assert _scores(db, "no_refusal") == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert _scores(db, "json_valid") == {"a": 1.0}
    with db.read_session() as s:
        row = s.scalar(select(Score).where(Score.name == "no_refusal", Score.trajectory_id == "b"))
        assert row.source == ScoreSource.heuristic and row.version == "1"
        assert row.idempotency_key == "heuristic:no_refusal:1:b"

    second = apply_heuristics(db, functions=fns)
    assert second.trajectories_seen == 0 and second.scored == 0
    assert sorted(calls) == ["a", "b", "c"]  # not-applicable results were not re-run either

    _store(db, [{"id": "d", "messages": chat("q", "new")}])
    third = apply_heuristics(db, functions=fns)
    assert third.trajectories_seen == 1 and third.counts["counting"].scored == 1

    v2 = reg.register(lambda t: 0.75, name="counting", version="2", replace=True)
    fourth = apply_heuristics(db, functions=[v2])
    assert fourth.counts["counting"].scored == 4
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Score).where(Score.name == "counting")) == 8
    # The newest version is what the combined reward uses.
    with db.read_session() as s:
        assert scoring.latest_aspects(s, ["a"])["a"]["counting"] == 0.75


def test_failing_function_is_reported_and_others_kept(db: Database, clean_registry: None) -> None:
    _store(db, [{"id": f"t{i}", "messages": chat("q", f"answer {i}")} for i in range(4)])
    broken_on = {"t1", "t3"}

    @scoring.reward("fragile")
    def fragile(t: TrajectoryView) -> float:
        if t.id in broken_on:
            raise KeyError("missing field")
        return 1.0

    @scoring.reward("wrong_type")
    def wrong_type(t: TrajectoryView):  # noqa: ANN202
        return "high"

    report = apply_heuristics(db, names=["fragile", "wrong_type", "no_refusal"])
    assert report.counts["fragile"].scored == 2 and report.counts["fragile"].failed == 2
    assert report.counts["wrong_type"].failed == 4
    assert report.counts["no_refusal"].scored == 4
    errors = {(e.name, e.trajectory_id) for e in report.errors}
    assert {("fragile", "t1"), ("fragile", "t3")} <= errors
    assert any("must return a float" in e.error for e in report.errors if e.name == "wrong_type")
    assert any("KeyError" in e.error for e in report.errors if e.name == "fragile")
    assert set(_scores(db, "fragile")) == {"t0", "t2"}
    assert len(_scores(db, "no_refusal")) == 4

    # Fixed function: the failed trajectories are retried on the next run, the rest are not.
    broken_on.clear()
    again = apply_heuristics(db, names=["fragile"])
    assert again.counts["fragile"].scored == 2 and again.failed == 0
    assert set(_scores(db, "fragile")) == {"t0", "t1", "t2", "t3"}
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ScoreRun).where(ScoreRun.name == "fragile")) == 4


def test_apply_restricted_to_ids(db: Database) -> None:
    _store(db, [{"id": f"t{i}", "messages": chat("q", "fine")} for i in range(3)])
    report = apply_heuristics(db, names=["length"], trajectory_ids=["t2", "t0"])
    assert report.trajectories_seen == 2
    assert set(_scores(db, "length")) == {"t0", "t2"}
    assert apply_heuristics(db, names=["length"], trajectory_ids=[]).trajectories_seen == 0


def test_as_trl_reward_batch_signature() -> None:
    refusal = scoring.as_trl_reward("no_refusal")
    assert refusal.__name__ == "no_refusal"
    # TRL passes conversational prompts/completions as message lists, or plain strings.
    prompts = [[{"role": "user", "content": "q"}], [{"role": "user", "content": "q"}]]
    completions = [
        [{"role": "assistant", "content": "I cannot help with that."}],
        [{"role": "assistant", "content": "42"}],
    ]
    assert refusal(prompts=prompts, completions=completions, completion_ids=[[1], [2]]) == [0.0, 1.0]
    schema = {"type": "object", "required": ["a"]}
    js = scoring.as_trl_reward("json_schema")
    out = js(
        prompts=["p", "p", "p"],
        completions=['{"a": 1}', '{"b": 1}', "x"],
        metadata=[{"json_schema": schema}, {"json_schema": schema}, None],
    )
    assert out == [1.0, 0.0, None]
