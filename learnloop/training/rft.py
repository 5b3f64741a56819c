"""Rejection-sampling fine-tuning (RFT): the policy answers each prompt ``rollout.num_generations``
times, and the answers whose reward reaches ``rft.min_reward`` are trained with the SFT loss.

Records are rollout prompts (``learnloop.training.rollout``); a record's own ``completion`` (e.g. the
answer that was served) joins the candidates when ``rft.include_given``: it is scored with the samples,
or by the record's ``reward`` when it has one, and trained when it passes the bar too.

Every micro-batch is one round on the current policy: sample, score, keep what passes, one SFT step.
So the rounds iterate with the training (expert iteration / ReST with one step per round): later
steps sample from a policy that already learned from the earlier ones, and the checkpoints, pause,
stop and resume of the step loop apply unchanged. Of one prompt's passing answers the best
``rft.max_per_prompt`` distinct texts are trained: an easy prompt answered right eight times would
otherwise outweigh a hard one answered right once.

With ``rft.best_above_mean`` the bar is also relative: a prompt's best answer below ``min_reward`` is
kept (one per prompt) when it scores above the mean of that prompt's samples (and at least
``best_above_mean``). With a verifier
that gives partial credit this is a bar that rises as the model improves: it trains the best of the
model's own answers, never what it already answers on average, and answers at ``min_reward`` (the
exact ones) are kept as soon as they appear. A fixed partial bar instead keeps training the plateau it
reached (answers with three fields of four right, say) alongside the exact ones.

The cheapest way to learn when the model sometimes gets it right: it needs no reference forward pass
(GRPO needs none either, DPO and KTO do) and trains only on answers that passed.
"""

from __future__ import annotations

from typing import Any

from learnloop.training.config import TrainConfig
from learnloop.training.lm import IGNORE, collate_ids, label_logprobs
from learnloop.training.objective import Example, StepOutput, register_objective
from learnloop.training.rollout import (
    Candidate,
    RolloutScorer,
    SignalWatch,
    collate_prompts,
    no_update,
    prepare_prompt,
    sample,
)


