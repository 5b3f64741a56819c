"""What every settings model shares, in a module that imports nothing of learnloop's.

``learnloop.config`` (all of learnloop.toml), ``learnloop.daemon.config`` (``[[loops]]``,
``[daemon]``) and ``learnloop.training.config`` (one run's ``TrainConfig``) all build on it, so
none of them needs another to be imported first.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# One default token length for datasets (what their length report checks) and training (what it
# truncates to), so a dataset that passes its report is not truncated by a run with default settings.
DEFAULT_MAX_LENGTH = 1024


class ConfigModel(BaseModel):
    """The base of every settings model: a misspelt key must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid")
