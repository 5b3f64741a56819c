"""Rollouts: the policy answers each prompt several times itself, and every answer is scored.

Online GRPO and rejection-sampling fine-tuning (RFT) are built from the same three pieces:

* ``prepare_prompt``: a record ``{"prompt": [...], ...}`` becomes token ids to continue. Optional
  keys: ``tools``; ``scenario``, ``tags``, ``metadata`` (what a reward function sees on its
  ``TrajectoryView``; any other key joins ``metadata``); ``completion`` (an answer the record already
  has, e.g. what was served) and ``reward`` (that answer's reward, when known).
* ``sample``: ``num_generations`` completions per prompt from the current policy, through the
  first stop token, with torch's global RNG (the loop seeds and checkpoints it, so a resumed run
  samples what an uninterrupted one would).
* ``RolloutScorer``: one reward per answer, from the registered ``@reward`` functions named in
  ``rollout.rewards`` (the same functions that score stored trajectories, imported from
  ``scoring.reward_modules`` by this process) and/or the group judge, which ranks the answers of one
  prompt against each other through any OpenAI-compatible endpoint. The aspects become one reward
  with the project's reward rule (``learnloop.scoring.combine``), under the ``[scoring]`` settings
  the config carries. The old ``grpo.reward_fn`` (``(prompt_messages, completion, **record_keys) ->
  float``) still works, with a warning that it is deprecated.

``SignalWatch`` stops a run whose first prompts give nothing to learn from (``NoLearningSignal``),
so a loop that cannot learn says so instead of spending a cycle on zero gradients.

Nothing here imports the store: the training process gets prompts and settings, never a database.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from learnloop.errors import ConfigError, NoLearningSignal
from learnloop.training.config import RolloutConfig
from learnloop.training.lm import IGNORE, as_messages, record_error, tokenize_chat

# Score sources the reward rule classes aspects by (see learnloop/scoring/combine.py).
FUNCTION_SOURCE = "heuristic"  # a registered reward function: a user's verifier is explicit
JUDGE_SOURCE = "judge"
LEGACY_SOURCE = "env"  # what an app's own reward is stored as
JUDGE_ASPECT = "judge"
LEGACY_ASPECT = "reward_fn"
JUDGE_KEY_ENV = "LEARNLOOP_SCORING__JUDGE_API_KEY"

# Record keys with a meaning of their own; any other key is passed to reward functions as metadata.
_OWN_KEYS = frozenset({"prompt", "tools", "completion", "reward", "scenario", "tags", "metadata", "id"})

LegacyRewardFn = Callable[..., float]


# --------------------------------------------------------------------------------------- prompts


@dataclass
class RolloutPrompt:
    """One prepared rollout record."""

    ids: list[int]  # the prompt rendered with the generation prompt
    messages: list[dict[str, Any]]
    tools: list[Any] | None
    scenario: str | None
    tags: list[str]
    metadata: dict[str, Any]
    legacy_extras: dict[str, Any]  # record keys for an old-style reward_fn
    given: list[dict[str, Any]] | None = None  # the record's own answer (assistant messages)
    given_rows: tuple[list[int], list[int]] | None = None  # its (input_ids, labels)
    given_reward: float | None = None


def prepare_prompt(
    record: dict[str, Any],
    line: int,
    tokenizer: Any,
    *,
    max_length: int,
    with_given: bool = False,
) -> RolloutPrompt | None:
    """Validate and tokenize one rollout record; None when the prompt leaves no room to answer."""
    if "prompt" not in record:
        raise record_error(line, "prompt", "is missing (rollout records need 'prompt')")
    prompt = as_messages(record["prompt"], line, "prompt", "user")
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise record_error(line, "tools", "must be a list of tool definitions")
    scenario = record.get("scenario")
    if scenario is not None and not isinstance(scenario, str):
        raise record_error(line, "scenario", "must be a string")
    tags = record.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise record_error(line, "tags", "must be a list of strings")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise record_error(line, "metadata", "must be an object")
    extra = {k: v for k, v in record.items() if k not in _OWN_KEYS}
    text = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) + 1 > max_length:
        return None  # no room to generate even one token
    out = RolloutPrompt(
        ids=ids,
        messages=prompt,
        tools=tools,
        scenario=scenario,
        tags=tags,
        metadata={**extra, **metadata},
        legacy_extras={k: v for k, v in record.items() if k not in ("prompt", "tools", "completion")},
    )
    if with_given and record.get("completion") is not None:
        given = as_messages(record["completion"], line, "completion", "assistant")
        if not any(m["role"] == "assistant" for m in given):
            raise record_error(line, "completion", "has no assistant message")
        reward = record.get("reward")
        if reward is not None:
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
                raise record_error(line, "reward", f"must be a finite number, got {reward!r}")
            out.given_reward = float(reward)
        rows = tokenize_chat(
            tokenizer, prompt + given, tools=tools, train_from=len(prompt), max_length=max_length
        )
        if any(label != IGNORE for label in rows[1][1:]):
            out.given, out.given_rows = given, rows
    return out


def collate_prompts(prompts: Sequence[RolloutPrompt], pad_id: int) -> dict[str, Any]:
    """Left-padded prompt ids (generation appends at the right end of every row)."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p.ids) :] = torch.tensor(p.ids, dtype=torch.long)
        mask[i, width - len(p.ids) :] = 1
    return {"prompt_ids": ids, "prompt_mask": mask, "prompts": list(prompts)}


