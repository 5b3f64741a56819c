"""Shared helpers for the training tests: small fixed datasets and configs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SFT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "what is two plus two?"},
            {"role": "assistant", "content": "four."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "answer with yes or no."},
            {"role": "user", "content": "is the fox quick?"},
            {"role": "assistant", "content": "yes."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "hello!"},
            {"role": "assistant", "content": "hello! how can i help you today?"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "count"},
            {"role": "assistant", "content": "0 1 2 3 4 5 6 7 8 9"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "call the tool"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
            {"role": "assistant", "content": "the result is four."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "the quick brown fox"},
            {"role": "assistant", "content": "jumps over the lazy dog"},
        ]
    },
    {"messages": [{"role": "user", "content": "thank you"}, {"role": "assistant", "content": "goodbye."}]},
    {
        "messages": [
            {"role": "user", "content": "abc"},
            {"role": "assistant", "content": "defghijklmnopqrstuvwxyz"},
        ]
    },
]

DPO_ROWS = [
    {
        "prompt": [{"role": "user", "content": "what is two plus two?"}],
        "chosen": [{"role": "assistant", "content": "four."}],
        "rejected": [{"role": "assistant", "content": "maybe."}],
    },
    {
        "prompt": [{"role": "user", "content": "is the fox quick?"}],
        "chosen": [{"role": "assistant", "content": "yes."}],
        "rejected": [{"role": "assistant", "content": "no."}],
    },
    {"prompt": "say hello", "chosen": "hello! how can i help you today?", "rejected": "goodbye."},
    {
        "prompt": [{"role": "user", "content": "count"}],
        "chosen": [{"role": "assistant", "content": "0 1 2 3"}],
        "rejected": [{"role": "assistant", "content": "9 8 7"}],
    },
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_dict(
    tiny_model_dir: Path,
    tmp: Path,
    *,
    algorithm: str = "sft",
    rows: list[dict[str, Any]] | None = None,
    out: str = "run",
    **overrides: Any,
) -> dict[str, Any]:
    rows = rows if rows is not None else (SFT_ROWS if algorithm == "sft" else DPO_ROWS)
    data = write_jsonl(tmp / f"{algorithm}-{out}.jsonl", rows)
    cfg: dict[str, Any] = {
        "algorithm": algorithm,
        "base_model": str(tiny_model_dir),
        "dataset": str(data),
        "output_dir": str(tmp / out),
        "lora": {"r": 8, "alpha": 16},
        "batch_size": 4,
        "max_steps": 12,
        "learning_rate": 2e-2,
        "lr_scheduler": "constant",
        "checkpoint_every": 4,
        "keep_checkpoints": 2,
        "device": "cpu",
        "max_length": 64,
    }
    cfg.update(overrides)
    return cfg


def make_config(tiny_model_dir: Path, tmp: Path, **kw: Any):  # noqa: ANN201
    from learnloop.training.config import TrainConfig

    return TrainConfig.model_validate(config_dict(tiny_model_dir, tmp, **kw))


def adapter_weights(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def first_last_loss(metrics_path: Path, n: int = 3) -> tuple[float, float]:
    losses = [json.loads(line)["loss"] for line in metrics_path.read_text().splitlines()]
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def objective_for(tiny_model_dir: Path, algorithm: str = "sft", **overrides: Any):  # noqa: ANN201
    """(objective, tokenizer) for unit tests that need no dataset file or training run."""
    from learnloop.models.loading import load_tokenizer
    from learnloop.training.config import TrainConfig
    from learnloop.training.objective import get_objective

    cfg = TrainConfig.model_validate(
        {
            "algorithm": algorithm,
            "base_model": str(tiny_model_dir),
            "dataset": "unused.jsonl",
            "output_dir": "unused",
            "max_length": 64,
            **overrides,
        }
    )
    tok = load_tokenizer(tiny_model_dir)
    return get_objective(algorithm, cfg, tok), tok
