"""Group Relative Policy Optimization (GRPO): policy gradient with group-relative advantages.

Two modes, chosen by whether the config names rewards for rollouts (``TrainConfig.online``):

* Offline (no rollout rewards): records are stored groups, exactly what ``learnloop datasets build grpo``
  exports: ``{"prompt": [messages], "completions": [[assistant messages], ...], "rewards": [floats]}``.
  Each completion's advantage is its reward minus the group mean (divided by the group std when
  ``scale_rewards``). Groups whose rewards are all equal teach nothing and are skipped at load time
  (``prepare`` returns None; counted in ``skipped_groups`` and in the loop's ``skipped``).
* Online (rollouts; ``rollout.rewards`` and/or ``rollout.judge`` set, or the deprecated
  ``grpo.reward_fn``): records are ``{"prompt": [messages], ...}`` (see ``learnloop.training.rollout``);
  every micro-batch samples ``rollout.num_generations`` completions per prompt from the current
  policy, scores them with the project's reward functions / the group judge and its reward rule, and
  trains on them. A run whose first prompts all tie stops with ``NoLearningSignal``.

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

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from learnloop.training.config import TrainConfig
from learnloop.training.lm import IGNORE, as_messages, causal_lm, collate_ids, record_error, tokenize_chat
from learnloop.training.objective import Example, StepOutput, register_objective
from learnloop.training.rollout import (
    Candidate,
    RolloutScorer,
    SignalWatch,
    collate_prompts,
    load_reward_fn,
    no_update,
    prepare_prompt,
    sample,
)

# Same epsilon as the dataset builder's advantage report, so exported and trained advantages agree.
STD_EPS = 1e-4
# Rewards closer than this count as equal: float noise must not turn a tie into a +-1/eps advantage.
TIE_TOL = 1e-9


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


# --------------------------------------------------------------------------------------- objective


class GRPOObjective:
    name = "grpo"

    def __init__(self, config: TrainConfig, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        r = config.rollout
        self.num_generations = r.num_generations
        self.max_new_tokens = r.max_new_tokens
        self.temperature = r.temperature
        self.clip_eps = config.grpo.clip_eps
        self.scale_rewards = config.grpo.scale_rewards
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.online = config.online
        self.scorer = RolloutScorer(r, config.grpo.reward_fn) if self.online else None
        self.watch = SignalWatch(
            r.max_flat_groups,
            what="every sampled answer of each prompt scored the same",
            advice="GRPO learns only from differences between answers: the model may already get every "
            "prompt right (nothing left to learn), or never partly right (try a reward with partial credit, "
            "more samples (rollout.num_generations), a higher rollout.temperature, or SFT/RFT first).",
        )
        # Counted by prepare (offline) so a caller can report how much of the dataset carried no signal.
        self.skipped_groups = 0
        self.skipped_too_long = 0

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        return self.watch.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watch.load_state_dict(state)

    # ------------------------------------------------------------------ prepare

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        if self.online:
            return self._prepare_online(record, line)
        if "prompt" not in record:
            raise record_error(line, "prompt", "is missing (GRPO records need 'prompt')")
        prompt = as_messages(record["prompt"], line, "prompt", "user")
        tools = record.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise record_error(line, "tools", "must be a list of tool definitions")
        return self._prepare_offline(record, prompt, tools, line)

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

    def _prepare_online(self, record: dict[str, Any], line: int) -> Example | None:
        assert self.scorer is not None
        prompt = prepare_prompt(record, line, self.tokenizer, max_length=self.max_length)
        if prompt is None:
            self.skipped_too_long += 1
            return None
        self.scorer.check_record(prompt, line)
        self.watch.prompts += 1
        return Example(
            length=min(len(prompt.ids) + self.max_new_tokens, self.max_length), data={"prompt": prompt}
        )

    # ------------------------------------------------------------------ collate

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        if self.online:
            return collate_prompts([e.data["prompt"] for e in examples], self.pad_id)
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

    def _compute_online(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        assert self.scorer is not None
        g = self.num_generations
        prompts = batch["prompts"]
        completions = sample(
            model,
            self.tokenizer,
            batch,
            n=g,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            max_length=self.max_length,
            pad_id=self.pad_id,
        )
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        groups = [
            (p, [Candidate([{"role": "assistant", "content": t}], t) for t in texts[i * g : (i + 1) * g]])
            for i, p in enumerate(prompts)
        ]
        scores = self.scorer.score_groups(groups)
        rows, advantages, rewards_all, group_stds, aspects = [], [], [], [], {}
        skipped = unscored = 0
        for i, (prompt, group) in enumerate(zip(prompts, scores, strict=True)):
            kept = [j for j, r in enumerate(group.rewards) if r is not None]
            unscored += g - len(kept)
            rewards = [group.rewards[j] for j in kept]
            rewards_all.extend(rewards)
            for a in group.aspects:
                for name, value in a.items():
                    aspects.setdefault(name, []).append(value)
            if len(rewards) > 1:
                mean = sum(rewards) / len(rewards)
                group_stds.append(math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)))
            adv = group_advantages(rewards, scale=self.scale_rewards) if len(rewards) > 1 else None
            self.watch.observe(adv is not None, rewards)
            if adv is None:
                skipped += 1
                continue
            for j, a in zip(kept, adv, strict=True):
                c = completions[i * g + j]
                if c:
                    # Right-padded training rows: positions start at 0 as they did in generation.
                    rows.append((prompt.ids + c, [IGNORE] * len(prompt.ids) + c))
                    advantages.append(a)
        self.watch.check(self.scorer.describe())
        lengths = [len(c) for c in completions]
        metrics = {
            "reward_mean": sum(rewards_all) / len(rewards_all) if rewards_all else math.nan,
            "reward_std": sum(group_stds) / len(group_stds) if group_stds else 0.0,
            "completion_length": sum(lengths) / len(lengths),
            "skipped_groups": float(skipped),
            "unscored_samples": float(unscored),
            **{f"aspect/{k}": sum(v) / len(v) for k, v in aspects.items()},
        }
        if not rows:
            metrics.update(
                {
                    "advantage_mean": 0.0,
                    "advantage_std": 0.0,
                    "advantage_abs_mean": 0.0,
                    "clip_fraction": 0.0,
                    "completion_tokens": 0.0,
                }
            )
            return no_update(model, batch["prompt_ids"].device, metrics)
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
