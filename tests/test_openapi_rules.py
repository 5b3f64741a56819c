"""Issue 20.9: the document states the rules a request must follow, so that what it calls valid is
accepted (the behaviour itself is held to it by tests/test_api_schemathesis.py)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from learnloop.api import create_app
from learnloop.api.openapi import NO_NUL
from learnloop.config import Settings
from learnloop.store.db import Database
from learnloop.store.models import JobState


def _doc(settings: Settings, db: Database) -> dict[str, Any]:
    return TestClient(create_app(settings, db, watch_inbox=False)).get("/openapi.json").json()


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]


def test_the_document_states_the_rules(settings: Settings, sqlite_db: Database) -> None:
    doc = _doc(settings, sqlite_db)
    jobs = {p["name"]: p["schema"] for p in doc["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert jobs["state"]["anyOf"][0] == {"$ref": "#/components/schemas/JobState"}
    assert set(_schema(doc, "JobState")["enum"]) == {s.value for s in JobState}
    submit = _schema(doc, "JobSubmit")
    assert any("loop" in branch.get("required", []) for branch in submit["anyOf"])  # train: loop or config
    config = _schema(doc, "TrainConfig")
    assert {"algorithm", "base_model", "dataset", "output_dir"} <= set(config["required"])
    trajectory = _schema(doc, "TrajectoryIn")
    assert trajectory["properties"]["id"]["anyOf"][0]["pattern"] == NO_NUL  # the NUL rule
    assert trajectory["properties"]["metadata"]["propertyNames"] == {"pattern": NO_NUL}
    assert trajectory["properties"]["metadata"]["additionalProperties"] == {
        "$ref": "#/components/schemas/JsonValue"
    }
    message = _schema(doc, "Message")
    tool = next(b for b in message["anyOf"] if b["properties"]["role"].get("const") == "tool")
    assert "tool_call_id" in tool["required"]
    register = _schema(doc, "RegisterIn")
    assert register["additionalProperties"] is False
    assert register["properties"]["dataset_id"]["anyOf"][0]["minimum"] == 0  # not pydantic's "ge"
    time = trajectory["properties"]["created_at"]
    assert {"type": "string", "format": "date-time"} in time["anyOf"]
