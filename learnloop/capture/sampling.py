"""Which trajectories are kept: a sample rate (per source if you like), overridden by always-keep rules.

A rule is a plain function ``(record: dict) -> bool`` over the wire-format record (``messages``,
``metadata``, ``scores``, ``feedback``, ...). Built-ins keep anything with feedback, a negative
reward or an error, because those are the rare, informative cases a sample would mostly miss, and
(as the distillation systems did) every answer the teacher was confident about: metadata
``confidence`` at or above ``capture.keep_confident`` (0.8 by default).

"15% of production traffic plus every confident answer" is two lines of ``learnloop.toml``::

    [capture]
    source_sample_rates = { production = 0.15 }
    keep_confident = 0.8          # the default; unset it to drop the rule
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

KeepRule = Callable[[dict[str, Any]], bool]

SOURCES = ("production", "teacher", "synthetic", "served")


def has_feedback(record: dict[str, Any]) -> bool:
    return "feedback" in record


def has_error(record: dict[str, Any]) -> bool:
    return "error" in record.get("metadata", ())


def has_negative_reward(record: dict[str, Any]) -> bool:
    scores = record.get("scores")
    return bool(scores) and any(v < 0 for v in scores.values())


def confident(threshold: float = 0.8) -> KeepRule:
    """A rule keeping records whose metadata ``confidence`` is a number >= ``threshold``."""

    def is_confident(record: dict[str, Any]) -> bool:
        value = record.get("metadata", {}).get("confidence")
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= threshold

    is_confident.__name__ = f"confident_at_least_{threshold:g}"
    return is_confident


DEFAULT_KEEP_RULES: tuple[KeepRule, ...] = (has_feedback, has_error, has_negative_reward)


def check_source_rates(rates: Mapping[str, float]) -> None:
    """Refuse unknown sources and rates outside [0, 1] (a ValueError, which config validation reports)."""
    for source, rate in rates.items():
        if source not in SOURCES:
            raise ValueError(f"source_sample_rates: unknown source {source!r} (one of {', '.join(SOURCES)})")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"source_sample_rates.{source}: rate must be between 0 and 1, got {rate!r}")


class Sampler:
    """Keep a record if any rule says so, else with probability ``rate`` (or its source's rate).

    ``keep_if`` rules are added to the built-ins; pass ``default_rules=False`` to use only yours.
    ``source_rates`` maps a record's ``source`` to its own rate (records without a source are
    ``production``); ``keep_confident`` adds the confidence rule at that threshold.
    """

    def __init__(
        self,
        rate: float = 1.0,
        keep_if: Iterable[KeepRule] = (),
        *,
        default_rules: bool = True,
        source_rates: Mapping[str, float] | None = None,
        keep_confident: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        from learnloop.errors import ConfigError

        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"sample_rate must be between 0 and 1, got {rate!r}.")
        try:
            check_source_rates(source_rates or {})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.rate = rate
        self.source_rates = dict(source_rates or {})
        rules = (DEFAULT_KEEP_RULES if default_rules else ()) + tuple(keep_if)
        if keep_confident is not None:
            rules += (confident(keep_confident),)
        self.rules = rules
        self._random = (rng or random.Random()).random
        # Everything at 1.0: no rule needs to run (the common case costs one comparison).
        self._keep_all = rate >= 1.0 and all(r >= 1.0 for r in self.source_rates.values())

    @classmethod
    def from_settings(
        cls,
        capture: Any,
        rate: float | None = None,
        keep_if: Iterable[KeepRule] = (),
        *,
        default_rules: bool = True,
    ) -> Sampler:
        """The sampler ``[capture]`` describes; ``rate`` (when given) replaces ``capture.sample_rate``."""
        return cls(
            capture.sample_rate if rate is None else rate,
            keep_if,
            default_rules=default_rules,
            source_rates=capture.source_sample_rates,
            keep_confident=capture.keep_confident,
        )

    def rate_for(self, record: dict[str, Any]) -> float:
        return self.source_rates.get(record.get("source") or "production", self.rate)

    def keep(self, record: dict[str, Any]) -> bool:
        if self._keep_all:
            return True
        rate = self.rate_for(record) if self.source_rates else self.rate
        if rate >= 1.0:
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
        return self._random() < rate
