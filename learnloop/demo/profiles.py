"""The demo's two sizes: ``full`` on SmolLM2-135M-Instruct, ``quick`` on the tiny offline test model.

A profile decides the model, how much traffic there is, and the loop's config. The config is a
plain ``learnloop.toml`` written into the demo's data dir, the same file a user would write: the
teacher as an ``[[upstreams]]`` entry the ``learnloop`` alias starts on, its answers captured as
teacher data (15% plus the confident ones), a loop learning from them, a gate against the teacher
and a canary that moves the users over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from learnloop.demo.runner import DemoRun


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int
    backfill: int  # earlier teacher answers dropped in the inbox
    batch: int  # requests the app sends at once
    before_rounds: int  # rounds measured on the base model before anything is trained
    after_cases: int  # fresh cases measured once the promoted version serves
    max_tokens: int
    min_new_examples: int
    train: dict[str, Any]
    gate: dict[str, Any]
    eval_limit: int
    budget_s: float  # the whole demo, once the model is prepared
    holdout_fraction: float = 0.2
    # Serving and training share the CPU while the app runs: one torch thread each keeps their thread
    # pools from oversubscribing the cores (on two cores, 2 + 2 threads made a training step 7x slower).
    threads: int | None = None
    canary: dict[str, Any] | None = None
    # The teacher answers like a hosted model: its latency simulated, its price a large model's list
    # price (per 1,000 tokens), so the latency and cost figures have something real to compare.
    teacher_first_token_ms: float = 300.0
    teacher_token_ms: float = 10.0
    teacher_price: tuple[float, float] = (0.0025, 0.01)
    # No teacher: the app's own traffic on the base model, and only its verifier (`@reward order_json`).
    no_teacher: bool = False
    algorithm: str = "sft"
    backoff: str = "1h"
    # Keep the app running (the loop training and promoting) after the first promotion until the
    # served version's recent answers succeed at this rate or the budget ends (None: stop at once).
    learn_until: float | None = None

    def prepare(self, run: DemoRun) -> str:
        """Make the base model available and return the name or path the config should use."""
        if self.name == "quick":
            from learnloop.models.tiny import build_tiny_model

            path = run.data_dir / "models" / "tiny"
            if not (path / "config.json").exists():
                build_tiny_model(path)
            return str(path)
        run.cli("models", "prepare", "smollm2")
        return "smollm2"

    def config_toml(self, *, base_model: str, data_dir: Path, port: int, teacher_url: str) -> str:
        if self.no_teacher:
            return self.no_teacher_toml(base_model=base_model, data_dir=data_dir, port=port)
        q = json.dumps  # TOML basic strings and JSON strings agree for these values
        train = ", ".join(f"{k} = {_toml(v)}" for k, v in self.train.items())
        gate = ", ".join(f"{k} = {_toml(v)}" for k, v in self.gate.items())
        canary = "\n".join(f"{k} = {_toml(v)}" for k, v in (self.canary or {}).items())
        threads = f"threads = {self.threads}\n" if self.threads else ""
        training_threads = f"training_threads = {self.threads}\n" if self.threads else ""
        command = "learnloop demo --quick" if self.name == "quick" else "learnloop demo"
        return f"""# Written by `{command}`: the config a user would write for this loop.
data_dir = {q(str(data_dir))}

[server]
port = {port}
inbox_poll_seconds = 1.0

[serving]
base_model = {q(base_model)}
max_batch_size = {max(self.batch, 8)}
{threads}
[[upstreams]]
# The app's big model, served through learnloop: the `learnloop` alias starts on upstream:teacher.
name = "teacher"
base_url = {q(teacher_url + "/v1")}
model = "rules-teacher"
api_key_env = {q(TEACHER_KEY_ENV)}
timeout = 30
price_per_1k_tokens = {{ input = {self.teacher_price[0]}, output = {self.teacher_price[1]} }}
confidence_from_logprobs = true

[capture]
# Distillation as the seed systems did it: 15% of the teacher's answers plus every confident one.
source_sample_rates = {{ teacher = 0.15 }}
keep_confident = 0.8

[canary]
{canary}

[scoring]
reward_modules = ["learnloop.demo.rewards"]

[datasets]
holdout_fraction = {self.holdout_fraction}

[training]
base_model = {q(base_model)}

[evaluation]
max_new_tokens = {self.max_tokens}
# Held-out cases answered a batch at a time, as the app's requests are: one at a time, each waited
# behind the app's batches and the evaluation took longer than the training.
concurrency = {self.batch}

