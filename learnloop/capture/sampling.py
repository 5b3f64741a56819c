"""Which trajectories are kept: a sample rate, overridden by always-keep rules.

A rule is a plain function ``(record: dict) -> bool`` over the wire-format record (``messages``,
``metadata``, ``scores``, ``feedback``, ...). Built-ins keep anything with feedback, a negative
reward or an error, because those are the rare, informative cases a sample would mostly miss.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

KeepRule = Callable[[dict[str, Any]], bool]


def has_feedback(record: dict[str, Any]) -> bool:
    return "feedback" in record


def has_error(record: dict[str, Any]) -> bool:
    return "error" in record.get("metadata", ())


def has_negative_reward(record: dict[str, Any]) -> bool:
    scores = record.get("scores")
    return bool(scores) and any(v < 0 for v in scores.values())


DEFAULT_KEEP_RULES: tuple[KeepRule, ...] = (has_feedback, has_error, has_negative_reward)


class Sampler:
    """Keep a record if any rule says so, else with probability ``rate``.

    ``keep_if`` rules are added to the built-ins; pass ``default_rules=False`` to use only yours.
    """

    def __init__(
        self,
        rate: float = 1.0,
        keep_if: Iterable[KeepRule] = (),
        *,
        default_rules: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            from learnloop.errors import ConfigError

            raise ConfigError(f"sample_rate must be between 0 and 1, got {rate!r}.")
        self.rate = rate
        self.rules = (DEFAULT_KEEP_RULES if default_rules else ()) + tuple(keep_if)
        self._random = (rng or random.Random()).random

    def keep(self, record: dict[str, Any]) -> bool:
        if self.rate >= 1.0:
            return True
        for rule in self.rules:
            try:
                if rule(record):
                    return True
            except Exception:  # a broken rule must not break the app: keep the record, say why
                import logging

                logging.getLogger("learnloop.capture").exception(
                    "learnloop capture: keep rule %r failed; keeping the trajectory", rule
                )
                return True
        return self._random() < self.rate
