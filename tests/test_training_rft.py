"""Rejection-sampling fine-tuning on the tiny model: which answers are kept (the bar, distinct texts,
the most per prompt, a record's own answer), and that training on what passed raises the reward."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from training_support import make_config, objective_for

REWARDS_FILE = str(Path(__file__).with_name("rollout_rewards.py"))
ROLLOUT = {"rewards": ["rt_lower"], "scoring": {"reward_modules": [REWARDS_FILE]}}
PROMPTS = [
    {"prompt": [{"role": "user", "content": t}]}
    for t in ["hello", "count", "what is two plus two?", "the quick brown fox"]
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_peft(tiny_model_dir: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    )


def _fixed_samples(model: Any, monkeypatch: pytest.MonkeyPatch, tails: list[list[int]]) -> None:
    """The policy 'samples' these completions (one row per sample), so the test knows what passes."""

    def generate(**kw: Any) -> torch.Tensor:
        width = max(len(t) for t in tails)
        rows = torch.tensor([t + [0] * (width - len(t)) for t in tails])
        return torch.cat([kw["input_ids"], rows], dim=1)

    monkeypatch.setattr(model, "generate", generate)


def test_kept_answers_pass_the_bar_once_each_best_first(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj, tok = objective_for(
        tiny_model_dir,
        "rft",
        rollout={**ROLLOUT, "num_generations": 4, "max_new_tokens": 4},
        rft={"min_reward": 0.6, "max_per_prompt": 2},
    )
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ab, c, up = 304, 69, 291  # "ab", "c", "AB"
    # rt_lower: "abc" 1.0 (twice: trained once), "ABc" 1/3 (fails), "ab" 1.0 (distinct: kept second).
    model = _tiny_peft(tiny_model_dir)
    _fixed_samples(model, monkeypatch, [[ab, c, end], [ab, c, end], [up, c, end], [ab, end]])
    given = {"prompt": "hello", "completion": "dog", "reward": 0.7}  # passes by its own (stored) reward
    batch = obj.collate([obj.prepare(given, 1)])
    out = obj.compute(model, batch)
    assert out.metrics["pass_rate"] == 0.75  # of the sampled answers
    assert out.metrics["trained_answers"] == 2 and out.metrics["given_trained"] == 0.0  # the cap: best two
    assert out.metrics["reward_mean"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    assert out.metrics["trained_tokens"] == 3 + 2  # "abc<|im_end|>" and "ab<|im_end|>"
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)

    # With room for three, the record's own answer is trained too; a failing one is not.
    obj.max_per_prompt = 3
    assert obj.compute(model, batch).metrics["given_trained"] == 1.0
    low = obj.collate([obj.prepare({**given, "reward": 0.1}, 1)])
    assert obj.compute(model, low).metrics["given_trained"] == 0.0
    # Without a stored reward the record's answer is scored like the samples: "dog" 1.0, "DOG" 0.
    for text, trained in (("dog", 1.0), ("DOG", 0.0)):
        unscored = obj.collate([obj.prepare({"prompt": "hello", "completion": text}, 1)])
        assert obj.compute(model, unscored).metrics["given_trained"] == trained, text


def test_nothing_passing_trains_nothing_in_that_step(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj, tok = objective_for(
        tiny_model_dir,
        "rft",
        rollout={**ROLLOUT, "num_generations": 2, "max_new_tokens": 3, "max_flat_groups": 8},
    )
    obj.watch.prompts = 100  # a large dataset: one flat prompt is not yet a verdict
    model = _tiny_peft(tiny_model_dir)
    _fixed_samples(model, monkeypatch, [[291, tok.convert_tokens_to_ids("<|im_end|>")]] * 2)  # "AB": 0
    out = obj.compute(model, obj.collate([obj.prepare({"prompt": "hello"}, 1)]))
    assert out.metrics["trained_answers"] == 0 and out.tokens == 0
    out.loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters() if p.requires_grad)


def test_rft_raises_the_reward_by_training_on_what_passed(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="rft",
        rows=PROMPTS,
        batch_size=4,
        max_steps=24,
        checkpoint_every=24,
        rollout={**ROLLOUT, "num_generations": 8, "max_new_tokens": 8},
        rft={"min_reward": 0.8},
    )
    metrics = [json.loads(line) for line in train(cfg).metrics_path.read_text().splitlines()]
    rewards = [m["reward_mean"] for m in metrics]
    passing = [m["pass_rate"] for m in metrics]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
    assert sum(passing[-5:]) / 5 > sum(passing[:5]) / 5 + 0.3, passing
    assert all(m["trained_answers"] <= 4 * 2 for m in metrics)  # at most max_per_prompt per prompt


def test_best_above_mean_keeps_a_prompts_best_answer_below_the_bar(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relative bar: below ``min_reward`` only the prompt's best answer is kept, and only when it beats
    the prompt's mean and the floor; answers at the bar are kept as before."""
    obj, tok = objective_for(
        tiny_model_dir,
        "rft",
        rollout={**ROLLOUT, "num_generations": 4, "max_new_tokens": 4},
        rft={"min_reward": 1.0, "best_above_mean": 0.2, "max_per_prompt": 2},
    )
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ab, c, up = 304, 69, 291  # rt_lower: "abc" 1.0, "ABc" 1/3, "AB" 0
    model = _tiny_peft(tiny_model_dir)
    batch = obj.collate([obj.prepare({"prompt": "hello"}, 1)])

    def kept(tails: list[list[int]]) -> float:
        _fixed_samples(model, monkeypatch, tails)
        return obj.compute(model, batch).metrics["trained_answers"]

    # "ABc" (1/3) beats the mean (1/6) and the floor: kept once (the two copies are one text).
    assert kept([[up, c, end], [up, c, end], [up, end], [up, end]]) == 1.0
    # Two distinct answers tie for the best below the bar: one of them is kept, not max_per_prompt.
    assert kept([[up, c, end], [c, up, end], [up, end], [up, end]]) == 1.0  # "ABc", "cAB": 1/3 each
    # Every answer alike: nothing beats the mean, nothing is kept.
    assert kept([[up, c, end]] * 4) == 0.0
    # An exact answer passes the bar; "ABc" is then no longer the best and is not kept beside it.
    assert kept([[ab, c, end], [up, c, end], [up, c, end], [up, end]]) == 1.0
    # A served answer that scored 0 does not count in the mean: the samples' plateau is not kept...
    plateau = obj.collate([obj.prepare({"prompt": "hello", "completion": "AB", "reward": 0.0}, 1)])
    _fixed_samples(model, monkeypatch, [[up, c, end]] * 4)
    assert obj.compute(model, plateau).metrics["trained_answers"] == 0.0
    # ...while a served answer better than every sample is (it is the best, above the samples' mean).
    better = obj.collate([obj.prepare({"prompt": "hello", "completion": "Abc", "reward": 0.6}, 1)])
    assert obj.compute(model, better).metrics["given_trained"] == 1.0
    # Under the floor the best answer is not kept.
    obj.best_above_mean = 0.5
    assert kept([[up, c, end], [up, c, end], [up, end], [up, end]]) == 0.0
    # Off (the default): the bar alone decides, as before.
    obj.best_above_mean = None
    assert kept([[up, c, end], [up, end], [up, end], [up, end]]) == 0.0
