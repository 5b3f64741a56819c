"""Time windows and models on captured trajectories; per-source sample rates and the confident-answer rule."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from learnloop.capture import CaptureClient, traced
from learnloop.capture.sampling import Sampler
from learnloop.config import Settings
from learnloop.errors import ConfigError
from learnloop.store.db import Database
from learnloop.store.models import Trajectory
from learnloop.windows import WindowClock, window_id, window_seconds


@pytest.fixture
def make_client(settings: Settings, tmp_path: Path):
    clients: list[CaptureClient] = []

    def make(settings_: Settings = settings, **options) -> CaptureClient:
        options.setdefault("flush_interval", 0.05)
        options.setdefault("spool_dir", tmp_path / f"spool-{len(clients)}")
        client = CaptureClient(settings_, **options)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close(timeout=5)


def test_window_ids() -> None:
    t = dt.datetime(2026, 12, 2, 14, 37, 5, tzinfo=dt.UTC)
    assert window_id(t, window_seconds("1h")) == "2026-12-02T14"
    assert window_id(t, window_seconds("6h")) == "2026-12-02T12"
    assert window_id(t, window_seconds("1d")) == "2026-12-02"
    assert window_id(t, window_seconds("15m")) == "2026-12-02T14:30"
    assert (
        window_id(t.astimezone(dt.timezone(dt.timedelta(hours=5))), 3600) == "2026-12-02T14"
    )  # UTC, whatever the zone
    clock = WindowClock("1h")
    assert clock(t) == "2026-12-02T14" and clock(t + dt.timedelta(minutes=30)) == "2026-12-02T15"
    for bad in ("", "1w", "h", "0h", "-1h"):
        with pytest.raises(ValueError):
            window_seconds(bad)


def test_config_refuses_a_bad_window(settings: Settings) -> None:
    from learnloop.config import load_settings

    with pytest.raises(ConfigError, match="capture.window"):
        load_settings(capture={"window": "1 week"})


def test_window_and_model_on_recorder_decorator(db: Database, make_client, settings: Settings) -> None:
    client = make_client(
        settings.model_copy(update={"capture": settings.capture.model_copy(update={"window": "1d"})}),
        database=db,
    )
    with client.trajectory(agent="planner", model="gpt-x") as t:
        t.user("q")
        t.assistant("a")
    with client.trajectory(agent="coder", window="sprint-12") as u:
        u.user("q2")
        u.assistant("a2")

    @traced(scenario="add", agent="calc", model="tiny-1", window="w-7", client=client)
    def add(a: int, b: int) -> int:
        return a + b

    add(1, 2)
    assert client.flush(30)
    with db.read_session() as s:
        rows = {r.agent: r for r in s.query(Trajectory).all()}
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert rows["planner"].window_id == today and rows["planner"].model == "gpt-x"
    assert rows["coder"].window_id == "sprint-12"
    assert rows["calc"].window_id == "w-7" and rows["calc"].model == "tiny-1"


def _record(source: str | None = None, confidence: object = None) -> dict:
    rec: dict = {"id": "x", "messages": [], "metadata": {}}
    if source:
        rec["source"] = source
    if confidence is not None:
        rec["metadata"]["confidence"] = confidence
    return rec


def test_fifteen_percent_of_traffic_plus_every_confident_answer() -> None:
    # The two lines of learnloop.toml:
    # [capture] source_sample_rates = {production = 0.15}; keep_confident = 0.8
    cap = Settings(capture={"source_sample_rates": {"production": 0.15}, "keep_confident": 0.8}).capture
    sampler = Sampler.from_settings(cap)
    sampler._random = random.Random(7).random
    plain = sum(sampler.keep(_record()) for _ in range(4000)) / 4000
    assert 0.12 < plain < 0.18
    assert all(sampler.keep(_record(confidence=c)) for c in (0.8, 0.95, 1))
    assert sum(sampler.keep(_record(confidence=0.5)) for _ in range(1000)) < 250
    # Sources not named keep the global rate (1.0 here): teacher traces are all kept.
    assert all(sampler.keep(_record("teacher")) for _ in range(200))


def test_confidence_rule_is_strict_about_types_and_can_be_turned_off() -> None:
    sampler = Sampler(0.0, default_rules=False, keep_confident=0.8)
    assert sampler.keep(_record(confidence=0.9))
    assert not sampler.keep(_record(confidence="0.9")) and not sampler.keep(_record(confidence=True))
    assert not Sampler(0.0, default_rules=False).keep(_record(confidence=0.99))


def test_per_source_rates_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        Sampler(1.0, source_rates={"prod": 0.5})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Sampler(1.0, source_rates={"production": 1.5})
    from learnloop.config import load_settings

    with pytest.raises(ConfigError, match="source_sample_rates"):
        load_settings(capture={"source_sample_rates": {"prod": 0.5}})


def test_client_applies_source_rates(db: Database, make_client, settings: Settings) -> None:
    cfg = settings.model_copy(
        update={"capture": settings.capture.model_copy(update={"source_sample_rates": {"production": 0.0}})}
    )
    client = make_client(cfg, database=db)
    kept = {}
    for name, source, conf in (("prod", None, None), ("teacher", "teacher", None), ("sure", None, 0.93)):
        with client.trajectory(
            scenario=name, source=source, metadata={"confidence": conf} if conf else None
        ) as t:
            t.user("q")
            t.assistant("a")
        kept[name] = t.id
    assert client.flush(30)
    with db.read_session() as s:
        stored = {r.scenario for r in s.query(Trajectory).all()}
    assert stored == {"teacher", "sure"}
