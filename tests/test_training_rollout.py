"""Rollouts on the tiny model: the policy samples answers to prompts and the project's own reward
functions (registered with ``@reward``, imported by the training process from
``scoring.reward_modules``), the reward rule and the group judge (over real HTTP) score them; runs
with nothing to learn say so; a stop or a kill in the middle of a rollout resumes at the step
boundary; the training process never imports the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from api_support import live_server
from learnloop.errors import ConfigError, NoLearningSignal
from learnloop.training.rollout import Candidate
from ruler_judge import RulerJudge
from training_support import adapter_weights, make_config, objective_for

REPO = Path(__file__).resolve().parents[1]
REWARDS_FILE = str(Path(__file__).with_name("rollout_rewards.py"))
SCORING = {"reward_modules": [REWARDS_FILE]}
PROMPTS = [
    {"prompt": [{"role": "user", "content": t}]}
    for t in ["hello", "count", "what is two plus two?", "the quick brown fox"]
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Sampling is hundreds of tiny ops; on a shared 2-core machine a second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rewards_module() -> Any:
    from learnloop.importing import import_module

    return import_module(REWARDS_FILE)  # the module the training process registered its functions from


def _asst(text: str) -> Candidate:
    return Candidate([{"role": "assistant", "content": text}], text)


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------ registered rewards


def test_registered_functions_score_samples_by_the_reward_rule(tiny_model_dir: Path) -> None:
    obj, _ = objective_for(
        tiny_model_dir, "grpo", rollout={"rewards": ["rt_lower", "json_valid"], "scoring": SCORING}
    )
    record = {"prompt": "hi", "scenario": "s1", "tags": ["json"], "metadata": {"k": 1}, "answer": "x"}
    prompt = obj.prepare(record, 1).data["prompt"]
    mod = _rewards_module()
    mod.CALLS.clear()
    got = obj.scorer.score(prompt, [_asst('{"a": 1}'), _asst("hello")])
    # json_valid is a check (the record's tag says JSON is expected): it caps the reward; the verifier
    # rt_lower is the explicit signal. Valid JSON keeps rt_lower's 1/8; "hello" is capped at 0.
    assert got.aspects == [{"rt_lower": 0.125, "json_valid": 1.0}, {"rt_lower": 1.0, "json_valid": 0.0}]
    assert got.rewards == [0.125, 0.0]
    view = mod.CALLS[-1]  # what the function saw: the record's fields on a TrajectoryView
    assert view.prompt == [{"role": "user", "content": "hi"}] and view.completion == "hello"
    assert view.scenario == "s1" and list(view.tags) == ["json"]
    assert view.metadata == {"k": 1, "answer": "x"}  # other record keys join the metadata

    # The [scoring] settings travel with the config: weight 0 drops the check.
    obj, _ = objective_for(
        tiny_model_dir,
        "grpo",
        rollout={"rewards": ["rt_lower", "json_valid"], "scoring": {**SCORING, "weights": {"json_valid": 0}}},
    )
    prompt = obj.prepare(record, 1).data["prompt"]
    assert obj.scorer.score(prompt, [_asst('{"a": 1}'), _asst("hello")]).rewards == [0.125, 1.0]


def test_reward_names_and_modules_are_checked_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=PROMPTS,
        rollout={"rewards": ["nope"], "scoring": SCORING},
    )
    with pytest.raises(ConfigError, match=r"Unknown reward function\(s\): nope. Registered: .*rt_lower"):
        train(cfg)
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=PROMPTS,
        rollout={"rewards": ["rt_lower"], "scoring": {"reward_modules": ["/no/such/rewards.py"]}},
    )
    with pytest.raises(ConfigError, match="Reward module file '/no/such/rewards.py' does not exist"):
        train(cfg)
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_failing_reward_function_stops_the_run_naming_it(tiny_model_dir: Path) -> None:
    obj, _ = objective_for(tiny_model_dir, "grpo", rollout={"rewards": ["rt_broken"], "scoring": SCORING})
    prompt = obj.prepare({"prompt": "hi"}, 1).data["prompt"]
    with pytest.raises(ConfigError, match=r"Reward function 'rt_broken' failed .*verifier crashed"):
        obj.scorer.score(prompt, [_asst("a"), _asst("b")])


def test_online_grpo_learns_from_a_registered_reward(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=PROMPTS,
        batch_size=4,
        max_steps=40,
        checkpoint_every=40,
        rollout={"rewards": ["rt_lower"], "scoring": SCORING, "num_generations": 8, "max_new_tokens": 8},
    )
    result = train(cfg)
    metrics = _metrics(result.metrics_path)
    rewards = [m["reward_mean"] for m in metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.7  # a random model writes about half lowercase letters
    assert last > first + 0.2, rewards
    assert all(m["aspect/rt_lower"] == pytest.approx(m["reward_mean"]) for m in metrics)  # one aspect
    # The checkpoint remembers how many prompts gave a signal: a resumed run does not start over.
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    counted = state["objective"]
    assert counted["signal_prompts"] + counted["flat_prompts"] == 40 * 4 and counted["signal_prompts"] > 100


def test_a_run_that_learned_before_is_not_stopped_for_flat_prompts_after_a_resume() -> None:
    from learnloop.training.rollout import SignalWatch

    fresh, resumed = SignalWatch(2, "x", "y"), SignalWatch(2, "x", "y")
    resumed.load_state_dict({"flat_prompts": 0, "signal_prompts": 3})
    for watch in (fresh, resumed):
        watch.prompts = 10
        watch.observe(False, [1.0, 1.0])
        watch.observe(False, [1.0, 1.0])
    resumed.check("f")  # it found signal before the checkpoint: ties now mean it has learned
    with pytest.raises(NoLearningSignal, match="first 2 prompts x"):
        fresh.check("f")


# ------------------------------------------------------------------------------ no learning signal


def test_rewards_that_never_apply_say_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The demo's verifier returns None outside its scenario: records without it score nothing."""
    from learnloop.training.run import train

    rollout = {"rewards": ["rt_scenario_only"], "scoring": SCORING, "num_generations": 2, "max_new_tokens": 3}
    cfg = make_config(tiny_model_dir, tmp_path, algorithm="grpo", rows=PROMPTS, max_steps=2, rollout=rollout)
    with pytest.raises(
        NoLearningSignal, match=r"no reward applied to any answer of the first 4 prompts.*scenario"
    ):
        train(cfg)
    # With the scenario on the records, the same function scores and the run trains.
    rows = [{**p, "scenario": "orders"} for p in PROMPTS]
    cfg = make_config(
        tiny_model_dir, tmp_path, algorithm="grpo", rows=rows, max_steps=2, out="ok", rollout=rollout
    )
    result = train(cfg)
    assert result.step == 2 and all(0 <= m["reward_mean"] <= 1 for m in _metrics(result.metrics_path))


