"""Config in one place, checked before compute: one strict base for every settings model, no import
cycle between the config modules, a loop's gate checked when the config loads, and no global
settings read by a caller that holds its own."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from daemon_support import loop_settings
from pydantic import BaseModel

from learnloop.config import Settings, load_settings
from learnloop.config.base import ConfigModel
from learnloop.daemon import loops
from learnloop.errors import ConfigError
from learnloop.store.db import Database
from learnloop.training.config import TrainConfig


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    for field in model.model_fields.values():
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                    seen.add(inner)
                    _models(inner, seen)
    return seen


def test_every_settings_model_forbids_unknown_keys_through_one_base() -> None:
    models = _models(Settings, set()) | _models(TrainConfig, {TrainConfig})
    assert len(models) > 15
    assert [m.__name__ for m in models if not issubclass(m, ConfigModel)] == []
    assert all(m.model_config.get("extra") == "forbid" for m in models)


def test_the_config_imports_no_stage() -> None:
    # The settings type the loops and a loop's training table, so those models live with them: no
    # import of the daemon or the training stage, hence no cycle back into the config.
    code = (
        "import sys, learnloop.config\n"
        "print(' '.join({m.split('.')[1] for m in sys.modules if m.startswith('learnloop.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "config" in loaded and loaded & {"daemon", "training", "store", "datasets", "models"} == set()


def test_a_loop_gate_is_checked_when_the_config_loads(settings: Settings, tmp_path: Path) -> None:
    toml = '[[loops]]\nname = "qa"\n[loops.gate]\nmargn = 0.1\nmin_examples = "many"\n'
    (tmp_path / "learnloop.toml").write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings()
    msg = str(err.value)
    assert "loops[0] (qa): gate:" in msg and "margn: Extra inputs are not permitted" in msg
    assert "min_examples" in msg and "the keys of [gate]: min_examples, metric, margin" in msg
    (tmp_path / "learnloop.toml").write_text(
        '[gate]\nmargin = 0.05\n[[loops]]\nname = "qa"\ngate = {min_examples = 5}\n'
    )
    loaded = load_settings()
    assert loaded.loops[0].gate == {"min_examples": 5}


def test_a_loop_check_finds_prepared_models_in_its_own_data_dir(
    sqlite_db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = settings.data_dir / "models" / "mymodel"
    prepared.mkdir(parents=True)
    (prepared / "config.json").write_text("{}")
    # The global settings (environment) point elsewhere: the check must not look there.
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(tmp_path / "elsewhere"))
    s = loop_settings(settings, base_model="mymodel")
    checks = {c.name: c for c in loops.check_loop(sqlite_db, s, s.loops[0]).checks}
    assert checks["base_model"].ok and checks["base_model"].reason == "base model mymodel present"
