"""The length guardrail before training: measured with the model's tokenizer,
refusing when too much is cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from learnloop.cli.main import cli
from learnloop.config import DEFAULT_MAX_LENGTH, Settings
from learnloop.datasets.guardrails import (
    check_training_lengths,
    guard_training_lengths,
    training_conversations,
)
from learnloop.errors import TruncationRefused
from learnloop.models.loading import load_tokenizer
from learnloop.training.config import TrainConfig
from training_support import DPO_ROWS, SFT_ROWS, write_jsonl

LONG = {
    "messages": [
        {"role": "user", "content": "tell me a long story " * 12},
        {"role": "assistant", "content": "once upon a time " * 40},
    ]
}


def test_one_default_max_length() -> None:
    assert Settings().datasets.max_length == DEFAULT_MAX_LENGTH
    fields = TrainConfig.model_fields
    assert fields["max_length"].default == DEFAULT_MAX_LENGTH


def test_training_conversations_cover_every_format() -> None:
    assert len(training_conversations(SFT_ROWS[0])) == 1
    dpo = training_conversations(DPO_ROWS[2])  # string prompt / chosen / rejected
    assert [c[-1]["content"] for c in dpo] == ["hello! how can i help you today?", "goodbye."]
    grpo = training_conversations(
        {"prompt": [{"role": "user", "content": "q"}], "completions": ["a", "bb"], "rewards": [0, 1]}
    )
    assert len(grpo) == 2 and grpo[1][-1] == {"role": "assistant", "content": "bb"}


def test_check_counts_with_the_model_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS + [LONG] * 4)
    tok = load_tokenizer(tiny_model_dir)
    check = check_training_lengths(data, tokenizer=tok, max_length=64, max_truncated_share=0.05)
    rendered = tok.apply_chat_template(LONG["messages"], tokenize=False)
    exact = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert check.report["max"] == exact and check.report["truncated"] == 4 and not check.ok
    assert check.report["tokenizer"].startswith("hf:")
    with pytest.raises(TruncationRefused) as err:
        guard_training_lengths(data, tokenizer=tok, max_length=64, max_truncated_share=0.05)
    assert f"Set max_length to {check.suggested_max_length}" in str(
        err.value
    ) and "--allow-truncation" in str(err.value)
    assert check.suggested_max_length >= exact
    assert (
        guard_training_lengths(data, tokenizer=tok, max_length=64, allow_truncation=True).report["truncated"]
        == 4
    )
    assert guard_training_lengths(data, tokenizer=str(tiny_model_dir), max_length=exact).ok
    from learnloop.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="does not exist"):
        check_training_lengths(tmp_path / "nope.jsonl", tokenizer=tok, max_length=64)


def test_train_run_refuses_then_allow_truncation_runs(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("LEARNLOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LEARNLOOP_DATA_DIR", str(tmp_path / "data"))
    data = write_jsonl(tmp_path / "d.jsonl", SFT_ROWS[:2] + [LONG] * 2)
    args = [
        "train",
        "run",
        "--algorithm",
        "sft",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output-dir",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--max-steps",
        "1",
        "--max-length",
        "64",
    ]
    refused = CliRunner().invoke(cli, args)
    assert (
        refused.exit_code != 0
        and "would be truncated" in refused.output
        and "Set max_length to" in refused.output
    )
    assert "p95" in refused.output  # the percentile report came first
    assert not (tmp_path / "o" / "adapter").exists()
    allowed = CliRunner().invoke(cli, [*args, "--allow-truncation", "--json"])
    assert allowed.exit_code == 0, allowed.output
    lengths = json.loads(allowed.output.splitlines()[0])
    assert lengths["kind"] == "lengths" and lengths["ok"] is False and lengths["truncated"] == 2
    # max_length from the settings when neither the flags nor a config file set it.
    monkeypatch.setenv("LEARNLOOP_DATASETS__MAX_LENGTH", "80")
    again = CliRunner().invoke(
        cli,
        [a for a in args if a not in ("--max-length", "64")]
        + ["--output-dir", str(tmp_path / "p"), "--json"],
    )
    assert again.exit_code != 0 and "max_length 80" in again.output
