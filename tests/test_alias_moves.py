"""One way to change what serves: every kind of alias move (registry, CLI, HTTP, dashboard) goes through
the registry's ``move``, so afterwards exactly the versions behind an alias are ``serving`` and the move
left one alias-log entry and one event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from registry_support import make_adapter, settings_for
from sqlalchemy import func, select

from learnloop.api import create_app
from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.errors import Conflict, NotFound, ValidationFailed
from learnloop.registry import alias_history, move, promote, register_version, restore, state_of
from learnloop.store import Database
from learnloop.store.models import Alias, AliasEvent, Event, ModelVersion

MOVE_EVENTS = ("version.promoted", "version.rolled_back", "version.restored", "alias.set", "alias.split")


@pytest.fixture
def s(settings: Settings, tiny_model_dir: Path) -> Settings:
    data = settings_for(settings, tiny_model_dir, registry={"keep_versions": 0}).model_dump()
    data["loops"] = [{"name": "orders", "scenario": "orders", "alias": "orders"}]
    return Settings.model_validate(data)


@pytest.fixture
def versions(db: Database, s: Settings, tiny_model_dir: Path, tmp_path: Path) -> list[str]:
    """v1, v2 passed the gate; v3 was never evaluated; v4 was rejected."""
    ids = [
        register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / f"a{i}", seed=i))
        for i in range(4)
    ]
    with db.session() as session:
        for vid, verdict in zip(ids, ("promote", "promote", None, "reject"), strict=True):
            row = session.get(ModelVersion, vid)
            row.gate = {} if verdict is None else {"passed": verdict == "promote", "verdict": verdict}
            row.state = state_of(row, False)
    return ids


class Ledger:
    """Counts alias-log rows and move events, and checks the state invariant after each move."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.log, self.events = self._counts()

    def _counts(self) -> tuple[int, int]:
        with self.db.read_session() as session:
            log = session.scalar(select(func.count()).select_from(AliasEvent))
            events = session.scalar(
                select(func.count()).select_from(Event).where(Event.kind.in_(MOVE_EVENTS))
            )
        return log, events

    def moved(self, times: int = 1) -> None:
        """``times`` moves happened since the last check (0: a refused or no-op move)."""
        log, events = self._counts()
        assert (log - self.log, events - self.events) == (times, times)
        self.log, self.events = log, events
        with self.db.read_session() as session:
            behind = set()
            for a in session.scalars(select(Alias)):
                behind |= {a.version_id} if a.version_id else set()
                behind |= {a.candidate_id} if a.candidate_id and a.split > 0 else set()
            states = {v.id: v.state.value for v in session.scalars(select(ModelVersion))}
        assert {v for v, st in states.items() if st == "serving"} == behind, states
        for vid, st in states.items():  # every other state follows from the facts too
            with self.db.read_session() as session:
                row = session.get(ModelVersion, vid)
                assert st == state_of(row, vid in behind).value, (vid, st)


