"""GRPO objective: advantages, the clipped surrogate, record validation, and that offline and online
training move the policy towards higher reward (end to end through ``learnloop.training.run.train``).

The online tests here use the deprecated ``grpo.reward_fn`` (plain ``(prompt, completion)`` functions),
which must keep working; tests/test_training_rollout.py covers registered rewards and the judge."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from learnloop.errors import ConfigError, NoLearningSignal, ValidationFailed
from learnloop.training.grpo import clipped_surrogate, group_advantages, token_logprobs
from training_support import make_config, objective_for, write_jsonl

# The deprecated reward_fn (and grpo sampling keys) warn each time a config or objective is built; those
# warnings are tested once (below, and in test_training_rollout.py).
pytestmark = [
    pytest.mark.filterwarnings("ignore:grpo.reward_fn:FutureWarning"),
    pytest.mark.filterwarnings("ignore:grpo.*moved to the rollout section:FutureWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Sampling is hundreds of tiny ops; on a shared 2-core machine a second intra-op thread spends them
    waiting at barriers (the online run measured 3 s on one thread, 16-30 s on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _asst(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# Each group: a high-reward completion, a low-reward one and a middling one (the dataset builder's format).
GROUPS = [
    {
        "prompt": _user("what is two plus two?"),
        "completions": [_asst("four."), _asst("maybe."), _asst("yes.")],
        "rewards": [1.0, 0.0, 0.5],
    },
    {
        "prompt": _user("is the fox quick?"),
        "completions": [_asst("yes."), _asst("no."), _asst("hello!")],
        "rewards": [1.0, 0.0, 0.2],
    },
    {
        "prompt": _user("count"),
        "completions": [_asst("0 1 2 3"), _asst("9 8 7"), _asst("goodbye.")],
        "rewards": [2.0, -1.0, 0.0],
    },
    {
        "prompt": _user("say hello"),
        "completions": [_asst("hello! how can i help you today?"), _asst("goodbye."), _asst("no.")],
        "rewards": [1.0, 0.0, 0.0],
    },
]
TIED = {"prompt": _user("hello!"), "completions": [_asst("hi"), _asst("yo")], "rewards": [0.3, 0.3]}


# ------------------------------------------------------------------------------------ maths


def test_group_advantages_centre_scale_and_skip_ties() -> None:
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == pytest.approx(
        [1.0, -1.0, -1.0, 1.0], abs=1e-3
    )  # std 0.5, eps 1e-4
    assert group_advantages([3.0, 1.0], scale=False) == pytest.approx([1.0, -1.0])
    scaled = group_advantages([10.0, 0.0, 5.0])
    std = math.sqrt(50 / 3)
    assert scaled == pytest.approx([5 / (std + 1e-4), -5 / (std + 1e-4), 0.0])
    # Scaling makes the advantages independent of the reward's units.
    assert group_advantages([100.0, 0.0, 50.0]) == pytest.approx(scaled, rel=1e-4)
    assert group_advantages([0.7, 0.7, 0.7]) is None
    assert group_advantages([0.1 + 0.2, 0.3]) is None  # float noise is still a tie
    assert group_advantages([5.0]) is None


def test_clipped_surrogate_clips_in_the_advantage_direction_only() -> None:
    eps = 0.2
    old = torch.zeros(4)
    # ratios 1.5, 0.5, 0.5, 1.5 against advantages +1, +1, -1, -1
    logp = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, eps)
    # r=1.5, A>0: capped at 1.2*A; r=0.5, A>0: unclipped 0.5*A; r=0.5, A<0: capped at 0.8*A; r=1.5, A<0: 1.5*A
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 0.8, 1.5])
    assert clipped.tolist() == [True, False, True, False]
    loss.sum().backward()
    # Clipped tokens get no gradient; the others get d(-r*A)/dlogp = -r*A.
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5, 0.0, 1.5])


def test_surrogate_at_ratio_one_is_the_policy_gradient() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.5])
    loss, clipped = clipped_surrogate(logp, logp.detach(), adv, 0.2)
    loss.mean().backward()
    assert not clipped.any()
    assert loss.tolist() == pytest.approx((-adv).tolist())
    assert logp.grad.tolist() == pytest.approx((-adv / 3).tolist())


def test_token_logprobs_match_the_full_forward_at_a_temperature(tiny_model_dir: Path) -> None:
    obj, _ = objective_for(tiny_model_dir, "grpo")
    batch = obj.collate([obj.prepare(GROUPS[0], 1)])
    model = _tiny_peft(tiny_model_dir).eval()
    with torch.no_grad():
        logp, rows = token_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], temperature=0.7
        )
        logits = (
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        )
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    full = torch.log_softmax(logits / 0.7, dim=-1)[keep].gather(-1, targets[keep][:, None])[:, 0]
    assert torch.allclose(logp, full, atol=1e-5)
    assert rows.tolist() == keep.nonzero()[:, 0].tolist()


# ------------------------------------------------------------------------------------ records


def test_offline_prepare_trains_only_completion_tokens(tiny_model_dir: Path) -> None:
    obj, tok = objective_for(tiny_model_dir, "grpo")
    ex = obj.prepare(GROUPS[0], 1)
    assert ex is not None
    assert len(ex.data["rows"]) == 3
    for (ids, labels), text in zip(ex.data["rows"], ["four.", "maybe.", "yes."], strict=True):
        assert (
            tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
            == f"{text}<|im_end|>\n"
        )
        assert tok.decode(ids).startswith(
            "<|im_start|>user\nwhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"
        )
    assert ex.length == max(len(ids) for ids, _ in ex.data["rows"])
    assert ex.data["advantages"] == pytest.approx(group_advantages([1.0, 0.0, 0.5]))
    batch = obj.collate([ex, obj.prepare(GROUPS[1], 2)])
    assert batch["input_ids"].shape[0] == 6 and batch["advantages"].shape == (
        6,
    )  # rows of all groups, flattened
    # Plain strings are accepted as in TRL's standard format.
    ex2 = obj.prepare({"prompt": "hi", "completions": ["a", "b"], "rewards": [0, 1]}, 3)
    assert ex2 is not None and ex2.data["advantages"] == pytest.approx([-1.0, 1.0], abs=1e-3)


def test_offline_tied_groups_are_skipped_and_counted(tiny_model_dir: Path) -> None:
    obj, _ = objective_for(tiny_model_dir, "grpo")
    assert obj.prepare(TIED, 1) is None
    assert obj.prepare({**TIED, "completions": TIED["completions"][:1], "rewards": [1.0]}, 2) is None
    assert obj.prepare(GROUPS[0], 3) is not None
    assert obj.skipped_groups == 2


def test_prompts_that_fill_max_length_are_skipped(tiny_model_dir: Path) -> None:
    long_prompt = _user("the quick brown fox jumps over the lazy dog " * 6)
    obj, _ = objective_for(tiny_model_dir, "grpo", max_length=16)
    assert obj.prepare({**GROUPS[0], "prompt": long_prompt}, 1) is None
    assert obj.skipped_too_long == 1 and obj.skipped_groups == 0
    online, _ = objective_for(
        tiny_model_dir, "grpo", max_length=16, grpo={"reward_fn": "grpo_rewards:constant"}
    )
    assert online.prepare({"prompt": long_prompt}, 1) is None
    assert online.prepare({"prompt": "hi"}, 2).length == 16  # prompt + max_new_tokens, capped at max_length


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"completions": [_asst("a"), _asst("b")], "rewards": [1, 0]}, "prompt"),
        ({"prompt": _user("q"), "rewards": [1, 0]}, "completions"),
        ({"prompt": _user("q"), "completions": [_asst("a"), _asst("b")]}, "rewards"),
        ({"prompt": _user("q"), "completions": [_asst("a"), _asst("b")], "rewards": [1.0]}, "rewards"),
        (
            {"prompt": _user("q"), "completions": [_asst("a"), _asst("b")], "rewards": [1.0, "high"]},
            r"rewards\[1\]",
        ),
        (
            {"prompt": _user("q"), "completions": [_asst("a"), _asst("b")], "rewards": [1.0, None]},
            r"rewards\[1\]",
        ),
        (
            {"prompt": _user("q"), "completions": [_asst("a"), _asst("b")], "rewards": [True, False]},
            r"rewards\[0\]",
        ),
        (
            {"prompt": _user("q"), "completions": [_asst("a"), [{"role": "assistant"}]], "rewards": [1, 0]},
            r"completions\[1\]\[0\]\.content",
        ),
        (
            {"prompt": _user("q"), "completions": [_asst("a"), _user("b")], "rewards": [1, 0]},
            r"completions\[1\]",
        ),
        ({"prompt": [], "completions": [_asst("a"), _asst("b")], "rewards": [1, 0]}, "prompt"),
    ],
)
def test_invalid_offline_records_name_line_and_field(
    tiny_model_dir: Path, record: dict[str, Any], field: str
) -> None:
    obj, _ = objective_for(tiny_model_dir, "grpo")
    with pytest.raises(ValidationFailed, match=rf"line 17: field '{field}'"):
        obj.prepare(record, 17)


def test_load_error_names_the_file_line_and_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.data import load_examples

    obj, _ = objective_for(tiny_model_dir, "grpo")
    path = write_jsonl(tmp_path / "g.jsonl", [GROUPS[0], TIED, {**GROUPS[1], "rewards": [1.0, 0.0]}])
    with pytest.raises(
        ValidationFailed, match=r"g\.jsonl: line 3: field 'rewards' has 2 values for 3 completions"
    ):
        load_examples(path, obj)


def test_dataset_builder_export_trains_with_the_builders_advantages(
    tiny_model_dir: Path, sqlite_db: Any, settings: Any
) -> None:
    """What ``build_dataset(kind='grpo')`` writes is what this objective reads, with the same advantages."""
    from helpers import chat
    from learnloop.datasets import build_dataset
    from learnloop.store import ingest, parse_batch
    from learnloop.training.data import load_examples

    rows = [
        {"id": f"g{i}", "messages": chat("solve x+1=3", f"x={i}"), "scores": {"quality": r}, "group_id": "t1"}
        for i, r in enumerate([1.0, 0.0, 0.5])
    ]
    rows += [
        {"id": f"s{i}", "messages": chat("pick", c), "scores": {"quality": 0.5}, "group_id": "t2"}
        for i, c in enumerate("ab")
    ]
    with sqlite_db.session() as s:
        ingest(s, parse_batch({"trajectories": rows}), holdout_fraction=0.0)
    info = build_dataset(sqlite_db, "grpo", {"min_group_size": 2}, settings=settings)
    obj, _ = objective_for(tiny_model_dir, "grpo")
    loaded = load_examples(info.path, obj)
    assert len(loaded.examples) == 1 and loaded.skipped == 1 and obj.skipped_groups == 1
    built = next(g for g in info.stats["groups"]["items"] if g["size"] == 3)["advantages"]
    assert loaded.examples[0].data["advantages"] == pytest.approx(built, abs=1e-5)


# ------------------------------------------------------------------------------------ reward_fn


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("grpo_rewards", "must look like"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("grpo_rewards:missing", "has no attribute"),
        ("grpo_rewards:NOT_CALLABLE", "not callable"),
        ("/nonexistent/verifier.py:score", "no such file"),
    ],
)
def test_reward_fn_that_cannot_be_loaded_is_a_config_error(tiny_model_dir: Path, spec: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        objective_for(tiny_model_dir, "grpo", grpo={"reward_fn": spec})


def test_reward_fn_from_a_python_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "verifier.py").write_text(
        "def score(prompt, completion, answer):\n    return float(completion == answer)\n"
    )
    obj, _ = objective_for(tiny_model_dir, "grpo", grpo={"reward_fn": f"{tmp_path / 'verifier.py'}:score"})
    fn = obj.scorer.legacy
    assert fn is not None and fn([], "4", answer="4") == 1.0 and fn([], "5", answer="4") == 0.0


def test_reward_fn_is_deprecated_but_scores_through_the_reward_rule(tiny_model_dir: Path) -> None:
    """The old signature still trains; it warns once per run, naming what replaces it."""
    from learnloop.training.rollout import Candidate

    with pytest.warns(FutureWarning, match=r"grpo.reward_fn .*deprecated.*rollout.rewards"):
        obj, _ = objective_for(tiny_model_dir, "grpo", grpo={"reward_fn": "grpo_rewards:wants_answer"})
    prompt = obj.prepare({"prompt": _user("q"), "answer": "x"}, 1).data["prompt"]
    got = obj.scorer.score(prompt, [Candidate(_asst("x y"), "x y"), Candidate(_asst("z"), "z")])
    assert got.rewards == pytest.approx([1.03, 0.01])  # the function's own values: one aspect is itself
    assert got.aspects[0] == {"reward_fn": pytest.approx(1.03)}


def _tiny_peft(tiny_model_dir: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    )


@pytest.mark.parametrize(
    ("fn", "why"),
    [("broken", "failed on a completion.*verifier crashed"), ("not_a_number", "returned 'high'")],
)
def test_reward_fn_failing_at_call_time_is_a_config_error(tiny_model_dir: Path, fn: str, why: str) -> None:
    obj, _ = objective_for(
        tiny_model_dir, "grpo", grpo={"reward_fn": f"grpo_rewards:{fn}", "max_new_tokens": 2}
    )
    batch = obj.collate([obj.prepare({"prompt": _user("hi")}, 1)])
    with pytest.raises(ConfigError, match=why):
        obj.compute(_tiny_peft(tiny_model_dir), batch)


def test_online_compute_samples_groups_and_passes_record_extras(tiny_model_dir: Path) -> None:
    import grpo_rewards

    obj, tok = objective_for(
        tiny_model_dir,
        "grpo",
        grpo={"reward_fn": "grpo_rewards:recording", "num_generations": 3, "max_new_tokens": 5},
    )
    exs = [
        obj.prepare({"prompt": _user("what is two plus two?"), "answer": "four"}, 1),
        obj.prepare({"prompt": "count", "answer": "0 1 2", "level": 2}, 2),
    ]
    assert exs[0].length == len(exs[0].data["prompt"].ids) + 5
    batch = obj.collate(exs)
    # Left padding, so that generation continues every prompt at the right edge.
    assert batch["prompt_mask"][1, 0] == 0 and batch["prompt_mask"][:, -1].tolist() == [1, 1]
    model = _tiny_peft(tiny_model_dir)
    model.train()
    grpo_rewards.CALLS.clear()
    torch.manual_seed(1)
    out = obj.compute(model, batch)
    assert model.training  # sampling switched to eval and back
    assert len(grpo_rewards.CALLS) == 6
    assert [c[2] for c in grpo_rewards.CALLS] == [{"answer": "four"}] * 3 + [
        {"answer": "0 1 2", "level": 2}
    ] * 3
    assert grpo_rewards.CALLS[3][0] == _user("count")
    rewards = [float(len(c[1])) for c in grpo_rewards.CALLS]
    assert out.metrics["reward_mean"] == pytest.approx(sum(rewards) / 6)
    assert out.loss.requires_grad
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    # Same seed, same samples: sampling draws from torch's global RNG only.
    first = [c[1] for c in grpo_rewards.CALLS]
    grpo_rewards.CALLS.clear()
    torch.manual_seed(1)
    obj.compute(model, batch)
    assert [c[1] for c in grpo_rewards.CALLS] == first


def test_online_completions_end_at_the_stop_token_which_is_trained(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grpo_rewards

    obj, tok = objective_for(
        tiny_model_dir,
        "grpo",
        grpo={"reward_fn": "grpo_rewards:recording", "num_generations": 2, "max_new_tokens": 4},
    )
    batch = obj.collate([obj.prepare({"prompt": "hi"}, 1)])
    eos, pad_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    a, b = (
        tok("abc", add_special_tokens=False)["input_ids"][0],
        tok("dog", add_special_tokens=False)["input_ids"][0],
    )
    model = _tiny_peft(tiny_model_dir)
    seen: dict[str, Any] = {}

    def fake_generate(**kw: Any) -> torch.Tensor:
        seen.update(kw)
        tail = torch.tensor([[a, eos, pad_id, pad_id], [b, b, a, b]])
        return torch.cat([kw["input_ids"], tail], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    grpo_rewards.CALLS.clear()
    out = obj.compute(model, batch)
    assert seen["do_sample"] is True and seen["max_new_tokens"] == 4 and eos in seen["eos_token_id"]
    assert seen["input_ids"].shape[0] == 2  # the prompt repeated num_generations times
    assert [c[1] for c in grpo_rewards.CALLS] == [tok.decode([a]), tok.decode([b, b, a, b])]
    assert out.metrics["completion_length"] == 3.0  # (2 + 4) / 2: the first stops after its stop token
    assert out.metrics["completion_tokens"] == 6.0  # and that stop token is trained; the padding is not


def test_reward_fn_without_kwargs_gets_only_the_extras_it_names(tiny_model_dir: Path) -> None:
    obj, _ = objective_for(
        tiny_model_dir, "grpo", grpo={"reward_fn": "grpo_rewards:wants_answer", "max_new_tokens": 3}
    )
    ex = obj.prepare({"prompt": _user("q"), "answer": "x", "source": "gsm8k"}, 1)
    assert ex.data["prompt"].legacy_extras == {"answer": "x"}
    out = obj.compute(
        _tiny_peft(tiny_model_dir), obj.collate([ex])
    )  # would raise TypeError -> ConfigError on 'source'
    assert "reward_mean" in out.metrics
    with pytest.raises(
        ValidationFailed,
        match=r"line 4: field 'answer' is missing \(grpo.reward_fn 'grpo_rewards:wants_answer' requires it\)",
    ):
        obj.prepare({"prompt": _user("q"), "source": "gsm8k"}, 4)


# ------------------------------------------------------------------------------------ training


def _completion_logps(obj: Any, model: Any, group: dict[str, Any]) -> list[float]:
    ex = obj.prepare(group, 1)
    batch = obj.collate([ex])
    with torch.no_grad():
        logp, rows = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return torch.zeros(batch["input_ids"].shape[0]).index_add(0, rows, logp).tolist()


def test_offline_grpo_raises_high_reward_completions_over_low_ones(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from learnloop.training.run import train

    rows = [*GROUPS, TIED]
    result = train(
        make_config(
            tiny_model_dir,
            tmp_path,
            algorithm="grpo",
            rows=rows,
            batch_size=2,
            max_steps=16,
            checkpoint_every=16,
        )
    )
    assert result.examples == 4 and result.skipped == 1  # the tied group carries no signal
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert len(metrics) == 16
    assert all(m["clip_fraction"] == 0.0 for m in metrics)  # one pass per batch: ratio is exactly 1
    assert all(abs(m["advantage_mean"]) < 1e-5 for m in metrics)  # advantages are centred per group

    obj, _ = objective_for(tiny_model_dir, "grpo")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(result.adapter_dir)
    ).eval()
    for group in GROUPS:
        after = _completion_logps(obj, model, group)
        with model.disable_adapter():
            before = _completion_logps(obj, model, group)
        best, worst = (
            group["rewards"].index(max(group["rewards"])),
            group["rewards"].index(min(group["rewards"])),
        )
        gain_best, gain_worst = after[best] - before[best], after[worst] - before[worst]
        assert gain_best - gain_worst > 5.0, (group["prompt"], gain_best, gain_worst)
        assert after[worst] < before[worst]


def test_online_grpo_raises_a_verifiable_reward(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    prompts = [
        {"prompt": _user(t)} for t in ["hello", "count", "what is two plus two?", "the quick brown fox"]
    ]
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=prompts,
        batch_size=4,
        max_steps=40,
        checkpoint_every=40,
        grpo={"reward_fn": "grpo_rewards:lowercase_fraction", "num_generations": 8, "max_new_tokens": 8},
    )
    result = train(cfg)
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    rewards = [m["reward_mean"] for m in metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.7  # a random model writes about half lowercase letters
    assert last > first + 0.2, rewards
    assert all(m["completion_length"] > 0 for m in metrics)


def test_online_ties_everywhere_say_so_instead_of_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    prompts = [{"prompt": _user(t)} for t in ["hello", "count"]]
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=prompts,
        batch_size=2,
        max_steps=3,
        checkpoint_every=3,
        grpo={"reward_fn": "grpo_rewards:constant"},
        rollout={"num_generations": 2, "max_new_tokens": 3},
    )
    events = []
    flat = r"first 2 prompts every sampled answer .* scored the same"
    with pytest.raises(NoLearningSignal, match=flat) as exc:
        train(cfg, progress=events.append)
    assert "rewards seen: 1" in str(exc.value) and exc.value.stats["best_reward"] == 1.0
    assert [e.kind for e in events] == ["start", "no_signal"]  # no step was taken, none was logged
    assert events[-1].message == str(exc.value)
    assert not (tmp_path / "run" / "adapter").exists() and not list((tmp_path / "run").glob("checkpoint-*"))


def test_training_script_runs_online_grpo_with_a_reward_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The process the daemon supervises: the reward function is a plain .py file, not on sys.path."""
    import os
    import subprocess
    import sys

    (tmp_path / "verifier.py").write_text(
        "def score(prompt, completion, answer):\n"
        "    return sum(c in answer for c in completion) / max(1, len(completion))\n"
    )
    prompts = [{"prompt": _user("hello"), "answer": "abc"}, {"prompt": _user("count"), "answer": "0123"}]
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=prompts,
        batch_size=2,
        max_steps=2,
        checkpoint_every=2,
        grpo={"reward_fn": f"{tmp_path / 'verifier.py'}:score", "num_generations": 4, "max_new_tokens": 6},
    )
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "learnloop.training.run", "--config", str(tmp_path / "cfg.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [e for e in map(json.loads, proc.stdout.splitlines()) if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert all(
        0.0 <= e["metrics"]["reward_mean"] <= 1.0 and e["metrics"]["completion_length"] > 0 for e in steps
    )
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def test_unloadable_reward_fn_fails_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=[{"prompt": _user("hi")}],
        grpo={"reward_fn": "grpo_rewards:no_such_function"},
    )
    with pytest.raises(ConfigError, match="grpo_rewards:no_such_function"):
        train(cfg)
    assert not (tmp_path / "run" / "adapter").exists() and not list((tmp_path / "run").glob("checkpoint-*"))