def test_the_script_exits_3_with_a_no_signal_event(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="rft",
        rows=PROMPTS,
        max_steps=4,
        rollout={"rewards": ["rt_lower"], "scoring": SCORING, "num_generations": 2, "max_new_tokens": 3},
        rft={"min_reward": 2.0},  # rt_lower is at most 1: nothing can pass
    )
    proc = _run_script(cfg, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["kind"] for e in events] == ["start", "no_signal"]
    assert "no answer reached the bar (rft.min_reward = 2)" in events[-1]["message"]
    assert "Nothing to learn" in proc.stderr


# ------------------------------------------------------------------------------ the group judge


@pytest.fixture(scope="module")
def ruler() -> Iterator[tuple[RulerJudge, str]]:
    judge = RulerJudge()
    with live_server(judge.app) as url:
        yield judge, f"{url}/v1"


def _judge_scoring(url: str, **kw: Any) -> dict[str, Any]:
    return {
        **SCORING,
        "judge_base_url": url,
        "judge_model": "ruler",
        "judge_max_attempts": 1,
        "judge_retry_backoff": 0,
        **kw,
    }


def test_the_group_judge_ranks_each_prompts_samples_over_http(
    tiny_model_dir: Path, tmp_path: Path, ruler: tuple[RulerJudge, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from learnloop.training.run import train

    judge, url = ruler
    judge.requests.clear(), judge.headers.clear(), judge.candidates.clear()
    monkeypatch.setenv("LEARNLOOP_SCORING__JUDGE_API_KEY", "sk-test-key")
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=PROMPTS,
        batch_size=4,
        max_steps=30,
        checkpoint_every=30,
        rollout={"judge": True, "scoring": _judge_scoring(url), "num_generations": 8, "max_new_tokens": 8},
    )
    result = train(cfg)
    metrics = _metrics(result.metrics_path)
    assert len(judge.requests) == 30 * 4  # one request per prompt and step: the group, ranked together
    assert all(len(c) == 8 for c in judge.candidates)
    assert {r["model"] for r in judge.requests} == {"ruler"}
    assert {h["authorization"] for h in judge.headers} == {"Bearer sk-test-key"}
    shared = judge.requests[0]["messages"][-1]["content"].split("## Candidate 1")[0]
    assert "[user]" in shared and any(p["prompt"][0]["content"] in shared for p in PROMPTS)
    assert all(m["aspect/judge"] == pytest.approx(m["reward_mean"]) for m in metrics)
    rewards = [m["reward_mean"] for m in metrics]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.15, rewards  # the judge's preference is learned
    assert "sk-test-key" not in (result.output_dir / "train_config.json").read_text()


def test_judge_and_verifier_combine_and_a_failing_judge_stops_the_run(
    tiny_model_dir: Path, tmp_path: Path, ruler: tuple[RulerJudge, str]
) -> None:
    from learnloop.scoring import JudgeError
    from learnloop.training.run import train

    judge, url = ruler
    obj, _ = objective_for(
        tiny_model_dir,
        "grpo",
        rollout={"rewards": ["rt_has_answer"], "judge": True, "scoring": _judge_scoring(url)},
    )
    prompt = obj.prepare({"prompt": "hi", "answer": "ok"}, 1).data["prompt"]
    got = obj.scorer.score(prompt, [_asst("ok"), _asst("NO!")])
    # Both are explicit signals (a verifier and the judge): the reward is their mean.
    assert got.aspects == [{"rt_has_answer": 1.0, "judge": 1.0}, {"rt_has_answer": 0.0, "judge": 0.0}]
    assert got.rewards == [1.0, 0.0]

    judge.garbage = True
    try:
        cfg = make_config(
            tiny_model_dir,
            tmp_path,
            algorithm="grpo",
            rows=PROMPTS,
            rollout={"judge": True, "scoring": _judge_scoring(url), "max_new_tokens": 3},
        )
        with pytest.raises(JudgeError, match=rf"group judge \({url}, model ruler\) failed .*not JSON"):
            train(cfg)
    finally:
        judge.garbage = False


# ------------------------------------------------------------------------------ the training process


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra})
    return env


