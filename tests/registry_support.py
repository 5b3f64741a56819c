"""Helpers for the registry and evaluation tests: LoRA adapters on the tiny model
without training, held-out data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from learnloop.config import Settings
from learnloop.serving.backend import ChatRequest, ChatResult
from learnloop.store import Database, ingest


def make_adapter(base: Path, out: Path, *, seed: int = 0, scale: float = 1.0, r: int = 4) -> Path:
    """Save a LoRA adapter for ``base`` whose B matrices are random (so it changes the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False
        ),
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft.save_pretrained(out)
    return out


def make_run_dir(
    base: Path, run: Path, *, seed: int = 0, dataset: Path | None = None, init_adapter: Path | None = None
) -> Path:
    """A folder shaped like a finished `learnloop train run`: adapter/, metrics.jsonl, train_config.json."""
    run.mkdir(parents=True, exist_ok=True)
    make_adapter(base, run / "adapter", seed=seed)
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "loss": 2.0 - 0.1 * s,
                    "tokens_per_s": 100.0,
                    **({"eval_loss": 2.1 - 0.1 * s} if s % 2 == 0 else {}),
                }
            )
            + "\n"
            for s in range(1, 7)
        )
    )
    config: dict[str, Any] = {
        "algorithm": "sft",
        "base_model": str(base),
        "dataset": str(dataset or run / "data.jsonl"),
        "output_dir": str(run),
        "init_adapter": str(init_adapter) if init_adapter else None,
    }
    (run / "train_config.json").write_text(json.dumps(config))
    return run


def settings_for(settings: Settings, base: Path, **sections: Any) -> Settings:
    data = settings.model_dump()
    data["training"]["base_model"] = str(base)
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return Settings(**data)


PROMPTS = [
    "what is two plus two?",
    "is the fox quick?",
    "hello!",
    "count",
    "the quick brown fox",
    "thank you",
    "answer with yes or no.",
    "abc",
    "say hello",
    "what is json?",
    "give me a list",
    "how can i help you today?",
]


def add_holdout(
    db: Database, n: int = 12, *, scenario: str = "qa", source: str = "production", prefix: str = "h"
) -> list[str]:
    """``n`` held-out trajectories (split holdout) with a stored answer."""
    import random

    words = " ".join(PROMPTS).replace("?", "").replace("!", "").replace(".", "").split()
    rows = [
        {
            "id": f"{prefix}{i}",
            "scenario": scenario,
            "source": source,
            # Distinct word mixes: the held-out build drops near-duplicate prompts.
            "messages": [
                {"role": "user", "content": " ".join(random.Random(f"{prefix}{i}").sample(words, 8))},
                {"role": "assistant", "content": "four." if i % 2 else "yes."},
            ],
        }
        for i in range(n)
    ]
    with db.session() as session:
        ingest(session, {"trajectories": rows}, holdout_fraction=1.0)
    return [r["id"] for r in rows]


class ScriptedBackend:
    """A ServingBackend whose answers per model are given: the gate's logic on known rewards."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.loaded: dict[str, Path] = {}
        self.requests: list[tuple[str, ChatRequest]] = []

    def load_adapter(self, name: str, path: Path) -> None:
        self.loaded[name] = path

    def unload_adapter(self, name: str) -> None:
        self.loaded.pop(name, None)

    def list(self) -> list[str]:
        return ["base", *self.loaded]

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        self.requests.append((model, request))
        text = self.answers[model if model in self.answers else "base"]
        return [
            ChatResult(text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=len(text.split()))
        ]

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        yield from (r.text for r in self.chat(model, request))