def test_every_kind_of_move_keeps_states_log_and_events_in_step(
    db: Database, s: Settings, versions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2, v3, v4 = versions
    ledger = Ledger(db)
    api = TestClient(create_app(s, db, watch_inbox=False))
    for key, value in {"LEARNLOOP_DATABASE_URL": db.url, "LEARNLOOP_DATA_DIR": str(s.data_dir)}.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()

    promote(db, s, v1, actor="alice")  # the registry (the daemon's way too)
    ledger.moved()
    assert promote(db, s, v1)["changed"] is False  # no-op: nothing written
    ledger.moved(0)

    r = api.put("/v1/aliases/learnloop", json={"version": v2, "reason": "beats v1"})  # serving's HTTP route
    assert r.status_code == 200, r.text
    ledger.moved()
    assert {v1: "archived", v2: "serving"}.items() <= _states(db).items()  # set no longer skips the states

    # A share of traffic for a version never evaluated needs force, as promote does.
    r = api.put("/v1/aliases/learnloop/split", json={"candidate": v3, "split": 1.0})
    assert (
        r.status_code == 409 and "no gate verdict" in r.json()["error"] and "force=true" in r.json()["error"]
    )
    ledger.moved(0)
    r = api.put("/v1/aliases/learnloop/split", json={"candidate": v3, "split": 0.25, "force": True})
    assert r.status_code == 200 and r.json()["candidate"] == v3
    ledger.moved()
    assert _states(db)[v3] == "serving"

    # A shadow-only candidate answers no user: no gate, and it is not serving.
    r = runner.invoke(cli, ["alias", "split", "learnloop", v4, "--shadow", "0.5"])
    assert r.exit_code == 0, r.output
    ledger.moved()
    assert _states(db)[v4] == "rejected" and _states(db)[v3] == "archived"  # v3 had a share: it served
    r = runner.invoke(cli, ["alias", "split", "learnloop", "none"])
    assert r.exit_code == 0, r.output
    ledger.moved()

    r = runner.invoke(cli, ["alias", "set", "learnloop", v4])  # the CLI's set: the same gate
    assert r.exit_code == 1 and "gate said reject" in r.output and "--force" in r.output
    ledger.moved(0)

    r = api.post("/v1/aliases/rollback", json={"reason": "v2 slower"})  # alias routes live with aliases
    assert r.status_code == 200 and r.json()["version_id"] == v1
    ledger.moved()

    restore(db, s, v2, serve=True, actor="bob")  # restore --serve: head and alias in one transaction
    ledger.moved()
    assert _states(db)[v2] == "serving"

    r = api.post(f"/ui/versions/{v1}/promote", headers={"X-Learnloop-Action": "1"})  # the dashboard
    assert r.status_code == 200, r.text
    ledger.moved()
    r = api.post("/ui/aliases/learnloop/rollback", headers={"X-Learnloop-Action": "1"})
    assert r.status_code == 200, r.text
    ledger.moved()

    move(db, s, "orders", "promote", v1)  # a loop's own alias: v1 serves on both
    ledger.moved()
    move(db, s, "learnloop", "set", "base")
    ledger.moved()
    assert _states(db)[v1] == "serving"  # still behind "orders"

    log = alias_history(db, "learnloop")
    assert [e["action"] for e in log[::-1]] == [
        "promote",
        "set",
        "split",
        "split",
        "split",
        "rollback",
        "restore",
        "promote",
        "rollback",
        "set",
    ]
    assert set(log[0]) == {"id", "alias", "action", "from", "to", "actor", "reason", "evaluation_id", "at"}
    assert api.get("/v1/aliases/history", params={"alias": "learnloop"}).json() == log  # one view everywhere
    r = runner.invoke(cli, ["versions", "history", "--alias", "learnloop", "--json"])
    assert [e["id"] for e in json.loads(r.output)] == [e["id"] for e in log]


def test_unknown_or_badly_named_aliases_are_refused(db: Database, s: Settings, versions: list[str]) -> None:
    v1 = versions[0]
    ledger = Ledger(db)
    api = TestClient(create_app(s, db, watch_inbox=False))
    r = api.put("/v1/aliases/staging/split", json={"candidate": v1, "split": 1.0})
    assert (
        r.status_code == 404 and "No alias 'staging'" in r.json()["error"] and "orders" in r.json()["error"]
    )
    for name in ("bad%20name", "base", "v0001", "-x"):
        r = api.put(f"/v1/aliases/{name}", json={"version": v1})
        assert r.status_code == 422, (name, r.text)
    with pytest.raises(NotFound, match="No alias 'nope'"):
        promote(db, s, v1, alias="nope")
    with pytest.raises(ValidationFailed, match="cannot be an alias"):
        move(db, s, "a\x00b", "set", v1)
    with pytest.raises(ValidationFailed, match="share > 0 or shadow > 0"):
        move(db, s, "learnloop", "split", v1, share=0.0)
    with pytest.raises(Conflict, match="gate said reject"):
        move(db, s, "learnloop", "split", versions[3], share=0.1)
    ledger.moved(0)
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Alias)) == 0


def _states(db: Database) -> dict[str, str]:
    with db.read_session() as session:
        return {v.id: v.state.value for v in session.scalars(select(ModelVersion))}


def test_migration_0004_repairs_states_left_by_moves_that_skipped_the_registry(db: Database) -> None:
    from learnloop.store import downgrade

    downgrade(db.engine, "0003")
    with db.session() as session:
        session.add_all(
            [
                # `alias set` moved learnloop v1 -> v2 without touching states: v1 stayed serving.
                ModelVersion(id="v0001", base_model="b", state="serving", ever_served=True, gate={}),
                ModelVersion(id="v0002", base_model="b", state="candidate", ever_served=False, gate={}),
                # Retention pruned v3's files and called it archived, though it never served.
                ModelVersion(id="v0003", base_model="b", state="archived", ever_served=False, gate={}),
                ModelVersion(
                    id="v0004", base_model="b", state="archived", gate={"passed": False, "verdict": "reject"}
                ),
                # A split's candidate with a share serves.
                ModelVersion(id="v0005", base_model="b", state="candidate", ever_served=False, gate={}),
                Alias(name="learnloop", version_id="v0002", candidate_id="v0005", split=0.2, shadow=0.0),
                AliasEvent(alias="learnloop", action="promote", from_version=None, to_version="v0001"),
                AliasEvent(alias="learnloop", action="set", from_version="v0001", to_version="v0002"),
            ]
        )
    db.upgrade()
    assert _states(db) == {
        "v0001": "archived",
        "v0002": "serving",
        "v0003": "candidate",
        "v0004": "rejected",
        "v0005": "serving",
    }
    with db.read_session() as session:
        assert {v.id for v in session.scalars(select(ModelVersion)) if v.ever_served} == {
            "v0001",
            "v0002",
            "v0005",
        }
