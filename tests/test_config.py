from __future__ import annotations

from pathlib import Path

import pytest

from learnloop.config import load_settings
from learnloop.errors import ConfigError


def test_precedence_defaults_toml_env(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().capture.sample_rate == 1.0
    (tmp_path / "learnloop.toml").write_text("[capture]\nsample_rate = 0.25\nbatch_size = 7\n")
    s = load_settings()
    assert (s.capture.sample_rate, s.capture.batch_size) == (0.25, 7)
    monkeypatch.setenv("LEARNLOOP_CAPTURE__SAMPLE_RATE", "0.5")
    s = load_settings()
    assert (s.capture.sample_rate, s.capture.batch_size) == (0.5, 7)


def test_default_database_is_sqlite_in_data_dir(
    settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(tmp_path / "dd"))
    assert load_settings().resolved_database_url == f"sqlite:///{tmp_path / 'dd' / 'learnloop.db'}"
    monkeypatch.setenv("LEARNLOOP_DATABASE_URL", "postgresql://u:secret@h/db")
    s = load_settings()
    assert s.resolved_database_url == "postgresql://u:secret@h/db"
    assert "secret" not in str(s.public_dict())


def test_every_problem_reported_at_once(settings, tmp_path: Path) -> None:
    (tmp_path / "learnloop.toml").write_text("[capture]\nsample_rate = 3\n[server]\nport = 0\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "capture.sample_rate" in str(err.value) and "server.port" in str(err.value)


def test_unknown_key_and_bad_toml_are_clear(settings, tmp_path: Path) -> None:
    (tmp_path / "learnloop.toml").write_text("[capture]\nsample_rat = 0.3\n")
    with pytest.raises(ConfigError, match="sample_rat"):
        load_settings()
    (tmp_path / "learnloop.toml").write_text("[capture\n")
    with pytest.raises(ConfigError, match="Could not read configuration"):
        load_settings()
