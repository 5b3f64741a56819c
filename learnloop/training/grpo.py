"""Group Relative Policy Optimization (GRPO): policy gradient with group-relative advantages.

Two modes, chosen by ``config.grpo.reward_fn``:

* Offline (no reward_fn): records are stored groups, exactly what ``learnloop datasets build grpo``
  exports: ``{"prompt": [messages], "completions": [[assistant messages], ...], "rewards": [floats]}``.
  Each completion's advantage is its reward minus the group mean (divided by the group std when
  ``scale_rewards``). Groups whose rewards are all equal teach nothing and are skipped at load time
  (``prepare`` returns None; counted in ``skipped_groups`` and in the loop's ``skipped``).
* Online (reward_fn = ``'package.module:function'``): records are ``{"prompt": [messages], ...}``;
  every micro-batch samples ``num_generations`` completions per prompt from the current policy,
  scores them with ``reward_fn(prompt_messages, completion_text, **extras)`` (extras = the record's
  other keys, e.g. ``answer``), and trains on them. Sampling uses torch's global RNG, which the loop
  seeds and checkpoints, so a seeded run is reproducible.

The loss is the PPO/GRPO clipped surrogate, averaged over every completion token of the micro-batch.
``old_logp`` is the current policy's log-prob detached: with one optimisation pass per batch the
ratio is exactly 1 and the loss's gradient is the plain advantage-weighted policy gradient; the clip
only bites if a batch is reused for several updates (``clipped_surrogate`` implements it for real
and is tested on hand-made tensors). No KL penalty: the reference would cost a second forward pass,
and recent GRPO practice (DAPO, Dr. GRPO, TRL's default beta=0) drops it.

A micro-batch of ``batch_size`` examples holds ``batch_size`` *groups*, i.e. up to
``batch_size * group size`` sequences in one forward pass; size ``batch_size`` accordingly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from learnloop.errors import ConfigError
from learnloop.training.config import TrainConfig
from learnloop.training.lm import IGNORE, as_messages, causal_lm, collate_ids, record_error, tokenize_chat
from learnloop.training.objective import Example, StepOutput, register_objective

# Same epsilon as the dataset builder's advantage report, so exported and trained advantages agree.
STD_EPS = 1e-4
# Rewards closer than this count as equal: float noise must not turn a tie into a +-1/eps advantage.
TIE_TOL = 1e-9

RewardFn = Callable[..., float]


# --------------------------------------------------------------------------------------- maths


def group_advantages(
    rewards: Sequence[float], *, scale: bool = True, eps: float = STD_EPS
) -> list[float] | None:
    """Advantages of one group: ``r - mean`` (``/ (std + eps)`` when ``scale``), population std as
    the dataset builder uses. None when every reward is equal: such a group has no learning signal."""
    n = len(rewards)
    if n < 2:
        return None
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    if max(rewards) - min(rewards) <= TIE_TOL:
        return None
    return [(r - mean) / (std + eps) if scale else r - mean for r in rewards]


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped objective, negated so it is a loss: ``-min(r*A, clip(r, 1-eps, 1+eps)*A)``
    with ``r = exp(logp - old_logp)``. Returns (per-token loss, bool mask of tokens where the clip is
    active, i.e. whose gradient is zero because the ratio already moved far enough in A's direction)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -torch.minimum(unclipped, clipped)
    is_clipped = ((ratio > 1.0 + clip_eps) & (advantages > 0)) | ((ratio < 1.0 - clip_eps) & (advantages < 0))
    return loss, is_clipped


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the labelled next tokens under ``softmax(logits / temperature)``; (values, row of each).

    Like ``lm.label_logprobs`` (only labelled positions go through ``lm_head``) but tempered: online
    completions are sampled at ``temperature``, so that is the policy whose log-probs we differentiate.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    return -F.cross_entropy(logits, targets[keep], reduction="none"), keep.nonzero()[:, 0]


# --------------------------------------------------------------------------------------- records


def _reward(value: Any, line: int, field: str) -> float:
    # bool is an int subclass; a True/False "reward" is more likely a bug in the export than a score.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise record_error(line, field, f"must be a finite number, got {value!r}")
    return float(value)


def load_reward_fn(spec: str) -> RewardFn:
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


def _reward_params(fn: RewardFn) -> tuple[set[str] | None, set[str]]:
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


# --------------------------------------------------------------------------------------- objective


class GRPOObjective:
    name = "grpo"

    def __init__(self, config: TrainConfig, tokenizer: Any) -> None:
        g = config.grpo
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        self.num_generations = g.num_generations
        self.max_new_tokens = g.max_new_tokens
        self.temperature = g.temperature
        self.clip_eps = g.clip_eps
        self.scale_rewards = g.scale_rewards
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.reward_spec = g.reward_fn
        self.reward_fn: RewardFn | None = load_reward_fn(g.reward_fn) if g.reward_fn else None
        self._reward_kwargs, self._reward_required = (
            _reward_params(self.reward_fn) if self.reward_fn else (None, set())
        )
        # Counted by prepare (offline) so a caller can report how much of the dataset carried no signal.
        self.skipped_groups = 0
        self.skipped_too_long = 0

    @property
    def online(self) -> bool:
        return self.reward_fn is not None

    # ------------------------------------------------------------------ prepare

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        if "prompt" not in record:
            raise record_error(line, "prompt", "is missing (GRPO records need 'prompt')")
        prompt = as_messages(record["prompt"], line, "prompt", "user")
        tools = record.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise record_error(line, "tools", "must be a list of tool definitions")
        return (
            self._prepare_online(record, prompt, tools, line)
            if self.online
            else self._prepare_offline(record, prompt, tools, line)
        )

    def _prepare_offline(
        self, record: dict[str, Any], prompt: list[dict[str, Any]], tools: list[Any] | None, line: int
    ) -> Example | None:
        for field in ("completions", "rewards"):
            if field not in record:
                raise record_error(
                    line,
                    field,
                    "is missing (offline GRPO records need prompt, completions, rewards; "
                    "set grpo.reward_fn for prompt-only online GRPO)",
                )
        completions, rewards = record["completions"], record["rewards"]
        if not isinstance(completions, list) or not completions:
            raise record_error(line, "completions", "must be a non-empty list of completions")
        if not isinstance(rewards, list):
            raise record_error(line, "rewards", "must be a list of numbers")
        if len(rewards) != len(completions):
            raise record_error(
                line, "rewards", f"has {len(rewards)} values for {len(completions)} completions"
            )
        values = [_reward(r, line, f"rewards[{i}]") for i, r in enumerate(rewards)]
        convs = []
        for i, c in enumerate(completions):
            msgs = as_messages(c, line, f"completions[{i}]", "assistant")
            if not any(m["role"] == "assistant" for m in msgs):
                raise record_error(line, f"completions[{i}]", "has no assistant message")
            convs.append(msgs)
        advantages = group_advantages(values, scale=self.scale_rewards)
        if advantages is None:
            self.skipped_groups += 1
            return None
        rows, kept_adv, kept_rewards = [], [], []
        for msgs, adv, r in zip(convs, advantages, values, strict=True):
            ids, labels = tokenize_chat(
                self.tokenizer, prompt + msgs, tools=tools, train_from=len(prompt), max_length=self.max_length
            )
            if all(label == IGNORE for label in labels[1:]):
                continue  # truncation left nothing of this completion; the others keep their advantages
            rows.append((ids, labels))
            kept_adv.append(adv)
            kept_rewards.append(r)
        if not rows:
            self.skipped_too_long += 1
            return None
        mean = sum(values) / len(values)
        std = math.sqrt(sum((r - mean) ** 2 for r in values) / len(values))
        return Example(
            length=max(len(ids) for ids, _ in rows),
            data={"rows": rows, "advantages": kept_adv, "rewards": kept_rewards, "group_std": std},
        )

    def _prepare_online(
        self, record: dict[str, Any], prompt: list[dict[str, Any]], tools: list[Any] | None, line: int
    ) -> Example | None:
        text = self.tokenizer.apply_chat_template(
            prompt, tools=tools, tokenize=False, add_generation_prompt=True
        )
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) + 1 > self.max_length:
            self.skipped_too_long += 1  # no room to generate even one token
            return None
        extras = {k: v for k, v in record.items() if k not in ("prompt", "tools")}
        missing = sorted(self._reward_required - extras.keys())
        if missing:
            raise record_error(
                line, missing[0], f"is missing (grpo.reward_fn {self.reward_spec!r} requires it)"
            )
        if self._reward_kwargs is not None:
            extras = {k: v for k, v in extras.items() if k in self._reward_kwargs}
        return Example(
            length=min(len(ids) + self.max_new_tokens, self.max_length),
            data={"prompt_ids": ids, "prompt": prompt, "extras": extras},
        )

    # ------------------------------------------------------------------ collate

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        if self.online:
            prompts = [e.data["prompt_ids"] for e in examples]
            width = max(len(p) for p in prompts)
            # Left padding: generation appends at the right end of every row.
            ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
            return {
                "prompt_ids": ids,
                "prompt_mask": mask,
                "prompt_lengths": [len(p) for p in prompts],
                "prompts": [e.data["prompt"] for e in examples],
                "extras": [e.data["extras"] for e in examples],
            }
        rows = [row for e in examples for row in e.data["rows"]]
        batch: dict[str, Any] = collate_ids(rows, self.pad_id)
        batch["advantages"] = torch.tensor(
            [a for e in examples for a in e.data["advantages"]], dtype=torch.float32
        )
        batch["rewards"] = torch.tensor([r for e in examples for r in e.data["rewards"]], dtype=torch.float32)
        batch["group_std"] = torch.tensor([e.data["group_std"] for e in examples], dtype=torch.float32)
        return batch

    # ------------------------------------------------------------------ compute

    def compute(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        if self.online:
            return self._compute_online(model, batch)
        return self._loss(
            model,
            batch,
            temperature=1.0,
            metrics={
                "reward_mean": float(batch["rewards"].mean()),
                "reward_std": float(batch["group_std"].mean()),
            },
        )

    def _loss(
        self, model: Any, batch: dict[str, Any], *, temperature: float, metrics: dict[str, float]
    ) -> StepOutput:
        # Offline completions came from whatever model served them, at an unknown temperature: their
        # log-probs are taken under the untempered policy. Online ones under the sampling temperature.
        logp, rows = token_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], temperature
        )
        adv = batch["advantages"].to(logp.device)[rows]
        per_token, is_clipped = clipped_surrogate(logp, logp.detach(), adv, self.clip_eps)
        loss = per_token.mean()  # token-level mean: long completions are not down-weighted per token
        a = batch["advantages"]
        metrics.update(
            {
                "advantage_mean": float(a.mean()),
                "advantage_std": float(a.std(unbiased=False)) if a.numel() > 1 else 0.0,
                "advantage_abs_mean": float(a.abs().mean()),
                "clip_fraction": float(is_clipped.float().mean()),
                "completion_tokens": float(logp.numel()),
                "logp_mean": float(logp.detach().mean()),
            }
        )
        return StepOutput(loss=loss, tokens=int(batch["attention_mask"].sum()), metrics=metrics)

    def _stop_ids(self, model: Any) -> set[int]:
        stop: set[int] = set()
        for src in (
            getattr(getattr(model, "generation_config", None), "eos_token_id", None),
            self.tokenizer.eos_token_id,
        ):
            if isinstance(src, int):
                stop.add(src)
            elif isinstance(src, (list, tuple)):
                stop.update(int(s) for s in src)
        return stop

    @torch.no_grad()
    def _sample(self, model: Any, batch: dict[str, Any]) -> list[list[int]]:
        """``num_generations`` completions (token ids, through the first stop token) per prompt."""
        g = self.num_generations
        ids = batch["prompt_ids"].repeat_interleave(g, dim=0)
        mask = batch["prompt_mask"].repeat_interleave(g, dim=0)
        room = self.max_length - max(batch["prompt_lengths"])
        stop = self._stop_ids(model)
        was_training = model.training
        model.eval()  # no LoRA dropout while sampling: sample from the policy itself
        try:
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=self.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max(1, min(self.max_new_tokens, room)),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(stop) or None,
            )
        finally:
            model.train(was_training)
        completions = []
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            completions.append(row[:cut])  # the stop token is trained too, so the policy learns to stop
        return completions

    def _score(self, prompt: list[dict[str, Any]], text: str, extras: dict[str, Any]) -> float:
        assert self.reward_fn is not None
        try:
            value = self.reward_fn(prompt, text, **extras)
        except Exception as exc:
            raise ConfigError(
                f"grpo.reward_fn {self.reward_spec!r} failed on a completion ({type(exc).__name__}: {exc})."
            ) from exc
        if isinstance(value, bool):
            value = float(value)  # verifiers often answer True/False; that is a 0/1 reward
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(
                f"grpo.reward_fn {self.reward_spec!r} returned {value!r}; it must return a finite number."
            )
        return float(value)

    def _compute_online(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        g = self.num_generations
        completions = self._sample(model, batch)
        rows, advantages, rewards_all, group_stds, lengths = [], [], [], [], []
        skipped = 0
        for p, (prompt_len, prompt, extras) in enumerate(
            zip(batch["prompt_lengths"], batch["prompts"], batch["extras"], strict=True)
        ):
            group = completions[p * g : (p + 1) * g]
            texts = self.tokenizer.batch_decode(group, skip_special_tokens=True)
            rewards = [self._score(prompt, t, extras) for t in texts]
            rewards_all.extend(rewards)
            lengths.extend(len(c) for c in group)
            mean = sum(rewards) / g
            group_stds.append(math.sqrt(sum((r - mean) ** 2 for r in rewards) / g))
            adv = group_advantages(rewards, scale=self.scale_rewards)
            if adv is None:
                skipped += 1
                continue
            prompt_ids = batch["prompt_ids"][p, -prompt_len:].tolist()  # strip the left padding
            for c, a in zip(group, adv, strict=True):
                if not c:
                    continue
                # Right-padded training rows: positions start at 0 as they did in generation.
                rows.append((prompt_ids + c, [IGNORE] * prompt_len + c))
                advantages.append(a)
        metrics = {
            "reward_mean": sum(rewards_all) / len(rewards_all),
            "reward_std": sum(group_stds) / len(group_stds),
            "completion_length": sum(lengths) / len(lengths),
            "skipped_groups": float(skipped),
        }
        if not rows:
            # Every group tied: nothing to learn. A zero loss over every trainable parameter keeps
            # loss.backward() valid and gives every rank the same (zero) gradients to all-reduce.
            params = [p for p in model.parameters() if p.requires_grad]
            loss = sum((p.sum() for p in params), torch.zeros((), device=batch["prompt_ids"].device)) * 0.0
            metrics.update(
                {
                    "advantage_mean": 0.0,
                    "advantage_std": 0.0,
                    "advantage_abs_mean": 0.0,
                    "clip_fraction": 0.0,
                    "completion_tokens": 0.0,
                }
            )
            return StepOutput(loss=loss, tokens=0, metrics=metrics)
        device = batch["prompt_ids"].device
        train_batch = {k: v.to(device) for k, v in collate_ids(rows, self.pad_id).items()}
        train_batch["advantages"] = torch.tensor(advantages, dtype=torch.float32, device=device)
        return self._loss(model, train_batch, temperature=self.temperature, metrics=metrics)


@register_objective("grpo")
def make_grpo(config: TrainConfig, tokenizer: Any) -> GRPOObjective:
    return GRPOObjective(config, tokenizer)


__all__ = [
    "GRPOObjective",
    "clipped_surrogate",
    "group_advantages",
    "load_reward_fn",
    "token_logprobs",
]
