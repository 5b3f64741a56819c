"""Crash-safe checkpoints: write to a temp folder, fsync, rename to ``checkpoint-<step>``, then
write and fsync a ``COMMITTED.json`` marker (step + file hashes).

A folder without the marker (or whose files no longer match it) is torn: a crash hit it while it
was written. Resume uses only the newest committed checkpoint and removes torn ones. Unlike
transformers' Trainer, which resumes from the highest-numbered folder whatever its state.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learnloop import paths
from learnloop.durable import fsync_dir, fsync_file, fsync_tree

MARKER = paths.CHECKPOINT_MARKER
# Version of the checkpoint layout, kept in trainer_state.json and the marker. 1 = the layout before
# versions were written (the same files; read as is). Bump it when the layout changes and teach
# check_format to read or clearly refuse the older one.
FORMAT_VERSION = 2
_REQUIRED_STATE = ("position", "dataset_sha256", "algorithm")
STATE_FILE = paths.CHECKPOINT_STATE_FILE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Write and commit ``checkpoint-<step>``; returns its path. ``state`` is JSON (position, step ...)."""
    final = paths.checkpoint_dir(output_dir, step)
    if (final / MARKER).exists():
        return final  # already committed at this step (e.g. a periodic one coinciding with the last step)
    tmp = output_dir / f"{paths.TMP_CHECKPOINT_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / paths.OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), tmp / paths.SCHEDULER_FILE)
    torch.save(rng_state(), tmp / paths.RNG_FILE)
    (tmp / STATE_FILE).write_text(
        json.dumps({**state, "step": step, "format_version": FORMAT_VERSION}, indent=2)
    )
    fsync_tree(tmp)
    if final.exists():  # a torn folder of the same step from a crashed run
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(output_dir)
    hashes = {str(p.relative_to(final)): _sha256(p) for p in sorted(final.rglob("*")) if p.is_file()}
    marker_tmp = final / f".{MARKER}.tmp"
    with open(marker_tmp, "w") as fh:
        json.dump({"step": step, "format_version": FORMAT_VERSION, "files": hashes}, fh, indent=2)
        fsync_file(fh)
    os.replace(marker_tmp, final / MARKER)
    fsync_dir(final)
    return final


def is_committed(path: Path, *, verify: bool = True) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return False
    if not verify:
        return True
    for rel, digest in marker.get("files", {}).items():
        f = path / rel
        if not f.is_file() or _sha256(f) != digest:
            return False
    return True


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            m = paths.CHECKPOINT_NAME.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def clean_torn(output_dir: Path) -> list[Path]:
    """Remove temp folders and checkpoints without a valid marker; returns what was removed."""
    removed = []
    if not output_dir.is_dir():
        return removed
    for p in output_dir.iterdir():
        if p.is_dir() and p.name.startswith(paths.TMP_CHECKPOINT_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for _, p in list_checkpoints(output_dir):
        if not is_committed(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def latest_checkpoint(output_dir: Path) -> Checkpoint | None:
    """The newest committed checkpoint (torn ones are skipped), or None."""
    for step, path in reversed(list_checkpoints(output_dir)):
        if is_committed(path):
            return Checkpoint(path=path, step=step, state=json.loads((path / STATE_FILE).read_text()))
    return None


def check_format(ckpt: Checkpoint) -> int:
    """The checkpoint's format version if this code can resume from it;
    ConfigError saying why not otherwise."""
    from learnloop.errors import ConfigError

    version = ckpt.state.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{ckpt.path} has checkpoint format {version!r}, newer than this learnloop reads "
            f"({FORMAT_VERSION}). Upgrade learnloop, or start over in a new output_dir."
        )
    missing = [k for k in _REQUIRED_STATE if k not in ckpt.state]
    needed = (
        f"adapter/{paths.ADAPTER_WEIGHTS_FILE}",
        paths.OPTIMIZER_FILE,
        paths.SCHEDULER_FILE,
        paths.RNG_FILE,
    )
    files = [f for f in needed if not (ckpt.path / f).is_file()]
    if missing or files:
        raise ConfigError(
            f"{ckpt.path} (checkpoint format {version}) cannot be resumed: "
            f"it lacks {', '.join(missing + files)}. "
            f'Start a new output_dir, with init_adapter = "{ckpt.adapter_dir}" to keep its weights.'
        )
    return version


def load_training_state(
    ckpt: Checkpoint, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """Put the adapter weights, optimizer, scheduler and RNG states of ``ckpt`` back in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(ckpt.adapter_dir / paths.ADAPTER_WEIGHTS_FILE))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise RuntimeError(f"checkpoint {ckpt.path} has adapter weights this model lacks: {missing[:3]}")
    optimizer.load_state_dict(torch.load(ckpt.path / paths.OPTIMIZER_FILE, weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt.path / paths.SCHEDULER_FILE, weights_only=False))
    restore_rng(torch.load(ckpt.path / paths.RNG_FILE, weights_only=False))


def prune(output_dir: Path, keep: int) -> None:
    """Keep the ``keep`` newest committed checkpoints."""
    committed = [(s, p) for s, p in list_checkpoints(output_dir) if is_committed(p, verify=False)]
    for _, p in committed[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
