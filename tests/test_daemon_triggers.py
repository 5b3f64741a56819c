"""Triggers and readiness checks are registered functions: the built-ins in order, a user's own
from a module named in [daemon] trigger_modules, clear errors for unknown or clashing names."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from daemon_support import add, loop_settings, traces

from learnloop.config import Settings
from learnloop.daemon import loops
from learnloop.daemon.readiness import READINESS
from learnloop.daemon.triggers import TRIGGERS, trigger
from learnloop.errors import ConfigError
from learnloop.store.db import Database

PLUGIN = """
from learnloop.daemon import LoopCheck, readiness_check, trigger


@trigger("{name}_saturday")
def saturday(check: LoopCheck) -> str | None:
    if check.new_examples and check.now.weekday() == 5:
        return f"saturday batch: {{check.new_examples}} new {{check.unit}}"
    return None


@readiness_check("{name}_quiet_hours")
def quiet_hours(check: LoopCheck) -> tuple[bool, str]:
    return check.now.hour < 22, f"hour {{check.now.hour}} (cycles stop at 22:00)"
"""


def _plugin(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}_rules.py"
    path.write_text(textwrap.dedent(PLUGIN.format(name=name)))
    return path


def _with_plugin(settings: Settings, tiny: Path, plugin: Path, name: str, **triggers: object) -> Settings:
    s = loop_settings(
        settings,
        base_model=str(tiny),
        triggers={
            "min_new_examples": 100,
            "custom": [f"{name}_saturday"],
            "custom_checks": [f"{name}_quiet_hours"],
            **triggers,
        },
    )
    return s.model_copy(update={"daemon": s.daemon.model_copy(update={"trigger_modules": [str(plugin)]})})


def test_built_ins_are_registered_in_the_order_reasons_are_shown() -> None:
    builtin = [n for n in TRIGGERS.names() if n in ("threshold", "max_interval", "daily", "reward_drop")]
    assert builtin == ["threshold", "max_interval", "daily", "reward_drop"]
    checks = [
        "new_examples",
        "holdout",
        "groups",
        "reward_variance",
        "epochs",
        "disk",
        "base_model",
        "after_failure",
    ]
    assert [n for n in READINESS.names() if n in checks] == checks


def test_a_users_trigger_and_readiness_check_from_a_configured_module(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    name = f"a_{db.dialect}"  # one registry per process: each run registers its own names
    s = _with_plugin(settings, tiny_model_dir, _plugin(tmp_path, name), name)
    add(db, traces("a", 3))
    saturday_noon = dt.datetime(2030, 1, 5, 12, 0, tzinfo=dt.UTC)
    d = loops.check_loop(db, s, s.loops[0], now=saturday_noon)
    assert d.fire and d.triggers == ["saturday batch: 3 new traces"]
    assert d.reasons[-2:] == ["hour 12 (cycles stop at 22:00)", "saturday batch: 3 new traces"]
    late = loops.check_loop(db, s, s.loops[0], now=saturday_noon.replace(hour=23))
    assert not late.ready and not late.fire
    assert any(c.name == f"{name}_quiet_hours" and not c.ok for c in late.checks)
    weekday = loops.check_loop(db, s, s.loops[0], now=saturday_noon - dt.timedelta(days=2))
    assert not weekday.fire and weekday.ready  # nothing fires: 3 < 100 and not a Saturday
    # Another loop that does not name them runs the built-ins only.
    plain = loop_settings(settings, name="plain", base_model=str(tiny_model_dir))
    assert not any(
        "saturday" in r for r in loops.check_loop(db, plain, plain.loops[0], now=saturday_noon).reasons
    )


def test_unknown_names_and_missing_modules_say_what_is_registered(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    name = f"b_{db.dialect}"
    plugin = _plugin(tmp_path, name)
    s = _with_plugin(settings, tiny_model_dir, plugin, name, custom=[f"{name}_saturday", "nope"])
    with pytest.raises(
        ConfigError, match=rf"Unknown trigger\(s\) in triggers.custom: nope\. .*{name}_saturday"
    ):
        loops.check_loop(db, s, s.loops[0])
    gone = _with_plugin(settings, tiny_model_dir, tmp_path / "gone.py", name)
    with pytest.raises(ConfigError, match="trigger_modules: the file .*gone.py.* does not exist"):
        loops.check_loop(db, gone, gone.loops[0])
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    broken = _with_plugin(settings, tiny_model_dir, tmp_path / "broken.py", name)
    with pytest.raises(ConfigError, match="could not import .*broken.py.*RuntimeError: boom"):
        loops.check_loop(db, broken, broken.loops[0])


def test_names_cannot_clash() -> None:
    with pytest.raises(ConfigError, match="'threshold' is already registered"):

        @trigger("threshold")
        def mine(check: object) -> None:
            return None

    @trigger("clash_once")
    def first(check: object) -> None:
        return None

    with pytest.raises(ConfigError, match="already registered"):

        @trigger("clash_once")
        def second(check: object) -> None:
            return None


def test_the_daemon_refuses_to_start_with_an_unknown_name(db: Database, settings: Settings) -> None:
    from learnloop.daemon import Daemon

    s = loop_settings(settings, triggers={"custom_checks": ["nowhere"]})
    with pytest.raises(ConfigError, match=r"Unknown readiness check\(s\) in triggers.custom_checks: nowhere"):
        Daemon(s, db).prepare()


def test_a_cycle_waits_rather_than_pass_many_epochs_over_a_handful_of_examples(
    db: Database, settings: Settings, tiny_model_dir: Path
) -> None:
    """The user's case: 80 steps of 4 over 7 examples is 40 passes. The rule (triggers.max_epochs,
    10 by default): steps x grad_accum / ceil(examples / batch_size) passes at most."""
    s = loop_settings(
        settings,
        base_model=str(tiny_model_dir),
        train={"max_steps": 80, "batch_size": 4},
        triggers={"min_new_examples": 5},
    )
    add(db, traces("few", 7))
    d = loops.check_loop(db, s, s.loops[0])
    epochs = next(c for c in d.checks if c.name == "epochs")
    assert not epochs.ok and not d.ready and not d.fire and d.triggers  # the threshold fired; it waits
    assert epochs.reason == (
        "80 training steps over 7 traces would be 40.0 epochs (more than triggers.max_epochs = 10): "
        "waiting for 29 traces, or lower train.max_steps"
    )
    add(db, traces("more", 22))  # 29: ceil(29 / 4) = 8 micro-batches a pass, 80 / 8 = 10 passes
    d = loops.check_loop(db, s, s.loops[0])
    epochs = next(c for c in d.checks if c.name == "epochs")
    assert epochs.ok and d.ready and d.fire
    assert epochs.reason == "80 training steps over 29 traces: 10.0 epochs (at most 10)"

    # Unset, or a run sized in epochs rather than steps: no such check.
    off = loop_settings(
        settings, base_model=str(tiny_model_dir), train={"max_steps": 80}, triggers={"max_epochs": None}
    )
    by_epochs = loop_settings(settings, base_model=str(tiny_model_dir), train={"epochs": 3})
    for cfg in (off, by_epochs):
        assert "epochs" not in [c.name for c in loops.check_loop(db, cfg, cfg.loops[0]).checks]


def test_a_cycle_whose_deduplicated_dataset_is_too_small_warns(db: Database, settings: Settings) -> None:
    from types import SimpleNamespace

    from sqlalchemy import select

    from learnloop.daemon.cycle import _warn_epochs
    from learnloop.store.models import Event

    s = loop_settings(settings, train={"max_steps": 40, "batch_size": 2})
    ctx, job = SimpleNamespace(db=db), SimpleNamespace(id=7)
    _warn_epochs(ctx, job, s.loops[0], 20)  # 40 / 10 = 4 passes: fine
    _warn_epochs(ctx, job, s.loops[0], 3)  # 40 / 2 = 20 passes
    with db.read_session() as session:
        events = session.scalars(select(Event).where(Event.kind == "cycle.many_epochs")).all()
        assert len(events) == 1 and events[0].level == "warning"
        assert "40 training steps over 3 examples" in events[0].message and "20.0 epochs" in events[0].message
