"""What every settings model shares: one strict base, and the one default both datasets and
training take. It imports nothing: the other config modules (``learnloop.config`` itself, ``loops``,
``training``) all build on it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# One default token length for datasets (what their length report checks) and training (what it
# truncates to), so a dataset that passes its report is not truncated by a run with default settings.
DEFAULT_MAX_LENGTH = 1024


class ConfigModel(BaseModel):
    """The base of every settings model: a misspelt key must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid")