[daemon]
poll_interval = 1.0
score_interval = 3.0
heartbeat_seconds = 2.0
{training_threads}
[[loops]]
name = "orders"
algorithm = "sft"
scenario = "orders"
sources = ["teacher"]
train = {{ {train} }}
gate = {{ {gate} }}
eval_limit = {self.eval_limit}
auto_promote = true

[loops.triggers]
min_new_examples = {self.min_new_examples}
check_interval = "3s"
min_holdout = {min(16, self.eval_limit)}
min_free_disk_mb = 200
"""

    def no_teacher_toml(self, *, base_model: str, data_dir: Path, port: int) -> str:
        """The loop a user without a teacher writes: served traffic (one answer per request) as the
        prompts, the app's verifier as the reward, the policy answering them itself."""
        q = json.dumps
        train = ", ".join(f"{k} = {_toml(v)}" for k, v in self.train.items())
        gate = ", ".join(f"{k} = {_toml(v)}" for k, v in self.gate.items())
        threads = f"threads = {self.threads}\n" if self.threads else ""
        training_threads = f"training_threads = {self.threads}\n" if self.threads else ""
        return f"""# Written by `learnloop demo --no-teacher` ({self.name}): the config a user without a \
teacher would write.
data_dir = {q(str(data_dir))}

[server]
port = {port}
inbox_poll_seconds = 1.0

[serving]
base_model = {q(base_model)}
max_batch_size = {max(self.batch, 8)}
{threads}
[scoring]
# The app's verifier, registered with @reward: the only signal there is.
reward_modules = ["learnloop.demo.rewards"]

[datasets]
holdout_fraction = {self.holdout_fraction}

[training]
base_model = {q(base_model)}

[evaluation]
max_new_tokens = {self.max_tokens}
concurrency = {self.batch}

[daemon]
poll_interval = 1.0
score_interval = 3.0
heartbeat_seconds = 2.0
{training_threads}
[[loops]]
name = "orders"
algorithm = {q(self.algorithm)}
scenario = "orders"
sources = ["served"]
rewards = ["order_json"]
train = {{ {train} }}
gate = {{ {gate} }}
eval_limit = {self.eval_limit}
auto_promote = true

[loops.triggers]
min_new_examples = {self.min_new_examples}
check_interval = "3s"
backoff = {q(self.backoff)}
min_free_disk_mb = 200
"""


TEACHER_KEY_ENV = "DEMO_TEACHER_API_KEY"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


FULL = Profile(
    name="full",
    seed=2026,
    backfill=240,
    batch=8,
    before_rounds=4,
    after_cases=64,
    max_tokens=48,
    min_new_examples=150,
    train={
        "max_steps": 24,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_length": 192,
        "checkpoint_every": 8,
        "lora": {"r": 16, "alpha": 32},
    },
    # Against the teacher: no worse by more than 0.1 of reward (and no more than 10% fewer valid JSON
    # answers: the teacher's are all valid, so the default 2% would ask for perfection).
    gate={"min_examples": 16, "teacher_margin": 0.1, "max_json_validity_drop": 0.1},
    eval_limit=32,
    budget_s=15 * 60,
    threads=1,
    canary={"steps": [0.1, 0.5, 1.0], "min_step_seconds": 20, "min_answers": 8, "teacher_window": 200},
)

