"""The training stage's config: the typed configuration of one run (defined with every other
setting, in ``learnloop.config.training``) and ``validate_config``."""

from __future__ import annotations

from typing import Any

from learnloop.config.training import (
    ALGORITHM_DEFAULTS,
    ROLLOUT_ALGORITHMS,
    AlgorithmDefaults,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    LoraConfig,
    RFTConfig,
    RolloutConfig,
    TrainConfig,
)

__all__ = [
    "ALGORITHM_DEFAULTS",
    "ROLLOUT_ALGORITHMS",
    "AlgorithmDefaults",
    "DPOConfig",
    "GRPOConfig",
    "KTOConfig",
    "LoraConfig",
    "RFTConfig",
    "RolloutConfig",
    "TrainConfig",
    "validate_config",
]


def validate_config(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """``data`` as a TrainConfig, or a ConfigError naming ``where`` and every bad field.

    Pydantic only: the daemon and the API check a config without importing torch.
    """
    from pydantic import ValidationError

    from learnloop.errors import ConfigError, problems_text

    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"Invalid training config ({where}): {problems_text(exc, limit=50)}") from None