def _run_script(cfg: Any, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cfg_file = tmp / f"{cfg.output_dir.name}.json"
    cfg_file.write_text(cfg.model_dump_json())
    return subprocess.run(
        [sys.executable, "-m", "learnloop.training.run", "--config", str(cfg_file)],
        env=_script_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_training_process_imports_reward_modules_but_never_the_store(
    tiny_model_dir: Path, tmp_path: Path, ruler: tuple[RulerJudge, str]
) -> None:
    _, url = ruler
    cfg = make_config(
        tiny_model_dir,
        tmp_path,
        algorithm="grpo",
        rows=PROMPTS,
        batch_size=2,
        max_steps=2,
        rollout={"rewards": ["rt_lower"], "judge": True, "scoring": _judge_scoring(url), "max_new_tokens": 4},
    )
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.model_dump_json())
    driver = (
        "import sys\n"
        "from learnloop.training.run import main\n"
        f"rc = main(['--config', {str(cfg_file)!r}])\n"
        "store = ('learnloop.store', 'sqlalchemy', 'alembic')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(store))\n"
        "reward_modules = [m for m in sys.modules if m.startswith('learnloop_user_rollout_rewards')]\n"
        "print('RESULT', rc, loaded, len(reward_modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", driver], env=_script_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "RESULT 0 [] 1"


GATED = {"rewards": ["rt_lower_gated"], "scoring": SCORING, "num_generations": 4, "max_new_tokens": 6}


def _gated_config(tiny_model_dir: Path, tmp: Path, out: str) -> Any:
    return make_config(
        tiny_model_dir,
        tmp,
        algorithm="grpo",
        rows=PROMPTS,
        out=out,
        batch_size=2,
        max_steps=6,
        checkpoint_every=2,
        lora={"r": 8, "alpha": 16, "dropout": 0.1},  # dropout draws from the RNG a resume must restore
        rollout=GATED,
    )


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("rollout-ref")
    proc = _run_script(_gated_config(tiny_model_dir, tmp, "ref"), tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "ref"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stop_or_kill_mid_rollout_resumes_at_the_step_boundary(
    tiny_model_dir: Path, tmp_path: Path, uninterrupted: Path, signum: int
) -> None:
    """Step 4's rollout is held inside the reward function (its 2 prompts x 4 samples: calls 25..32)
    when the signal arrives. SIGTERM finishes step 4 and checkpoints it; SIGKILL loses it and the
    resume starts from checkpoint 2. Either way the resumed run ends where the uninterrupted one did."""
    from learnloop.training.checkpoint import latest_checkpoint

    gate = tmp_path / "gate"
    gate.mkdir()
    cfg = _gated_config(tiny_model_dir, tmp_path, "run")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.model_dump_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnloop.training.run", "--config", str(cfg_file)],
        env=_script_env(LEARNLOOP_TEST_GATE=str(gate), LEARNLOOP_TEST_GATE_AT="27"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (gate / "waiting").exists():
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the rollout never reached the gate"
            time.sleep(0.05)
        os.kill(proc.pid, signum)
        (gate / "go").write_text("")
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3] + (
        [4] if signum == signal.SIGTERM else []
    )
    if signum == signal.SIGTERM:
        assert proc.returncode == 0 and events[-1]["kind"] == "stopped" and events[-1]["step"] == 4
    else:
        assert proc.returncode == -signal.SIGKILL
    resume_from = 4 if signum == signal.SIGTERM else 2
    assert latest_checkpoint(cfg.output_dir).step == resume_from

    second = _run_script(cfg, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    start = json.loads(second.stdout.splitlines()[0])
    assert start["kind"] == "start" and f"resumed from checkpoint-{resume_from}" in start["message"]
    ref, got = adapter_weights(uninterrupted / "adapter"), adapter_weights(cfg.output_dir / "adapter")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k], got[k], rtol=1e-5, atol=1e-6), k
    ref_rewards = [m["reward_mean"] for m in _metrics(uninterrupted / "metrics.jsonl")]
    assert [
        m["reward_mean"] for m in _metrics(cfg.output_dir / "metrics.jsonl")
    ] == ref_rewards  # same samples


# ------------------------------------------------------------------------------ config


def test_rollout_config_checks() -> None:
    from learnloop.training.config import TrainConfig

    base = {"base_model": "m", "dataset": "d.jsonl", "output_dir": "o"}
    with pytest.raises(ValueError, match="rft samples answers .* name rollout.rewards"):
        TrainConfig.model_validate({**base, "algorithm": "rft"})
    with pytest.raises(ValueError, match="judge_api_key must not be written into a training config"):
        TrainConfig.model_validate(
            {**base, "algorithm": "grpo", "rollout": {"scoring": {"judge_api_key": "k"}}}
        )
    with pytest.raises(ValueError, match="rating_max"):  # the [scoring] settings are validated as such
        TrainConfig.model_validate(
            {**base, "algorithm": "grpo", "rollout": {"scoring": {"rating_min": 5, "rating_max": 1}}}
        )
    with pytest.raises(ValueError, match="online GRPO compares samples"):
        TrainConfig.model_validate(
            {**base, "algorithm": "grpo", "rollout": {"rewards": ["x"], "num_generations": 1}}
        )
    with pytest.raises(ValueError, match="kto estimates its KL term .* batch_size >= 2"):
        TrainConfig.model_validate({**base, "algorithm": "kto", "batch_size": 1})
    # The old grpo sampling keys still work: moved to rollout, with a warning that names the new place.
    with pytest.warns(FutureWarning, match=r"grpo.num_generations moved to the rollout section"):
        cfg = TrainConfig.model_validate({**base, "algorithm": "grpo", "grpo": {"num_generations": 6}})
    assert cfg.rollout.num_generations == 6 and cfg.grpo.num_generations is None
    again = TrainConfig.model_validate_json(cfg.model_dump_json())  # what a supervisor writes and reloads
    assert again.rollout.num_generations == 6
    with pytest.raises(ValueError, match="grpo.num_generations .* and rollout.num_generations disagree"):
        TrainConfig.model_validate(
            {**base, "algorithm": "grpo", "grpo": {"num_generations": 6}, "rollout": {"num_generations": 8}}
        )
    # Each algorithm has its own default learning rate; an explicit one wins.
    from learnloop.training.config import ALGORITHM_DEFAULTS

    for algorithm in ("sft", "dpo", "grpo", "kto"):
        got = TrainConfig.model_validate({**base, "algorithm": algorithm}).learning_rate
        assert got == ALGORITHM_DEFAULTS[algorithm].learning_rate
    assert (
        TrainConfig.model_validate({**base, "algorithm": "grpo", "learning_rate": 0.5}).learning_rate == 0.5
    )


def test_one_reward_function_for_rollouts_and_trl(tiny_model_dir: Path) -> None:
    """The demo's verifier, registered with @reward, scores the same answers the same way in
    learnloop's rollouts and as a TRL reward function (scenario and prompt reach both views)."""
    from learnloop.demo.task import cases
    from learnloop.scoring import as_trl_reward

    case = cases(3, 1)[0]
    answers = [case.teacher_answer(), '{"name": "x"}', "sure, here it is"]
    obj, _ = objective_for(
        tiny_model_dir,
        "grpo",
        rollout={"rewards": ["order_json"], "scoring": {"reward_modules": ["learnloop.demo.rewards"]}},
        max_length=256,
    )
    prompt = obj.prepare({"prompt": case.messages, "scenario": "orders"}, 1).data["prompt"]
    ours = obj.scorer.score(prompt, [_asst(a) for a in answers]).rewards
    trl = as_trl_reward("order_json")(
        prompts=[case.messages] * 3,
        completions=[[{"role": "assistant", "content": a}] for a in answers],
        scenario=["orders"] * 3,
    )
    assert ours == trl == [1.0, 0.0, 0.0]


def test_the_readme_rollout_config_is_valid() -> None:
    """The README's rollout example is a real training config."""
    import re
    import tomllib

    from learnloop.training.config import TrainConfig

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Rollouts: learning without a teacher") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    cfg = TrainConfig.model_validate(tomllib.loads(block))
    assert cfg.online and cfg.rollout.rewards == ["order_json"] and cfg.rollout.num_generations == 8
    assert cfg.rollout.scoring.judge_model == "learnloop"
