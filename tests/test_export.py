"""Export: merged weights, GGUF read back by transformers with the merged model's
greedy answers, Ollama Modelfile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from registry_support import make_adapter, settings_for

from learnloop.config import Settings
from learnloop.errors import ConfigError
from learnloop.registry import export_version, register_version
from learnloop.store import Database

PROMPTS = [
    [{"role": "user", "content": "what is two plus two?"}],
    [
        {"role": "system", "content": "answer with yes or no."},
        {"role": "user", "content": "is the fox quick?"},
    ],
    [{"role": "user", "content": "hello!"}],
]


def _greedy(model_dir: Path, gguf_file: str | None = None, max_new_tokens: int = 16) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(model_dir, **kw)
    out = []
    for msgs in PROMPTS:
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        gen = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        out.append(gen[0].tolist())
    return out


def _sqlite_only(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("export reads one version row; the registry tests cover PostgreSQL")


def test_merged_and_gguf_round_trip(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _sqlite_only(db)
    s = settings_for(settings, tiny_model_dir)
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a", seed=5, scale=2.0))
    merged = export_version(db, s, v1, fmt="merged")
    assert merged.path == s.data_dir / "exports" / f"{v1}-merged" and "model.safetensors" in merged.files
    expected = _greedy(merged.path)
    assert expected != _greedy(tiny_model_dir)  # the adapter changed the answers: the merge is not a no-op

    for quant in ("f32", "f16"):
        out = export_version(db, s, v1, fmt="gguf", quant=quant, out=tmp_path / f"gguf-{quant}")
        gguf_name = f"{v1}-{quant}.gguf"
        assert out.files == [gguf_name] and not (out.path / ".merged").exists()
        assert _greedy(out.path, gguf_name) == expected, quant


def test_ollama_modelfile_and_unsupported_architecture(
    db: Database, settings: Settings, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sqlite_only(db)
    s = settings_for(settings, tiny_model_dir)
    v1 = register_version(db, s, adapter_dir=make_adapter(tiny_model_dir, tmp_path / "a"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no ollama binary: the command is printed instead
    out = export_version(db, s, v1, fmt="ollama", quant="q8_0", out=tmp_path / "ollama")
    modelfile = (out.path / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{v1}-q8_0.gguf\n")
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (
        out.ollama_command == f"ollama create learnloop-{v1} -f {out.path / 'Modelfile'}"
        and not out.ollama_created
    )

    # A non-llama base: a clear error naming what is supported, before any work.
    other = tmp_path / "qwen-like"
    other.mkdir()
    for f in tiny_model_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    from learnloop.registry.export import write_gguf

    with pytest.raises(ConfigError, match="supports the llama architecture.*'qwen2'"):
        write_gguf(other, tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="Unknown export format"):
        export_version(db, s, v1, fmt="onnx")


@pytest.mark.slow(seconds=230)
def test_gguf_q8_0_round_trip_on_smollm2(
    db: Database, settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """q8_0 on a real model: the tiny random model's near-tied logits cannot show it."""
    _sqlite_only(db)
    base = request.getfixturevalue("smollm2_prepared")["path"]  # after the skip: no wait for it
    s = settings_for(settings, base)
    v1 = register_version(db, s, adapter_dir=make_adapter(base, tmp_path / "a", seed=1, scale=0.05, r=4))
    merged = export_version(db, s, v1, fmt="merged", out=tmp_path / "merged")
    out = export_version(db, s, v1, fmt="gguf", quant="q8_0", out=tmp_path / "gguf")
    assert _greedy(out.path, out.files[0], max_new_tokens=12) == _greedy(merged.path, max_new_tokens=12)
