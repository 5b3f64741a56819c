"""Helpers for the serving tests: tiny LoRA adapters that visibly change the tiny model's answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learnloop.store.models import ModelVersion


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Decode on one intra-op thread while the serving tests run.

    On a CPU shared with other busy processes, torch's thread pool spends its time waiting at
    barriers for descheduled workers: a 2 ms tiny-model step measured 0.2-1.5 s that way, 60x
    slower than on one thread.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_adapter(base_dir: Path, out: Path, *, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved as peft saves a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False: B is random too, so the adapter changes the output from the first step.
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


PROMPTS = [
    [{"role": "user", "content": "what is two plus two?"}],
    [
        {"role": "system", "content": "answer with yes or no."},
        {"role": "user", "content": "the quick brown fox?"},
    ],
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "0 1 2 3 4 5 6 7 8 9 10 11 12 abc def ghi jkl"}],
]


def version_row(vid: str, base: Path | str, path: Path, *, gate: str | None = "promote") -> ModelVersion:
    """A version row as the registry leaves one: its files' hashes, and a gate verdict (``promote``
    passes; ``reject`` fails; None: never evaluated). Alias moves check both, as promote does."""
    from learnloop.registry.files import hash_folder
    from learnloop.store.models import ModelVersion, VersionState

    verdict = (
        None
        if gate is None
        else {
            "passed": gate == "promote",
            "verdict": gate,
            "reasons": [] if gate == "promote" else ["win rate 0.41 < 0.5"],
        }
    )
    return ModelVersion(
        id=vid,
        base_model=str(base),
        artifact_path=str(path),
        files=hash_folder(path),
        gate=verdict,
        state=VersionState.rejected if gate == "reject" else VersionState.candidate,
    )
