from __future__ import annotations

import json

import httpx
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from api_support import live_server, poisoned_scores
from helpers import chat
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.store import Database
from learnloop.store.models import Feedback, Score, Trajectory


def _client(settings: Settings, db: Database) -> TestClient:
    return TestClient(create_app(settings, db, watch_inbox=False))


def _counts(db: Database) -> tuple[int, int, int]:
    with db.read_session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Trajectory, Score, Feedback))  # type: ignore[return-value]


def _server_settings(settings: Settings, **server: object) -> Settings:
    return settings.model_copy(update={"server": settings.server.model_copy(update=server)})


def test_ingest_then_duplicate(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    body = {
        "trajectories": [
            {"id": "a", "messages": chat("hi", "hello"), "scores": {"ok": 1.0}, "feedback": {"thumbs": 1}}
        ]
    }
    r1 = c.post("/v1/ingest", json=body)
    r2 = c.post("/v1/ingest", json=body)
    assert r1.status_code == 200
    assert r1.json() == {
        "inserted": 1,
        "duplicates": 0,
        "ids": ["a"],
        "feedback_inserted": 1,
        "scores_inserted": 1,
    }
    assert r2.status_code == 200
    assert r2.json() == {
        "inserted": 0,
        "duplicates": 1,
        "ids": ["a"],
        "feedback_inserted": 0,
        "scores_inserted": 0,
    }
    assert c.get("/v1/trajectories/a").json()["messages"][1]["content"] == "hello"
    assert _counts(db) == (1, 1, 1)


def test_bad_field_is_named_and_nothing_stored(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    good = [{"id": f"ok{i}", "messages": chat("a", "b")} for i in range(3)]
    body = {"trajectories": good + [{"id": "bad", "messages": [{"role": "robot", "content": "c"}]}]}
    r = c.post("/v1/ingest", json=body)
    assert r.status_code == 422
    payload = r.json()
    assert "trajectories.3.messages.0.role" in payload["error"]
    assert any(p["loc"].startswith("trajectories.3.messages.0.role") for p in payload["problems"])
    assert c.get("/v1/trajectories/ok0").status_code == 404
    assert _counts(db) == (0, 0, 0)


def test_lone_surrogate_is_422_and_nothing_stored(settings: Settings, db: Database) -> None:
    # Valid JSON that decodes to text no database can hold: half of a UTF-16 surrogate pair.
    c = _client(settings, db)
    body = (
        b'{"trajectories": [{"id": "ok", "messages": [{"role": "user", "content": "fine"}]},'
        b' {"id": "cut", "messages": [{"role": "user", "content": "emoji \\ud83d cut"}]}]}'
    )
    r = c.post("/v1/ingest", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "surrogate" in r.json()["error"] and "'\\ud83d'" in r.json()["error"]
    assert _counts(db) == (0, 0, 0)


def test_malformed_json_body_is_400(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    r = c.post("/v1/ingest", content=b'{"trajectories": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_batch_failing_at_database_level_on_last_item_stores_nothing(
    settings: Settings, db: Database
) -> None:
    c = _client(settings, db)
    body = {
        "trajectories": [
            {"id": f"t{i}", "messages": chat(f"q{i}", "a"), "scores": {"len": 1.0}} for i in range(4)
        ],
        "feedback": [{"trajectory_id": "t0", "rating": 5}],
        "scores": [
            {"trajectory_id": "t0", "name": "ok", "value": 1},
            {"trajectory_id": "t1", "name": "poison", "value": 0},
        ],
    }
    with poisoned_scores(db):
        r = c.post("/v1/ingest", json=body)
        assert r.status_code >= 400, r.text
        assert "poisoned score" in r.json()["error"] and "Nothing was stored" in r.json()["error"]
        assert _counts(db) == (0, 0, 0)
    # The same batch without the poisoned score goes through whole.
    body["scores"] = body["scores"][:1]
    r = c.post("/v1/ingest", json=body)
    assert r.status_code == 200 and r.json()["inserted"] == 4
    assert _counts(db) == (4, 5, 1)


def test_late_feedback_route_and_unknown_trajectory(settings: Settings, db: Database) -> None:
    c = _client(settings, db)
    c.post("/v1/ingest", json={"trajectories": [{"id": "t", "messages": chat("q", "a")}]})
    r = c.post("/v1/trajectories/t/feedback", json={"thumbs": "down", "comment": "wrong"})
    assert r.status_code == 200 and r.json()["feedback_inserted"] == 1
    r = c.post("/v1/trajectories/t/feedback", json={"thumbs": "down", "comment": "wrong"})
    assert r.json()["feedback_inserted"] == 0  # a retried send is stored once
    r = c.post("/v1/trajectories/missing/feedback", json={"rating": 1})
    assert r.status_code == 404 and "missing" in r.json()["error"]
    assert c.get("/v1/trajectories/missing").status_code == 404


def test_token_required_for_writes_reads_stay_open(settings: Settings, db: Database) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    c = _client(settings, db)
    body = {"trajectories": [{"id": "x", "messages": chat("a", "b")}]}
    r = c.post("/v1/ingest", json=body)
    assert (
        r.status_code == 401 and "Bearer" in r.json()["error"] and r.headers["WWW-Authenticate"] == "Bearer"
    )
    assert c.post("/v1/ingest", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/v1/trajectories/x/feedback", json={"rating": 1}).status_code == 401
    assert _counts(db) == (0, 0, 0)
    assert c.post("/v1/ingest", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/v1/trajectories/x").status_code == 200
    assert c.get("/v1/stats").json()["by_source"] == [{"source": "production", "count": 1}]
    assert c.get("/healthz").status_code == 200


def test_batch_over_max_batch_size_is_413(settings: Settings, sqlite_db: Database) -> None:
    c = _client(_server_settings(settings, max_batch_size=3), sqlite_db)
    body = {"trajectories": [{"messages": chat(f"q{i}", "a")} for i in range(4)]}
    r = c.post("/v1/ingest", json=body)
    assert r.status_code == 413 and "max_batch_size" in r.json()["error"]
    assert _counts(sqlite_db) == (0, 0, 0)
    body["trajectories"] = body["trajectories"][:3]
    assert c.post("/v1/ingest", json=body).status_code == 200


def test_body_size_limit_over_real_http(settings: Settings, sqlite_db: Database) -> None:
    app = create_app(_server_settings(settings, max_request_bytes=4096), sqlite_db, watch_inbox=False)
    big = {"trajectories": [{"messages": chat("x" * 5000, "a")}]}
    raw = json.dumps(big).encode()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/ingest", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit must hold while streaming too
            for i in range(0, len(raw), 1000):
                yield raw[i : i + 1000]

        r = http.post("/v1/ingest", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]
        small = {"trajectories": [{"messages": chat("x" * 100, "a")}]}
        assert http.post("/v1/ingest", json=small).status_code == 200
    assert _counts(sqlite_db) == (1, 0, 0)


def test_openapi_and_docs_are_served(settings: Settings, sqlite_db: Database) -> None:
    c = _client(settings, sqlite_db)
    spec = c.get("/openapi.json").json()
    assert "/v1/ingest" in spec["paths"] and "post" in spec["paths"]["/v1/ingest"]
    assert "IngestBatch" in spec["components"]["schemas"]
    assert {"400", "413", "422", "429", "503"} <= set(spec["paths"]["/v1/ingest"]["post"]["responses"])
    # 401 and the bearer scheme appear where a token is configured (see test_hardening.py)
    docs = c.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