# --------------------------------------------------------------------------------------- sampling


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end an answer: the model's generation config's and the tokenizer's EOS."""
    stop: set[int] = set()
    for src in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(src, int):
            stop.add(src)
        elif isinstance(src, (list, tuple)):
            stop.update(int(s) for s in src)
    return stop


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    batch: dict[str, Any],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    max_length: int,
    pad_id: int,
) -> list[list[int]]:
    """``n`` completions (token ids, through the first stop token) per prompt, prompt-major."""
    ids = batch["prompt_ids"].repeat_interleave(n, dim=0)
    mask = batch["prompt_mask"].repeat_interleave(n, dim=0)
    room = max_length - max(len(p.ids) for p in batch["prompts"])
    stop = stop_ids(model, tokenizer)
    was_training = model.training
    model.eval()  # no LoRA dropout while sampling: sample from the policy itself
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max(1, min(max_new_tokens, room)),
            pad_token_id=pad_id,
            eos_token_id=sorted(stop) or None,
        )
    finally:
        model.train(was_training)
    completions = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        completions.append(row[:cut])  # the stop token is trained too, so the policy learns to stop
    return completions


def no_update(model: Any, device: torch.device, metrics: dict[str, float]) -> Any:
    """The step's output when no prompt of the micro-batch gave a learning signal. A zero loss over
    every trainable parameter keeps loss.backward() valid and gives every rank the same (zero)
    gradients to all-reduce."""
    from learnloop.training.objective import StepOutput

    params = [p for p in model.parameters() if p.requires_grad]
    loss = sum((p.sum() for p in params), torch.zeros((), device=device)) * 0.0
    return StepOutput(loss=loss, tokens=0, metrics=metrics)


# --------------------------------------------------------------------------------------- rewards


def load_reward_fn(spec: str) -> LegacyRewardFn:
    """Import ``'package.module:function'`` (or ``'path/to/file.py:function'``);
    ConfigError naming what went wrong."""
    from learnloop.importing import import_object

    try:
        fn = import_object(spec)
    except ValueError:
        raise ConfigError(f"grpo.reward_fn {spec!r} must look like 'package.module:function'.") from None
    except AttributeError as exc:
        raise ConfigError(f"grpo.reward_fn {spec!r}: {exc}.") from None
    except Exception as exc:  # ImportError, or the module itself failing on import
        module = spec.rpartition(":")[0]
        raise ConfigError(
            f"grpo.reward_fn {spec!r}: cannot import module {module!r} ({type(exc).__name__}: {exc})."
        ) from exc
    if not callable(fn):
        raise ConfigError(f"grpo.reward_fn {spec!r} is not callable.")
    return fn


def reward_params(fn: LegacyRewardFn) -> tuple[set[str] | None, set[str]]:
    """(keyword names ``fn`` accepts beyond (prompt, completion), None = anything via **kwargs;
    the names it requires). Lets a plain ``f(prompt, completion)`` ignore extra record keys instead of
    crashing on them, and a record missing a required key fail at load time, naming its line."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None, set()
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    extra = [p for p in positional[2:] if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    extra += [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = {p.name for p in extra if p.default is inspect.Parameter.empty}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, required
    return {p.name for p in extra}, required


def _number(value: Any, who: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)  # verifiers often answer True/False; that is a 0/1 reward
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{who} returned {value!r}; it must return a finite number (or None).")
    return float(value)


@dataclass
class Candidate:
    """One answer to a prompt: sampled by the policy, or the record's own."""

    messages: list[dict[str, Any]]
    text: str
    given_reward: float | None = None  # the record's reward for its own answer: used as is


@dataclass
class GroupScores:
    rewards: list[float | None]  # None: no reward function applied to that answer
    aspects: list[dict[str, float]] = field(default_factory=list)


