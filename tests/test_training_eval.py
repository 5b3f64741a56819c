"""Held-out loss during training: every eval_every steps into metrics.jsonl,
then into the registered version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learnloop.errors import ConfigError
from learnloop.training.run import train
from training_support import SFT_ROWS, make_config, write_jsonl


def test_eval_loss_every_n_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    held_out = write_jsonl(tmp_path / "holdout.jsonl", SFT_ROWS[:3])
    config = make_config(
        tiny_model_dir, tmp_path, max_steps=6, eval_every=4, eval_dataset=str(held_out), checkpoint_every=3
    )
    result = train(config)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [4, 6]  # every 4 steps and the last
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0]  # the held-out rows are among the training rows: their loss must fall

    from learnloop.registry.versions import summarize_metrics

    summary = summarize_metrics(result.output_dir)
    assert summary["eval_loss"] == evals[-1] and summary["eval_curve"] == [[4, evals[0]], [6, evals[1]]]


def test_eval_every_needs_its_dataset(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        train(make_config(tiny_model_dir, tmp_path, max_steps=2, eval_every=1))
