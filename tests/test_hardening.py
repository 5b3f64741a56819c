"""Issue 16: every bad input is a clear 4xx naming the field, on SQLite and PostgreSQL alike,
over HTTP, in-process (the capture SDK's path) and through JSONL import."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from helpers import chat
from learnloop.api import create_app
from learnloop.capture.client import CaptureClient
from learnloop.capture.spool import Spool
from learnloop.config import Settings
from learnloop.errors import ValidationFailed
from learnloop.jsonio import dumps
from learnloop.store import Database
from learnloop.store.models import Feedback, Score, Trajectory
from learnloop.store.records import batch_from_json, parse_batch

# The records of the issue: each made the store raise OverflowError (a 500, and a batch the SDK
# retried forever) because converting them to UTC leaves the calendar.
OVERFLOWING = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"]


def _counts(db: Database) -> tuple[int, int, int]:
    with db.read_session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Trajectory, Score, Feedback))  # type: ignore[return-value]


def _client(settings: Settings, db: Database, **server: object) -> TestClient:
    if server:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=server)})
    return TestClient(create_app(settings, db, watch_inbox=False))


def _post(c: TestClient, body: bytes | dict, **headers: str):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.post("/v1/ingest", content=raw, headers={"Content-Type": "application/json", **headers})


def _stored_trajectory(c: TestClient) -> None:
    assert _post(c, {"trajectories": [{"id": "t", "messages": chat("q", "a")}]}).status_code == 200


def _assert_refused(r, loc: str) -> None:
    assert r.status_code == 422, r.text
    payload = r.json()
    assert any(p["loc"] == loc for p in payload["problems"]), payload
    assert loc in payload["error"] and "Nothing was stored" in payload["error"]


# -- 1. values the store cannot take --------------------------------------------------------------


@pytest.mark.parametrize("when", OVERFLOWING)
def test_created_at_overflowing_utc_is_422_naming_the_field(
    settings: Settings, db: Database, when: str
) -> None:
    c = _client(settings, db)
    _stored_trajectory(c)
    good = [{"id": f"ok{i}", "messages": chat("q", "a")} for i in range(6)]
    r = _post(c, {"trajectories": [*good, {"id": "bad", "messages": chat("q", "a"), "created_at": when}]})
    _assert_refused(r, "trajectories.6.created_at")
    r = _post(c, {"feedback": [{"trajectory_id": "t", "rating": 4, "created_at": when}]})
    _assert_refused(r, "feedback.0.created_at")
    r = c.post("/v1/trajectories/t/feedback", json={"thumbs": 1, "created_at": when})
    _assert_refused(r, "created_at")
    r = _post(
        c,
        {
            "trajectories": [
                {"id": "x", "messages": chat("q", "a"), "feedback": {"rating": 1, "created_at": when}}
            ]
        },
    )
    _assert_refused(r, "trajectories.0.feedback.created_at")
    assert _counts(db) == (1, 0, 0)
    # The ends of the range themselves are fine.
    edge = [
        {"id": "early", "messages": chat("q", "a"), "created_at": "0001-01-01T00:00:00+00:00"},
        {"id": "late", "messages": chat("q", "a"), "created_at": "9999-12-31T23:30:00+00:00"},
    ]
    assert _post(c, {"trajectories": edge}).status_code == 200


@pytest.mark.parametrize("when", OVERFLOWING)
def test_created_at_overflow_is_refused_in_process(when: str) -> None:
    body = {
        "trajectories": [{"messages": chat("q", "a"), "created_at": when}],
        "feedback": [{"trajectory_id": "t", "comment": "c", "created_at": when}],
    }
    with pytest.raises(ValidationFailed) as err:
        parse_batch(body)
    assert [loc for loc, _ in err.value.problems] == ["trajectories.0.created_at", "feedback.0.created_at"]
    with pytest.raises(ValueError, match="created_at"):  # the SDK writer's check of a spooled batch
        batch_from_json(json.dumps(body))


@pytest.mark.parametrize("when", OVERFLOWING)
def test_sdk_sets_aside_only_the_overflowing_record(
    db: Database, settings: Settings, tmp_path: Path, when: str
) -> None:
    # The in-process path: a spooled batch holding the record and six valid neighbours.
    dead = Spool(tmp_path / "spool")
    good = [{"id": f"ok-{i}", "messages": chat(f"q{i}", "a")} for i in range(6)]
    bad = {"id": "bad", "messages": chat("q", "a"), "created_at": when}
    dead.write(dumps({"trajectories": [*good[:3], bad, *good[3:]]}))
    os.close(dead._lock_fd)
    dead._lock_fd = -1
    client = CaptureClient(settings, database=db, spool_dir=tmp_path / "spool", flush_interval=0.05)
    try:
        assert client.flush(30)
        assert client.stats()["delivered"] == 6 and client.stats()["rejected"] == 1
    finally:
        client.close(5)
    with db.read_session() as s:
        assert set(s.scalars(select(Trajectory.id))) == {f"ok-{i}" for i in range(6)}
    rejected = [
        json.loads(line)
        for p in (tmp_path / "spool" / "rejected").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert [r["record"]["id"] for r in rejected] == ["bad"] and "created_at" in rejected[0]["reason"]


# -- 2. NaN, infinities and overflowing numbers ----------------------------------------------------


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_422_naming_the_field(settings: Settings, db: Database, number: bytes) -> None:
    c = _client(settings, db)
    _stored_trajectory(c)
    cases = {
        b'{"scores": [{"trajectory_id": "t", "name": "s", "value": %s}]}': "scores.0.value",
        b'{"feedback": [{"trajectory_id": "t", "rating": %s}]}': "feedback.0.rating",
        (
            b'{"trajectories": [{"messages": [{"role": "user", "content": "q"}], "scores": {"r": %s}}]}'
        ): "trajectories.0.scores.r",
        (
            b'{"trajectories": [{"messages": [{"role": "user", "content": "q"}], '
            b'"feedback": {"rating": %s}}]}'
        ): "trajectories.0.feedback.rating",
    }
    for template, loc in cases.items():
        _assert_refused(_post(c, template % number), loc)
    r = c.post(
        "/v1/trajectories/t/feedback",
        content=b'{"rating": %s}' % number,
        headers={"Content-Type": "application/json"},
    )
    _assert_refused(r, "rating")
    assert _counts(db) == (1, 0, 0)


def test_rewards_stats_json_is_strict_json_even_over_old_nan_rows(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows stored before the ingest refused them (written here past validation) must not make the
    # output non-JSON, nor turn every mean into NaN.
    from learnloop.store.models import ScoreSource, utcnow
    from learnloop.store.trajectories import ingest

    with db.session() as s:
        ingest(
            s, parse_batch({"trajectories": [{"id": f"t{i}", "messages": chat("q", "a")} for i in range(3)]})
        )
        bad = float("nan") if db.dialect == "postgresql" else float("-inf")  # SQLite turns NaN into NULL
        for i, v in enumerate([bad, float("inf"), 0.5]):
            s.add(
                Score(trajectory_id=f"t{i}", name="r", value=v, source=ScoreSource.env, created_at=utcnow())
            )
    monkeypatch.setenv("LEARNLOOP_DATABASE_URL", db.url)
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(settings.data_dir))
    from learnloop.cli.main import cli

    out = CliRunner().invoke(cli, ["rewards", "stats", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} printed"))
    assert data["overall"]["count"] == 1 and data["overall"]["mean"] == 0.5


# -- 3. NUL and lone surrogates, one rule everywhere ---------------------------------------------

NUL_CASES = {
    "id": ("trajectories.0.id", {"id": "a\u0000b"}),
    "scenario": ("trajectories.0.scenario", {"scenario": "s\u0000"}),
    "tag": ("trajectories.0.tags.1", {"tags": ["ok", "t\u0000"]}),
    "content": ("trajectories.0.messages.1.content", {"messages": chat("q", "a\u0000")}),
    "metadata value": ("trajectories.0.metadata.k", {"metadata": {"k": "v\u0000"}}),
    "metadata key": ("trajectories.0.metadata.'k\\x00'", {"metadata": {"k\u0000": 1}}),
    "group": ("trajectories.0.group", {"group": "g\u0000"}),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_nul_is_422_naming_the_field_on_both_databases(settings: Settings, db: Database, case: str) -> None:
    c = _client(settings, db)
    loc, fields = NUL_CASES[case]
    record = {"messages": chat("q", "a"), **fields}
    _assert_refused(_post(c, {"trajectories": [record]}), loc)
    assert _counts(db) == (0, 0, 0)


def test_nul_in_feedback_scores_and_path_ids(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    _stored_trajectory(c)
    _assert_refused(
        _post(c, {"feedback": [{"trajectory_id": "t", "comment": "x\u0000"}]}), "feedback.0.comment"
    )
    _assert_refused(
        _post(c, {"scores": [{"trajectory_id": "t", "name": "n\u0000", "value": 1}]}), "scores.0.name"
    )
    _assert_refused(
        _post(c, {"scores": [{"trajectory_id": "t", "name": "n", "value": 1, "rationale": "\u0000"}]}),
        "scores.0.rationale",
    )
    _assert_refused(c.post("/v1/trajectories/t%00/feedback", json={"thumbs": 1}), "trajectory_id")
    assert c.get("/v1/trajectories/t%00").status_code == 404
    assert _counts(db) == (1, 0, 0)


SURROGATE_CASES = {
    "content": (
        b'"messages": [{"role": "user", "content": "a \\ud83d"}]',
        "trajectories.0.messages.0.content",
    ),
    "tag": (b'"messages": [{"role": "user", "content": "a"}], "tags": ["\\udc00"]', "trajectories.0.tags.0"),
    "metadata key": (
        b'"messages": [{"role": "user", "content": "a"}], "metadata": {"\\ud83d": 1}',
        "trajectories.0.metadata.'\\ud83d'",
    ),
    "assistant content": (
        b'"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\ud83d"}]',
        "trajectories.0.messages.1.content",
    ),
}


@pytest.mark.parametrize("case", list(SURROGATE_CASES))
def test_lone_surrogates_follow_the_same_rule_everywhere(settings: Settings, db: Database, case: str) -> None:
    c = _client(settings, db)
    fields, loc = SURROGATE_CASES[case]
    _assert_refused(_post(c, b'{"trajectories": [{' + fields + b"}]}"), loc)
    assert _counts(db) == (0, 0, 0)


def test_lengths_the_columns_cannot_hold_are_422_on_sqlite_too(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    _stored_trajectory(c)
    _assert_refused(
        _post(c, {"trajectories": [{"messages": chat("q", "a"), "project": "p" * 129}]}),
        "trajectories.0.project",
    )
    _assert_refused(
        _post(c, {"scores": [{"trajectory_id": "t", "name": "n", "value": 1, "author": "a" * 129}]}),
        "scores.0.author",
    )
    assert _counts(db) == (1, 0, 0)


# -- 4. auth --------------------------------------------------------------------------------------


def test_auth_never_crashes_and_comes_before_the_body(settings: Settings, db: Database) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    c = _client(settings, db)
    for token in (b"s3cr\xc3\xa9t", b"s3cret\xff", b"\xe9" * 6, "s3crét".encode()):
        r = c.post("/v1/ingest", json={}, headers={"Authorization": b"Bearer " + token})
        assert r.status_code == 401, r.text
    # Whatever the body, a client without the token gets 401: it is never parsed.
    for body in (
        b'{"trajectories": [',
        b"\x00\xff",
        json.dumps({"trajectories": [{"messages": []}]}).encode(),
    ):
        assert (
            c.post("/v1/ingest", content=body, headers={"Content-Type": "application/json"}).status_code
            == 401
        )
        assert c.post("/v1/trajectories/t/feedback", content=body).status_code == 401
    ok = _post(c, {"trajectories": [{"id": "t", "messages": chat("q", "a")}]}, Authorization="Bearer s3cret")
    assert ok.status_code == 200
    assert c.get("/v1/trajectories/t").status_code == 200  # reads stay open without server.read_token


def test_non_ascii_configured_token_matches_its_utf8_bytes(settings: Settings, db: Database) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("clé")})
    c = _client(settings, db)
    good = "Bearer clé".encode()  # the header's bytes as sent: UTF-8
    assert c.post("/v1/ingest", json={}, headers={"Authorization": good}).status_code == 200
    assert c.post("/v1/ingest", json={}, headers={"Authorization": "Bearer cle"}).status_code == 401


def test_read_token_protects_read_routes(settings: Settings, db: Database) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("writer")})
    c = _client(settings, db, read_token=SecretStr("reader"))
    assert (
        _post(
            c, {"trajectories": [{"id": "t", "messages": chat("q", "a")}]}, Authorization="Bearer writer"
        ).status_code
        == 200
    )
    for path in ("/v1/trajectories/t", "/v1/stats"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer reader"}).status_code == 200
        assert c.get(path, headers={"Authorization": "Bearer writer"}).status_code == 200
    # The read token does not allow writes.
    assert _post(c, {}, Authorization="Bearer reader").status_code == 401
    assert c.get("/healthz").status_code == 200


# -- 5. the OpenAPI document (the fuzzing itself is in test_api_schemathesis.py) ------------------


def test_openapi_documents_auth_as_a_scheme_and_every_answer(settings: Settings, sqlite_db: Database) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("t")})
    spec = _client(settings, sqlite_db, read_token=SecretStr("r")).get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerToken"]["description"],
    }
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert not [p for p in op.get("parameters", []) if p["in"] == "header"], (path, method)
            if path.startswith("/v1/"):  # /healthz, /readyz, /metrics stay open for probes and scrapers
                assert op["security"] == [{"bearerToken": []}] and "401" in op["responses"], (path, method)
            # OpenAI's routes answer in OpenAI's error shape; /readyz's 503 is its readiness report.
            shape = (
                "OpenAIErrorResponse"
                if op.get("tags") == ["openai"]
                else "Readiness"
                if path == "/readyz"
                else "ErrorResponse"
            )
            for status, answer in op["responses"].items():
                if status[0] in "45":
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": f"#/components/schemas/{shape}"
                    }
    ingest = spec["paths"]["/v1/ingest"]["post"]
    assert {"400", "401", "404", "413", "422", "429", "503"} <= set(ingest["responses"])
    assert "Retry-After" in ingest["responses"]["429"]["headers"]
    feedback = spec["components"]["schemas"]["FeedbackIn"]
    assert {tuple(alt["required"]) for alt in feedback["anyOf"]} == {
        ("rating",),
        ("thumbs",),
        ("success",),
        ("correction",),
        ("comment",),
    }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    open_spec = (
        _client(settings.model_copy(update={"api_token": None}), sqlite_db).get("/openapi.json").json()
    )
    assert (
        "security" not in open_spec["paths"]["/v1/ingest"]["post"]
        and "401" not in open_spec["paths"]["/v1/ingest"]["post"]["responses"]
    )


# -- 7. an id repeated inside one batch --------------------------------------------------------------


def test_repeated_id_with_different_content_is_422_naming_both(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    body = {
        "trajectories": [
            {"id": "a", "messages": chat("q", "a")},
            {"id": "b", "messages": chat("q", "b")},
            {"id": "a", "messages": chat("q", "different")},
        ]
    }
    r = _post(c, body)
    _assert_refused(r, "trajectories.2.id")
    assert "trajectories.0" in r.json()["error"]
    assert _counts(db) == (0, 0, 0)
    same = {
        "trajectories": [{"id": "a", "messages": chat("q", "a")}, {"id": "a", "messages": chat("q", "a")}]
    }
    r = _post(c, same)
    assert r.status_code == 200 and r.json()["inserted"] == 1 and r.json()["duplicates"] == 1
    key = {
        "trajectories": [
            {"id": "x", "idempotency_key": "k", "messages": chat("q", "a")},
            {"id": "y", "idempotency_key": "k", "messages": chat("q", "a")},
        ]
    }
    _assert_refused(_post(c, key), "trajectories.1.idempotency_key")
    fb = {
        "feedback": [
            {"trajectory_id": "a", "idempotency_key": "f", "rating": 1},
            {"trajectory_id": "a", "idempotency_key": "f", "rating": 2},
        ]
    }
    _assert_refused(_post(c, fb), "feedback.1.idempotency_key")


def test_jsonl_repeated_id_with_different_content_names_both_lines(db: Database, tmp_path: Path) -> None:
    from learnloop.store.jsonl import import_jsonl

    f = tmp_path / "rep.jsonl"
    lines = [
        {"id": "a", "messages": chat("q", "a")},
        {"id": "b", "messages": chat("q", "b")},
        {"id": "a", "messages": chat("q", "a")},
        {"id": "a", "messages": chat("q", "z")},
    ]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValidationFailed, match=r"line 4: id: repeats the id 'a' of line 1"):
        import_jsonl(db, f)
    assert _counts(db) == (0, 0, 0)
    f.write_text("".join(json.dumps(x) + "\n" for x in lines[:3]))
    assert import_jsonl(db, f).inserted == 2


# -- 8. healthz ---------------------------------------------------------------------------------------


def test_healthz_says_what_is_down_not_where(settings: Settings, tmp_path: Path) -> None:
    from api_support import free_port

    secret_host = f"postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/secretdb"
    dead = Database(secret_host, connect_args={"connect_timeout": 2})
    c = TestClient(create_app(settings, dead, watch_inbox=False))
    for r in (
        c.get("/healthz"),
        c.get("/v1/stats"),
        _post(c, {"trajectories": [{"messages": chat("q", "a")}]}),
    ):
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        for leak in ("127.0.0.1", "secretdb", "postgres", "psycopg", "port", "connection"):
            assert leak not in r.text.lower(), (leak, r.text)
    ok = TestClient(create_app(settings, Database(f"sqlite:///{tmp_path / 'h.db'}"), watch_inbox=False))
    ok.app.state.db.upgrade()
    body = ok.get("/healthz").json()
    assert (
        body["status"] == "ok" and str(tmp_path) not in json.dumps(body) and "sqlite" not in json.dumps(body)
    )


# -- 9. learnloop import of the record in point 1 -------------------------------------------------------


@pytest.mark.parametrize("when", OVERFLOWING)
def test_import_cli_prints_one_line_with_the_line_number(
    settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    from learnloop.cli.main import cli

    f = tmp_path / "day.jsonl"
    f.write_text(
        json.dumps({"messages": chat("q", "a")})
        + "\n"
        + json.dumps({"messages": chat("q", "b"), "created_at": when})
        + "\n"
    )
    monkeypatch.setenv("LEARNLOOP_DATABASE_URL", db.url)
    # A config file of its own: without one the CLI's first line (once per process) says it fell back
    # to the defaults, and whether this test's process said so already depends on the tests before it.
    (tmp_path / "learnloop.toml").write_text("")
    monkeypatch.setenv("LEARNLOOP_CONFIG", str(tmp_path / "learnloop.toml"))
    out = CliRunner().invoke(cli, ["import", str(f)])
    assert out.exit_code == 1
    assert "Traceback" not in out.output and out.exception is None or isinstance(out.exception, SystemExit)
    first = out.output.strip().splitlines()[0]
    assert "line 2: created_at" in first and "outside the range" in first
    assert _counts(db) == (0, 0, 0)


def test_sdk_refuses_non_finite_rewards_and_ratings_at_the_call(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    client = CaptureClient(settings, database=sqlite_db, spool_dir=tmp_path / "spool", flush_interval=0.05)
    try:
        with client.trajectory(scenario="s") as t:
            t.user("q")
            t.assistant("a")
            for bad in (float("nan"), float("inf"), 1e999):
                with pytest.raises(ValidationFailed, match="finite"):
                    t.reward("r", bad)
                with pytest.raises(ValidationFailed, match="rating"):
                    t.feedback(rating=bad)
            t.reward("r", 1.0)
        with pytest.raises(ValidationFailed, match="finite"):
            client.reward(t.id, "late", float("nan"))
        with pytest.raises(ValidationFailed, match="rating"):
            client.feedback(t.id, rating=float("-inf"))
        assert client.flush(30)
    finally:
        client.close(5)
    assert _counts(sqlite_db) == (1, 1, 0)  # the trajectory and its one finite reward


@pytest.mark.parametrize("when", OVERFLOWING)
def test_inbox_error_file_names_the_line(settings: Settings, db: Database, when: str) -> None:
    from learnloop.paths import data_dir
    from learnloop.store.inbox import InboxWatcher

    watcher = InboxWatcher(db, settings)
    inbox = data_dir(settings.data_dir).ensure().inbox
    (inbox / "day.jsonl").write_text(
        json.dumps({"messages": chat("q", "a")})
        + "\n"
        + json.dumps({"messages": chat("q", "b"), "created_at": when})
        + "\n"
    )
    watcher.poll_once()
    [outcome] = watcher.poll_once()
    assert outcome.status == "failed"
    error = (inbox / "failed" / "day.jsonl.error.txt").read_text()
    assert "line 2: created_at" in error and "Traceback" not in error
    assert _counts(db) == (0, 0, 0)


def test_dashboard_auth_compares_bytes_too(settings: Settings, sqlite_db: Database) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    c = _client(settings, sqlite_db)
    r = c.post(
        "/ui/aliases/learnloop/rollback",
        headers={"Authorization": b"Bearer s3cr\xc3\xa9t", "X-Learnloop-Action": "1"},
    )
    assert r.status_code == 401, r.text
    r = c.post(
        "/ui/aliases/learnloop/rollback",
        headers={"Cookie": b"learnloop_session=s3cr\xc3\xa9t", "X-Learnloop-Action": "1"},
    )
    assert r.status_code == 401, r.text
    r = c.post(
        "/login",
        content=b"token=s3cr%C3%A9t",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "wrong" in r.headers["location"]


def test_readyz_and_status_say_what_not_where(settings: Settings) -> None:
    from api_support import free_port

    dead = Database(
        f"postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/secretdb",
        connect_args={"connect_timeout": 2},
    )
    c = TestClient(create_app(settings, dead, watch_inbox=False))
    r = c.get("/readyz")
    assert r.status_code == 503 and "database unreachable" in r.json()["reasons"]
    for leak in ("127.0.0.1", "secretdb", "psycopg", "port"):
        assert leak not in r.text, (leak, r.text)


def test_status_needs_the_read_token_when_set(settings: Settings, sqlite_db: Database) -> None:
    c = _client(settings, sqlite_db, read_token=SecretStr("reader"))
    assert c.get("/v1/status").status_code == 401
    assert c.get("/v1/status", headers={"Authorization": "Bearer reader"}).status_code == 200