class RFTObjective:
    name = "rft"
    online = True  # it samples its own answers: there is no stored completion to take a held-out loss on

    def __init__(self, config: TrainConfig, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        r = config.rollout
        self.num_generations = r.num_generations
        self.max_new_tokens = r.max_new_tokens
        self.temperature = r.temperature
        self.bar = config.rft.min_reward
        self.best_above_mean = config.rft.best_above_mean
        self.max_per_prompt = config.rft.max_per_prompt
        self.include_given = config.rft.include_given
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.scorer = RolloutScorer(r)
        self.watch = SignalWatch(
            r.max_flat_groups,
            what=f"no answer reached the bar (rft.min_reward = {self.bar:g})"
            + ("" if self.best_above_mean is None else " or beat its prompt's mean (rft.best_above_mean)"),
            advice="RFT learns only from answers that pass: lower rft.min_reward, sample more "
            "(rollout.num_generations) or hotter (rollout.temperature), or use GRPO, which learns from "
            "partial credit.",
        )
        self.skipped_too_long = 0

    def passes(self, reward: float, group: list[float | None]) -> bool:
        """At or above the bar; or, with ``rft.best_above_mean``, the group's best (one answer of the
        group below the bar is trained, see ``compute``) and above the mean of
        the policy's own samples (the first ``num_generations`` of ``group``). The record's given answer
        is a candidate but not part of that mean: an old served answer scoring 0 would pull the mean
        down and let the samples' plateau pass (measured: three fields of four, kept step after step)."""
        if reward >= self.bar:
            return True
        if self.best_above_mean is None or reward < self.best_above_mean:
            return False
        scored = [r for r in group if r is not None]
        sampled = [r for r in group[: self.num_generations] if r is not None]
        return bool(sampled) and reward >= max(scored) and reward > sum(sampled) / len(sampled)

    def state_dict(self) -> dict[str, Any]:
        return self.watch.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watch.load_state_dict(state)

    def prepare(self, record: dict[str, Any], line: int) -> Example | None:
        prompt = prepare_prompt(
            record, line, self.tokenizer, max_length=self.max_length, with_given=self.include_given
        )
        if prompt is None:
            self.skipped_too_long += 1
            return None
        self.watch.prompts += 1
        length = min(len(prompt.ids) + self.max_new_tokens, self.max_length)
        return Example(length=length, data={"prompt": prompt})

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        return collate_prompts([e.data["prompt"] for e in examples], self.pad_id)

    def compute(self, model: Any, batch: dict[str, Any]) -> StepOutput:
        n = self.num_generations
        prompts = batch["prompts"]
        completions = sample(
            model,
            self.tokenizer,
            batch,
            n=n,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            max_length=self.max_length,
            pad_id=self.pad_id,
        )
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        groups = []
        for i, p in enumerate(prompts):
            answers = texts[i * n : (i + 1) * n]
            candidates = [Candidate([{"role": "assistant", "content": t}], t) for t in answers]
            if p.given is not None:
                text = "\n".join(str(m.get("content") or "") for m in p.given)
                candidates.append(Candidate(p.given, text, given_reward=p.given_reward))
            groups.append((p, candidates))
        scores = self.scorer.score_groups(groups)

        rows: list[tuple[list[int], list[int]]] = []
        sampled_rewards: list[float] = []
        passed = given_kept = unscored = 0
        aspects: dict[str, list[float]] = {}
        for i, ((prompt, candidates), group) in enumerate(zip(groups, scores, strict=True)):
            for a in group.aspects:
                for name, value in a.items():
                    aspects.setdefault(name, []).append(value)
            sampled = group.rewards[:n]
            unscored += sum(r is None for r in sampled)
            sampled_rewards.extend(r for r in sampled if r is not None)
            passed += sum(r is not None and self.passes(r, group.rewards) for r in sampled)
            passing = sorted(
                (j for j, r in enumerate(group.rewards) if r is not None and self.passes(r, group.rewards)),
                key=lambda j: -(group.rewards[j] or 0.0),  # sorted() is stable: samples before the given
            )
            seen: set[str] = set()
            below_bar = 0
            for j in passing:
                if len(seen) >= self.max_per_prompt:
                    break
                if candidates[j].text in seen:
                    continue
                if (group.rewards[j] or 0.0) < self.bar:
                    # One answer below the bar per prompt: more samples per prompt then tilt what is
                    # trained towards the answers at the bar instead of multiplying the partial ones.
                    if below_bar:
                        continue
                    below_bar += 1
                seen.add(candidates[j].text)
                if j < n:
                    c = completions[i * n + j]
                    rows.append((prompt.ids + c, [IGNORE] * len(prompt.ids) + c))
                else:
                    assert prompt.given_rows is not None
                    rows.append(prompt.given_rows)
                    given_kept += 1
            self.watch.observe(bool(seen), group.rewards)
        self.watch.check(self.scorer.describe())
        lengths = [len(c) for c in completions]
        metrics = {
            "reward_mean": sum(sampled_rewards) / len(sampled_rewards) if sampled_rewards else float("nan"),
            "pass_rate": passed / len(completions),
            "trained_answers": float(len(rows)),
            "given_trained": float(given_kept),
            "unscored_samples": float(unscored),
            "completion_length": sum(lengths) / len(lengths),
            **{f"aspect/{k}": sum(v) / len(v) for k, v in aspects.items()},
        }
        device = batch["prompt_ids"].device
        if not rows:
            metrics["trained_tokens"] = 0.0
            return no_update(model, device, metrics)
        train = {k: v.to(device) for k, v in collate_ids(rows, self.pad_id).items()}
        token_logps, _ = label_logprobs(model, train["input_ids"], train["attention_mask"], train["labels"])
        metrics["trained_tokens"] = float(token_logps.numel())
        # The SFT loss: token-level mean over every kept answer.
        tokens = int(train["attention_mask"].sum())
        return StepOutput(loss=-token_logps.mean(), tokens=tokens, metrics=metrics)


@register_objective("rft")
def make_rft(config: TrainConfig, tokenizer: Any) -> RFTObjective:
    return RFTObjective(config, tokenizer)