class RolloutScorer:
    """Scores the answers of one prompt with the configured rewards; see the module docstring."""

    def __init__(self, rollout: RolloutConfig, legacy_spec: str | None = None) -> None:
        self.settings = rollout.scoring.model_copy(update=_judge_key_from_env(rollout.judge))
        self.functions: list[Any] = []
        if rollout.rewards:
            from learnloop.scoring.registry import get, load_modules

            load_modules(self.settings.reward_modules)
            self.functions = get(rollout.rewards)
        self.client: Any = None
        if rollout.judge:
            from learnloop.scoring.judge import OpenAICompatibleClient

            self.client = OpenAICompatibleClient.from_settings(self.settings)
        self.legacy_spec = legacy_spec
        self.legacy: LegacyRewardFn | None = None
        self.legacy_kwargs: set[str] | None = None
        self.legacy_required: set[str] = set()
        if legacy_spec:
            warnings.warn(
                f"grpo.reward_fn ({legacy_spec!r}) is deprecated: register the function with "
                "@learnloop.scoring.reward (it takes a TrajectoryView: t.prompt, t.completion, t.metadata) "
                "and name it in rollout.rewards, with its module in rollout.scoring.reward_modules.",
                FutureWarning,  # shown to end users by default, unlike DeprecationWarning
                stacklevel=2,
            )
            self.legacy = load_reward_fn(legacy_spec)
            self.legacy_kwargs, self.legacy_required = reward_params(self.legacy)
        self.sources = {f.name: FUNCTION_SOURCE for f in self.functions}
        self.sources[JUDGE_ASPECT] = JUDGE_SOURCE
        self.sources[LEGACY_ASPECT] = LEGACY_SOURCE

    def check_record(self, prompt: RolloutPrompt, line: int) -> None:
        """A record missing what an old-style reward_fn requires fails at load, naming its line."""
        missing = sorted(self.legacy_required - prompt.legacy_extras.keys())
        if missing:
            raise record_error(
                line, missing[0], f"is missing (grpo.reward_fn {self.legacy_spec!r} requires it)"
            )
        if self.legacy_kwargs is not None:
            prompt.legacy_extras = {k: v for k, v in prompt.legacy_extras.items() if k in self.legacy_kwargs}

    def _view(self, prompt: RolloutPrompt, candidate: Candidate, index: int) -> Any:
        from learnloop.scoring.view import TrajectoryView

        return TrajectoryView(
            id=f"rollout-{index}",
            messages=[*prompt.messages, *candidate.messages],
            scenario=prompt.scenario,
            tools=prompt.tools,
            metadata=prompt.metadata,
            tags=prompt.tags,
            config=self.settings,
        )

    def score(self, prompt: RolloutPrompt, candidates: Sequence[Candidate]) -> GroupScores:
        """One reward per candidate (None where nothing applied), by the project's reward rule."""
        return self.score_groups([(prompt, candidates)])[0]

    def score_groups(self, groups: Sequence[tuple[RolloutPrompt, Sequence[Candidate]]]) -> list[GroupScores]:
        """Score several prompts' groups; the judge is asked about the groups concurrently."""
        judged = self._judge_all(groups) if self.client is not None else [None] * len(groups)
        return [
            self._combine(prompt, candidates, judge_scores)
            for (prompt, candidates), judge_scores in zip(groups, judged, strict=True)
        ]

    def _combine(
        self, prompt: RolloutPrompt, candidates: Sequence[Candidate], judge_scores: list[float] | None
    ) -> GroupScores:
        from learnloop.scoring.combine import combine

        out = GroupScores(rewards=[])
        scored = [i for i, c in enumerate(candidates) if c.given_reward is None]
        for i, c in enumerate(candidates):
            if c.given_reward is not None:
                out.rewards.append(c.given_reward)
                out.aspects.append({})
                continue
            view = self._view(prompt, c, i)
            aspects: dict[str, float] = {}
            for fn in self.functions:
                try:
                    value = fn(view)
                except Exception as exc:
                    raise ConfigError(
                        f"Reward function {fn.name!r} failed on a sampled answer "
                        f"({type(exc).__name__}: {exc})."
                    ) from exc
                value = _number(value, f"Reward function {fn.name!r}")
                if value is not None:
                    aspects[fn.name] = value
            if judge_scores is not None:
                aspects[JUDGE_ASPECT] = judge_scores[scored.index(i)]
            if self.legacy is not None:
                aspects[LEGACY_ASPECT] = self._legacy(prompt, c.text)
            out.aspects.append(aspects)
            out.rewards.append(combine(aspects, self.settings, self.sources) if aspects else None)
        return out

    def _legacy(self, prompt: RolloutPrompt, text: str) -> float:
        assert self.legacy is not None
        try:
            value = self.legacy(prompt.messages, text, **prompt.legacy_extras)
        except Exception as exc:
            raise ConfigError(
                f"grpo.reward_fn {self.legacy_spec!r} failed on a completion ({type(exc).__name__}: {exc})."
            ) from exc
        number = _number(value, f"grpo.reward_fn {self.legacy_spec!r}")
        if number is None:
            raise ConfigError(
                f"grpo.reward_fn {self.legacy_spec!r} returned None; it must return a finite number."
            )
        return number

    def _judge_all(
        self, groups: Sequence[tuple[RolloutPrompt, Sequence[Candidate]]]
    ) -> list[list[float] | None]:
        """The judge's score of every not-yet-rewarded candidate, group by group (several at once)."""
        from learnloop.scoring.judge import JudgeError, judge_group

        def ask(group: tuple[RolloutPrompt, Sequence[Candidate]]) -> list[float] | None:
            prompt, candidates = group
            views = [self._view(prompt, c, i) for i, c in enumerate(candidates) if c.given_reward is None]
            if not views:
                return None
            if len(views) == 1:
                raise ConfigError(
                    "The group judge compares answers: it needs at least two per prompt "
                    "(rollout.num_generations >= 2)."
                )
            try:
                scores, _ = judge_group(self.client, views, self.settings)
            except JudgeError as exc:
                raise JudgeError(
                    f"The group judge ({self.settings.judge_base_url}, model {self.settings.judge_model}) "
                    f"failed on a group of {len(views)} answers: {exc}"
                ) from exc
            return [s for s, _ in scores]

        workers = max(1, min(self.settings.judge_concurrency, len(groups)))
        if workers == 1:
            return [ask(g) for g in groups]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(ask, groups))

    def describe(self) -> str:
        parts = [f.name for f in self.functions]
        if self.client is not None:
            parts.append(f"judge {self.settings.judge_model}")
        if self.legacy_spec:
            parts.append(self.legacy_spec)
        return " + ".join(parts)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _judge_key_from_env(judge: bool) -> dict[str, Any]:
    key = os.environ.get(JUDGE_KEY_ENV) if judge else None
    from pydantic import SecretStr

    return {"judge_api_key": SecretStr(key)} if key else {}


