"""Config locks: the settings a loop's adapters cannot survive, fixed by its first trained version.

A changed locked setting refuses the loop (its checks, its manual runs, the daemon's start) with
the key, the locked value and what to do instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from learnloop.config import Settings
from learnloop.config.loops import LoopConfig, base_model_of
from learnloop.errors import ConfigError, LearnloopError
from learnloop.store.db import Database
from learnloop.store.models import LoopState
from learnloop.training.config import LoraConfig


def lock_values(settings: Settings, loop: LoopConfig) -> dict[str, Any]:
    """The settings an adapter cannot survive, as this config has them."""
    lora = LoraConfig.model_validate(loop.train.get("lora", {}))
    base = base_model_of(settings, loop)
    return {
        "base_model": base,
        "max_length": loop.max_length,
        "lora.r": lora.r,
        "lora.alpha": lora.alpha,
        "lora.target_modules": lora.target_modules,
        "chat_template": chat_template_hash(base, settings.data_dir),
    }


def chat_template_hash(base_model: str, data_dir: Path | None = None) -> str | None:
    """sha256 of the base model's chat template (None when the model is not on disk yet)."""
    try:
        from learnloop.models.prepared import resolve_base_model

        folder = resolve_base_model(base_model, data_dir)
    except LearnloopError:
        return None
    template = None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text()
    else:
        try:
            template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
        except (OSError, json.JSONDecodeError):
            template = None
    if template is None:
        return None
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def check_lock(db: Database, settings: Settings, loop: LoopConfig) -> None:
    """Refuse a changed locked setting, naming the key, the locked value and what to do instead."""
    with db.read_session() as s:
        row = s.get(LoopState, loop.name)
        locked = dict(row.locked or {}) if row else {}
    if not locked:
        return
    now = lock_values(settings, loop)
    for key, value in locked.items():
        if key == "chat_template" and (value is None or now.get(key) is None):
            continue
        if key in now and now[key] != value:
            raise ConfigError(
                f"Loop {loop.name!r}: {key} is locked to {value!r} because the loop has trained versions on "
                f"it (configured now: {now[key]!r}); its adapters cannot carry over. "
                f"Put {key} back to {value!r}, or add a new [[loops]] entry with another name for the new "
                "setting (it starts from the base model)."
            )


def check_locks(db: Database, settings: Settings) -> None:
    for loop in settings.loops:
        check_lock(db, settings, loop)
