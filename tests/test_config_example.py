"""learnloop.example.toml lists every setting with its default and a comment,
and stays in sync with the model."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import learnloop
from learnloop.cli.main import cli
from learnloop.config import Settings, load_settings
from learnloop.config_example import example_toml, setting_paths

EXAMPLE = Path(learnloop.__file__).resolve().parents[1] / "learnloop.example.toml"
REGENERATE = "learnloop config --example > learnloop.example.toml"


def test_example_file_is_in_sync_with_the_settings_model() -> None:
    assert EXAMPLE.is_file(), f"learnloop.example.toml is missing; run `{REGENERATE}`"
    assert EXAMPLE.read_text() == example_toml(), f"learnloop.example.toml is out of date; run `{REGENERATE}`"


def test_every_setting_appears_with_a_comment() -> None:
    text = example_toml()
    lines = text.splitlines()
    for path in setting_paths():
        key = path.rsplit(".", 1)[-1]
        hits = [i for i, line in enumerate(lines) if line.lstrip("# ").startswith(f"{key} =")]
        assert hits, f"{path} is missing from the example"
        assert any(lines[i - 1].startswith("# ") and len(lines[i - 1]) > 3 for i in hits), (
            f"{path} has no description: give its Field a description=..."
        )


def test_the_example_loads_to_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("LEARNLOOP_")]:
        monkeypatch.delenv(key)
    tomllib.loads(EXAMPLE.read_text())  # valid TOML
    monkeypatch.setenv("LEARNLOOP_CONFIG", str(EXAMPLE))
    monkeypatch.chdir(tmp_path)
    from_file = load_settings()
    monkeypatch.delenv("LEARNLOOP_CONFIG")
    assert from_file.model_dump() == Settings().model_dump()


def test_regenerating_is_one_command() -> None:
    out = CliRunner().invoke(cli, ["config", "--example"])
    assert out.exit_code == 0 and out.output == example_toml()


def test_sections_other_branches_add_are_covered() -> None:
    """A list of tables (like [[loops]]) and required fields render as commented
    examples that stay valid TOML."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Loop(BaseModel):
        name: str = Field(description="Loop name.")
        algorithm: Literal["sft", "dpo"] = Field("sft", description="Algorithm.")

    class Alerts(BaseModel):
        """Where alerts go."""

        webhook: str | None = Field(None, description="Webhook URL.")
        min_level: str = Field("warning", description="Least level sent.")

    class Fake(BaseModel):
        alerts: Alerts = Field(default_factory=Alerts)
        loops: list[Loop] = Field(default_factory=list, description="Continuous-learning loops.")

    text = example_toml(Fake)
    assert "# [[loops]]" in text and "# name =   (required)" in text and '# algorithm = "sft"' in text
    assert (
        "[alerts]" in text and "# webhook =   (unset by default)" in text and 'min_level = "warning"' in text
    )
    assert tomllib.loads(text) == {"alerts": {"min_level": "warning"}}
    assert setting_paths(Fake) == ["alerts.webhook", "alerts.min_level", "loops.name", "loops.algorithm"]