# The tiny random model cannot learn the task in seconds: the quick profile checks that every
# stage happens (proxying, capture, trigger, training, registration, evaluation against the teacher,
# gate, canary steps, promotion, hot swap), so its gate and canary let any candidate through.
QUICK = Profile(
    name="quick",
    seed=7,
    backfill=60,
    batch=4,
    before_rounds=1,
    after_cases=8,
    max_tokens=8,
    min_new_examples=30,
    train={"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "max_length": 256, "checkpoint_every": 2},
    gate={
        "min_examples": 4,
        "teacher_margin": 3.0,
        "max_p95_latency_ratio": 100.0,
        "max_json_validity_drop": 1.0,
        "max_refusal_increase": 1.0,
        "max_scenario_regression": 1.0,
    },
    eval_limit=8,
    budget_s=120,
    canary={"steps": [0.5, 1.0], "min_step_seconds": 0, "min_answers": 2, "teacher_window": 50},
    teacher_first_token_ms=0.0,
    teacher_token_ms=0.0,
)

# Without a teacher: the app asks the base model (through `learnloop`) and its verifier scores.
# Rejection sampling first: the cheapest path when the model sometimes gets it right (on this task
# SmolLM2-135M does for some cases; ALGORITHM_DEFAULTS' measurements). Each cycle samples 16 answers
# per new served prompt (16 prompts: 8 steps, RFT's floor), keeps the exact ones and the best partial
# one of each prompt that beats its samples' mean, and trains on them;
# the gate compares against the base; later cycles continue the adapter on the prompts new since.
FULL_NO_TEACHER = Profile(
    name="full-no-teacher",
    seed=2026,
    backfill=0,
    batch=8,
    before_rounds=4,
    after_cases=64,
    max_tokens=48,
    min_new_examples=16,
    train={
        # 2 prompts x 16 samples a step (the same 32 samples as 8 x 4): of one prompt's samples the exact
        # ones beat every partial one, and at most one partial answer per prompt is trained however many
        # samples there are, so more samples per prompt tilt what is trained towards the exact answers.
        # With 8 x 4 (and up to two partial answers a prompt) the first cycle locked into a three-field
        # answer that never names the city (see "rft" below): 0/112 exact once promoted, and none of
        # 96 samples at T=1.0 had a "city" key, so no later cycle could find an exact one. 4 x 8 went
        # the same way (reward 0.36, 31-token answers by step 4).
        "batch_size": 2,
        # A fixed length: the app keeps sending while a cycle trains, and sized by its prompts the
        # second cycle of the measured run had 404 of them (201 steps, far past the budget). The first
        # cycle had 48 (24 steps), so it is unchanged.
        "max_steps": 24,
        "learning_rate": 1e-3,
        "max_length": 192,
        "checkpoint_every": 4,
        "lora": {"r": 16, "alpha": 32},
        # T=0.6, not 0.9: the base's answers at 0.9 are mostly prose or broken JSON (5 of 32 prompts had
        # any sample scoring above 0 in 8 tries); at 0.6, 8 of 16 prompts did (one JSON object and
        # nothing else is what the verifier scores at all).
        "rollout": {"num_generations": 16, "max_new_tokens": 48, "temperature": 0.6},
        # The verifier gives 0.125 per field right (at most 0.5) and 1.0 for the exact order. The base
        # never answers exactly at first, and a fixed partial bar (0.375, measured) trained its plateau:
        # answers without the "city" key (the base leaves it out of 51 of 53 objects) scored 0.375 and
        # were kept, the mean reward rose 0.118 -> 0.406 and the promoted version was 0/64 exact. So the
        # bar is exact (1.0) plus a relative one: a prompt's best answer when it beats the prompt's mean
        # (at least one field right), which rises with the model and lets city-bearing answers win.
        # Measured (README): cycle 1 found the key again at step 8 (v0001: 41/64 exact), cycle 2 promoted
        # v0002 at 16 min (60/64 exact); that escape is shown for this seed only (three runs with 4 or 8
        # samples a prompt did not escape).
        "rft": {"min_reward": 1.0, "best_above_mean": 0.125, "max_per_prompt": 2},
    },
    gate={"min_examples": 16, "max_json_validity_drop": 0.1},
    eval_limit=32,
    budget_s=30 * 60,
    threads=1,
    no_teacher=True,
    algorithm="rft",
    backoff="30s",
    learn_until=0.8,
)

# The tiny random model never answers exactly: the bar is 0 so its own samples pass and every stage
# runs (served capture, prompt count, rollouts scored by the verifier, training, registration,
# evaluation against the base, gate, promotion, hot swap); its gate lets any candidate through.
QUICK_NO_TEACHER = Profile(
    name="quick-no-teacher",
    seed=7,
    backfill=0,
    batch=4,
    before_rounds=1,
    after_cases=8,
    max_tokens=8,
    min_new_examples=8,
    train={
        "max_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_length": 256,
        "checkpoint_every": 2,
        "rollout": {"num_generations": 2, "max_new_tokens": 8},
        "rft": {"min_reward": 0.0},
    },
    gate={
        "min_examples": 2,
        "margin": -10.0,
        "max_p95_latency_ratio": 100.0,
        "max_json_validity_drop": 1.0,
        "max_refusal_increase": 1.0,
        "max_scenario_regression": 1.0,
    },
    eval_limit=4,
    budget_s=300,
    no_teacher=True,
    algorithm="rft",
    backoff="5s",
)

PROFILES = {
    "full": FULL,
    "quick": QUICK,
    "full-no-teacher": FULL_NO_TEACHER,
    "quick-no-teacher": QUICK_NO_TEACHER,
}