# --------------------------------------------------------------------------------------- signal


class SignalWatch:
    """Counts prompts with and without a learning signal; stops a run that never finds one.

    Until the first prompt with a signal, at most ``min(limit, prompts in the dataset)`` flat
    prompts are allowed: then ``NoLearningSignal``. The counts are checkpointed with the run (the
    loop saves ``state_dict``), so a resumed run remembers that it already learned something.
    """

    def __init__(self, limit: int, what: str, advice: str) -> None:
        self.limit = limit
        self.what = what
        self.advice = advice
        self.prompts = 0  # prompts in the dataset (set once loaded)
        self.flat = 0
        self.signal = 0
        self.rewards_seen: set[float] = set()
        self.best: float | None = None

    def observe(self, has_signal: bool, rewards: Sequence[float | None]) -> None:
        if has_signal:
            self.signal += 1
        else:
            self.flat += 1
        for r in rewards:
            if r is not None:
                if len(self.rewards_seen) < 8:
                    self.rewards_seen.add(round(r, 4))
                self.best = r if self.best is None else max(self.best, r)

    def check(self, scorer: str) -> None:
        limit = min(self.limit, self.prompts) if self.prompts else self.limit
        if self.signal or self.flat < limit:
            return
        stats = {"flat_prompts": float(self.flat)}
        if self.best is None:
            raise NoLearningSignal(
                f"Nothing to learn: no reward applied to any answer of the first {self.flat} prompts "
                f"(every one of {scorer} returned None). Check that the records carry what the functions "
                "look at (scenario, tags, metadata) and that they are the right functions.",
                stats,
            )
        seen = ", ".join(f"{r:g}" for r in sorted(self.rewards_seen))
        raise NoLearningSignal(
            f"Nothing to learn: in the first {self.flat} prompts {self.what} "
            f"(rewards seen: {seen}; scored by {scorer}). {self.advice}",
            {**stats, "best_reward": self.best},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"flat_prompts": self.flat, "signal_prompts": self.signal}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flat = int(state.get("flat_prompts", 0))
        self.signal = int(state.get("signal_prompts", 0))


__all__ = [
    "Candidate",
    "GroupScores",
    "RolloutPrompt",
    "RolloutScorer",
    "SignalWatch",
    "collate_prompts",
    "load_reward_fn",
    "no_update",
    "prepare_prompt",
    "reward_params",
    "sample",
    "stop_ids",
]
