"""Learning without a teacher on the demo task: success rate against minutes, the same wall-clock
budget per arm, and learnloop's GRPO / KTO beside TRL's trainers on the same data and steps.

    .venv/bin/python benchmarks/bench_no_teacher.py                       # SmolLM2, every arm, 6 min each
    .venv/bin/python benchmarks/bench_no_teacher.py --quick               # tiny model: the plumbing only
    .venv/bin/python benchmarks/bench_no_teacher.py --arms grpo@1e-3 grpo@2e-4 rft --budget 10
    .venv/bin/python benchmarks/bench_no_teacher.py --arms grpo-judge --judge-url http://127.0.0.1:8377/v1

The task is the demo's (learnloop/demo/task.py): a customer's order message in, one line of JSON
out, checked by the demo's verifier (``order_json`` in learnloop/demo/rewards.py: 1.0 exact,
partial credit up to 0.5 for some fields of a JSON object, 0 otherwise). Train prompts and the
held-out cases are drawn from different seeds. Success = exact answers, greedy, on the held-out
cases, measured at evenly spaced points of each arm's budget (from the checkpoints the run wrote;
evaluation time is not part of the budget).

Arms (LoRA r=16/alpha=32 on all linear layers, constant learning rate: the algorithm's default, or
the one an arm names as ``ARM@LR``, e.g. ``grpo@1e-3``; an arm may run at several rates):

- sft         teacher SFT, the reference: the teacher's answer to every train prompt
- grpo        on-policy GRPO, rewards from the verifier as an app registers it (rollout.rewards);
              ``--reward lenient``: a verifier with partial credit for the format instead
- rft         rejection-sampling fine-tuning, the same reward, bar --rft-bar
- kto         KTO from feedback alone: the base model's served answers (--served-n per prompt, T=0.9),
              thumbs up when the verifier says exact, down otherwise
- dpo         DPO from served groups: per prompt, best vs worst served answer while the gap is >= 0.1
- grpo-judge  GRPO with the group judge at --judge-url (any OpenAI-compatible endpoint), not run
              without it
- trl-grpo    TRL's GRPOTrainer on the grpo arm's prompts for the steps the grpo arm took (same
              generations, completion length, temperature, learning rate; loss_type dapo = learnloop's
              token-level mean, beta 0, group-scaled rewards)
- trl-kto     TRL's KTOTrainer on the kto arm's records for the steps the kto arm took

Served answers (for kto and dpo) are sampled once from the base model before the arms run; their
time is reported apart (in the loop they are the app's own traffic). Each arm runs in this process,
one after the other, with the same torch thread count (--threads); the machine's load is printed at
the start and the end.
"""

# run.sh --quick: --quick

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("sft", "grpo", "rft", "kto", "dpo", "grpo-judge", "trl-grpo", "trl-kto")
# The demo's verifier as the demo registers it, or (--reward lenient) one with partial credit for the
# format: benchmarks/no_teacher_rewards.py.
REWARDS = {
    "verifier": {"rewards": ["order_json"], "scoring": {"reward_modules": ["learnloop.demo.rewards"]}},
    "lenient": {
        "rewards": ["order_json_lenient"],
        "scoring": {"reward_modules": [str(Path(__file__).with_name("no_teacher_rewards.py"))]},
    },
}


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z, p = 1.96, k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


# ----------------------------------------------------------------------------------- the task


def task_data(train_n: int, eval_n: int) -> tuple[list[Any], list[Any]]:
    from learnloop.demo.task import cases

    return cases(2026, train_n), cases(7777, eval_n)


def prompt_record(case: Any) -> dict[str, Any]:
    return {"prompt": case.messages, "scenario": "orders"}


def exact(case: Any, text: str) -> bool:
    from learnloop.demo.task import check

    return check(case.message, text) == 1.0


# ----------------------------------------------------------------------------------- generation


def generate(
    model: Any,
    tok: Any,
    convs: list[list[dict[str, Any]]],
    *,
    n: int,
    temperature: float | None,
    max_new: int,
) -> list[str]:
    """Answers (n per conversation, conversation-major), batched with left padding."""
    import torch

    tok.padding_side = "left"
    out: list[str] = []
    step = max(1, 32 // n)
    for i in range(0, len(convs), step):
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in convs[i : i + step]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        kw: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature
            else {"do_sample": False}
        )
        with torch.no_grad():
            ids = model.generate(
                **enc, max_new_tokens=max_new, num_return_sequences=n, pad_token_id=tok.pad_token_id, **kw
            )
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def base_model(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from learnloop.models.loading import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)


def evaluate(path: Path, adapter: Path | None, cases: list[Any], max_new: int) -> tuple[int, int]:
    model, tok = base_model(path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    answers = generate(model, tok, [c.messages for c in cases], n=1, temperature=None, max_new=max_new)
    return sum(exact(c, a) for c, a in zip(cases, answers, strict=True)), len(cases)


def served_answers(path: Path, cases: list[Any], n: int, max_new: int) -> tuple[list[list[str]], float]:
    model, tok = base_model(path)
    t0 = time.perf_counter()
    flat = generate(model, tok, [c.messages for c in cases], n=n, temperature=0.9, max_new=max_new)
    return [flat[i * n : (i + 1) * n] for i in range(len(cases))], time.perf_counter() - t0


# ----------------------------------------------------------------------------------- datasets


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arm_rows(arm: str, train: list[Any], served: list[list[str]]) -> list[dict[str, Any]]:
    from learnloop.demo.task import check

    def asst(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    if arm == "sft":
        return [{"messages": [*c.messages, *asst(c.teacher_answer())]} for c in train]
    if arm in ("grpo", "rft", "grpo-judge", "trl-grpo"):
        return [prompt_record(c) for c in train]
    if arm in ("kto", "trl-kto"):
        return [
            {"prompt": c.messages, "completion": asst(a), "label": exact(c, a)}
            for c, answers in zip(train, served, strict=True)
            for a in answers
        ]
    if arm == "dpo":  # datasets/builders.py's rule: outside-in pairs while the gap is >= the margin
        rows = []
        for c, answers in zip(train, served, strict=True):
            ranked = sorted(answers, key=lambda a: -check(c.message, a))
            i, j = 0, len(ranked) - 1
            while i < j and check(c.message, ranked[i]) - check(c.message, ranked[j]) >= 0.1:
                rows.append({"prompt": c.messages, "chosen": asst(ranked[i]), "rejected": asst(ranked[j])})
                i, j = i + 1, j - 1
        return rows
    raise ValueError(arm)


# ----------------------------------------------------------------------------------- learnloop arms


def split_arm(name: str) -> tuple[str, float | None]:
    arm, _, lr = name.partition("@")
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}; choose from {', '.join(ARMS)} (optionally ARM@LR)")
    return arm, float(lr) if lr else None


def arm_config(name: str, args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    arm, lr = split_arm(name)
    algorithm = {"grpo-judge": "grpo"}.get(arm, arm)
    cfg: dict[str, Any] = {
        "algorithm": algorithm,
        "base_model": str(args.model_path),
        "dataset": str(data),
        "output_dir": str(out),
        "lora": {"r": 16, "alpha": 32},
        "max_length": 256,
        "max_steps": 100_000,  # the budget stops the run
        "lr_scheduler": "constant",
        # A rollout step takes tens of seconds: a checkpoint each (the curve's points) costs little.
        # The others' steps take seconds: every 4th keeps the checkpoints' share of the budget small.
        "checkpoint_every": 1 if algorithm in ("grpo", "rft") else 4,
        "keep_checkpoints": 2,
        "device": "cpu",
        "batch_size": {"sft": 8, "dpo": 4, "kto": 8}.get(algorithm, args.prompts_per_step),
    }
    if lr is not None:
        cfg["learning_rate"] = lr
    rollout = {
        "num_generations": args.generations,
        "max_new_tokens": args.rollout_max_new or args.max_new,
        "temperature": args.temperature,
    }
    if arm in ("grpo", "rft"):
        cfg["rollout"] = {**REWARDS[args.reward], **rollout}
    if arm == "rft":
        cfg["rft"] = {"min_reward": args.rft_bar, "best_above_mean": args.rft_best_above_mean}
    if arm == "grpo-judge":
        scoring = {
            "judge_base_url": args.judge_url,
            "judge_model": args.judge_model,
            "judge_retry_backoff": 0,
        }
        cfg["rollout"] = {"judge": True, "scoring": scoring, **rollout}
    return cfg


def run_learnloop(
    arm: str, args: argparse.Namespace, rows: list[dict[str, Any]], work: Path
) -> dict[str, Any]:
    from learnloop.errors import NoLearningSignal
    from learnloop.training.checkpoint import latest_checkpoint
    from learnloop.training.control import Control
    from learnloop.training.run import train, validate_config

    out = work / arm
    shutil.rmtree(out, ignore_errors=True)
    cfg = validate_config(arm_config(arm, args, write_jsonl(work / f"{arm}.jsonl", rows), out))
    control = Control()
    points: list[tuple[int, float, str]] = []  # (step, seconds, adapter kept for the curve)
    budget = args.budget * 60
    marks = [budget * k / args.evals for k in range(1, args.evals)]  # the last point: the final adapter
    elapsed = [0.0]

    def progress(e: Any) -> None:
        elapsed[0] = max(elapsed[0], e.elapsed_s)
        if e.kind == "checkpoint" and marks and e.elapsed_s >= marks[0]:
            while marks and e.elapsed_s >= marks[0]:
                marks.pop(0)
            keep = out / "curve" / f"step-{e.step}"
            shutil.copytree(Path(e.path) / "adapter", keep, dirs_exist_ok=True)
            points.append((e.step, e.elapsed_s, str(keep)))
        if e.kind == "step":
            if cfg.online or e.step % 10 == 0:
                print(f"  {arm} step {e.step} {e.elapsed_s:6.0f}s " + _brief(e.metrics), flush=True)
            if e.elapsed_s >= budget:
                control.stop()

    t0 = time.perf_counter()
    outcome = "ran"
    try:
        train(cfg, control=control, progress=progress)
    except NoLearningSignal as exc:
        outcome = f"no learning signal: {exc}"
        print(f"  {arm}: {outcome}", flush=True)
    metrics_file = out / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    last = latest_checkpoint(out) if metrics else None
    if last is not None and (not points or points[-1][0] != last.step):
        points.append((last.step, elapsed[0], str(last.adapter_dir)))
    return {
        "arm": arm,
        "learning_rate": cfg.learning_rate,
        "wall_s": time.perf_counter() - t0,
        "train_s": elapsed[0],
        "outcome": outcome,
        "examples": len(rows),
        "points": points,
        "metrics": metrics,
    }


def _brief(m: dict[str, Any]) -> str:
    keys = ("loss", "reward_mean", "pass_rate", "kl", "rewards/margins", "completion_length", "tokens_per_s")
    return " ".join(f"{k}={m[k]:.3g}" for k in keys if isinstance(m.get(k), (int, float)))


# ----------------------------------------------------------------------------------- TRL arms


class _Timer:
    """A transformers callback: seconds and logs of every optimizer step."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def __init__(self) -> None:
                self.t0 = time.perf_counter()
                self.steps: list[float] = []
                self.logs: list[dict[str, Any]] = []

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.steps.append(time.perf_counter() - self.t0)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
                self.logs.append(dict(logs or {}))

        return Timer()


def run_trl(
    arm: str, args: argparse.Namespace, rows: list[dict[str, Any]], steps: int, lr: float, work: Path
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig

    from learnloop.models.loading import load_tokenizer

    tok = load_tokenizer(args.model_path)
    torch.manual_seed(0)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    common = {
        "output_dir": str(work / arm),
        "max_steps": steps,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "max_grad_norm": 1.0,
        "seed": 0,
    }
    timer = _Timer()
    if arm == "trl-grpo":
        from trl import GRPOConfig, GRPOTrainer

        from learnloop.scoring import as_trl_reward, load_modules

        reward = REWARDS[args.reward]
        load_modules(reward["scoring"]["reward_modules"])
        config = GRPOConfig(
            **common,
            per_device_train_batch_size=args.prompts_per_step * args.generations,
            num_generations=args.generations,
            max_completion_length=args.rollout_max_new or args.max_new,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            beta=0.0,
            loss_type="dapo",
        )
        trainer = GRPOTrainer(
            model=str(args.model_path),
            reward_funcs=as_trl_reward(reward["rewards"][0]),
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
            callbacks=[timer],
        )
    else:
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(**common, per_device_train_batch_size=8, max_length=256, beta=0.1)
        trainer = KTOTrainer(
            model=str(args.model_path),
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
            callbacks=[timer],
        )
    t0 = time.perf_counter()
    trainer.train()
    return {
        "arm": arm,
        "wall_s": time.perf_counter() - t0,
        "steps": timer.steps,
        "logs": timer.logs,
        "learning_rate": lr,
    }


# ----------------------------------------------------------------------------------- report


def curve(result: dict[str, Any], args: argparse.Namespace, eval_cases: list[Any]) -> list[dict[str, Any]]:
    """Exact rate of the adapters kept at evenly spaced points of the budget (the last: the final one)."""
    out = []
    for step, seconds, path in result["points"]:
        hits, n = evaluate(args.model_path, Path(path), eval_cases, args.max_new)
        out.append({"minutes": seconds / 60, "step": step, "exact": hits, "n": n})
        print(f"  {result['arm']} @ {seconds / 60:.1f} min (step {step}): {hits}/{n} exact", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Tiny random model, short budget: the plumbing.")
    parser.add_argument("--model", default="smollm2", help="Prepared model name or HF folder.")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=[a for a in ARMS if a != "grpo-judge"],
        help=f"Arms to run, each ARM or ARM@LR; ARM one of {', '.join(ARMS)}.",
    )
    parser.add_argument("--budget", type=float, default=6.0, help="Minutes of training per arm.")
    parser.add_argument("--evals", type=int, default=3, help="Evaluation points per arm.")
    parser.add_argument("--train-cases", type=int, default=64)
    parser.add_argument("--eval-cases", type=int, default=32)
    parser.add_argument("--generations", type=int, default=8, help="Samples per prompt (GRPO, RFT).")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="Prompts per GRPO/RFT step.")
    parser.add_argument("--served-n", type=int, default=4, help="Served answers per prompt (KTO, DPO).")
    parser.add_argument("--max-new", type=int, default=48, help="Tokens per answer (the demo's).")
    parser.add_argument("--rft-bar", type=float, default=1.0, help="RFT's rft.min_reward.")
    parser.add_argument(
        "--rft-best-above-mean",
        type=float,
        default=None,
        help="RFT's rft.best_above_mean: also keep a prompt's best answer below the bar when it beats "
        "the prompt's mean and reaches this.",
    )
    parser.add_argument(
        "--reward",
        choices=sorted(REWARDS),
        default="verifier",
        help="What scores rollouts (GRPO, RFT, TRL GRPO): the demo's verifier, or one with partial "
        "credit for the format (benchmarks/no_teacher_rewards.py).",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="Rollout sampling temperature.")
    parser.add_argument(
        "--rollout-max-new",
        type=int,
        help="Tokens per sampled answer in rollouts (default --max-new): room for a preamble and the JSON.",
    )
    parser.add_argument("--judge-url", help="OpenAI-compatible base URL of the group judge (grpo-judge).")
    parser.add_argument("--judge-model", default="learnloop", help="Model name the judge requests.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every arm.")
    parser.add_argument("--json", type=Path, help="Also write every figure here.")
    args = parser.parse_args()
    for name in args.arms:
        split_arm(name)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="learnloop-bench-noteacher-"))
    if args.quick:
        from learnloop.models.tiny import build_tiny_model

        args.model_path = build_tiny_model(work / "tiny")
        args.budget, args.train_cases, args.eval_cases, args.max_new = min(args.budget, 0.5), 8, 8, 8
        args.generations, args.served_n, args.evals = 4, 2, 2
    else:
        from learnloop.models.prepared import resolve_base_model

        args.model_path = Path(resolve_base_model(args.model))
    if not args.judge_url and any(split_arm(a)[0] == "grpo-judge" for a in args.arms):
        print("grpo-judge: skipped (no --judge-url)")
        args.arms = [a for a in args.arms if split_arm(a)[0] != "grpo-judge"]
    print(f"load at start {load()}; {os.cpu_count()} CPUs; {args.threads} torch thread(s)")
    print(f"model {args.model_path}")
    train_cases, eval_cases = task_data(args.train_cases, args.eval_cases)
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "load_start": load()}

    hits, n = evaluate(args.model_path, None, eval_cases, args.max_new)
    report["base"] = {"exact": hits, "n": n}
    print(f"base model: {hits}/{n} exact", flush=True)
    served: list[list[str]] = []
    if {"kto", "dpo", "trl-kto"} & {split_arm(a)[0] for a in args.arms}:
        served, secs = served_answers(args.model_path, train_cases, args.served_n, args.max_new)
        flat = [exact(c, a) for c, answers in zip(train_cases, served, strict=True) for a in answers]
        report["served"] = {"answers": len(flat), "exact": sum(flat), "seconds": secs}
        print(f"served answers: {sum(flat)}/{len(flat)} exact, sampled in {secs:.0f}s", flush=True)

    results: dict[str, Any] = {}
    for arm in [a for a in args.arms if not a.startswith("trl-")]:
        print(f"--- {arm} (load {load()})", flush=True)
        rows = arm_rows(split_arm(arm)[0], train_cases, served)
        if not rows:
            results[arm] = {
                "arm": arm,
                "outcome": "no training data",
                "points": [],
                "metrics": [],
                "curve": [],
            }
            print(f"  {arm}: no training data", flush=True)
            continue
        results[arm] = run_learnloop(arm, args, rows, work)
        results[arm]["curve"] = curve(results[arm], args, eval_cases)
    for arm in [a for a in args.arms if a.startswith("trl-")]:
        # Beside the first learnloop arm of the same algorithm: its data, steps and learning rate.
        mine = [k for k in results if split_arm(k)[0] == arm.removeprefix("trl-")]
        ours = results[mine[0]] if mine else None
        if not ours or not ours["metrics"]:
            print(f"{arm}: skipped (run the {arm.removeprefix('trl-')} arm first)")
            continue
        ours["compared_with"] = arm
        print(f"--- {arm} (load {load()})", flush=True)
        steps = len(ours["metrics"])
        results[arm] = run_trl(
            arm, args, arm_rows(arm, train_cases, served), steps, ours["learning_rate"], work
        )
    report["arms"] = results
    report["load_end"] = load()
    print_tables(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)


def _rate(hits: int, n: int) -> str:
    lo, hi = wilson(hits, n)
    return f"{hits / n:.2f} [{lo:.2f}, {hi:.2f}]"


def print_tables(report: dict[str, Any], args: argparse.Namespace) -> None:
    base = report["base"]
    print(
        f"\n## Success (exact, greedy) on {base['n']} held-out cases, {args.budget:g} min of training per arm"
    )
    print(f"base model: {base['exact']}/{base['n']} = {_rate(base['exact'], base['n'])}")
    print("| arm | lr | steps | examples | exact at minutes (step) | final [95% CI] | outcome |")
    print("|---|---|---|---|---|---|---|")
    for arm, r in report["arms"].items():
        if arm.startswith("trl-"):
            continue
        points = r.get("curve") or []
        pts = ", ".join(f"{p['exact']}/{p['n']} @ {p['minutes']:.1f} ({p['step']})" for p in points) or "-"
        final = _rate(points[-1]["exact"], points[-1]["n"]) if points else "-"
        lr = r.get("learning_rate", "-")
        outcome = r["outcome"][:70]
        print(
            f"| {arm} | {lr} | {len(r['metrics'])} | {r.get('examples', '-')} | {pts} | {final} | {outcome} |"
        )
    for ours in report["arms"].values():
        if ours.get("compared_with"):
            _compare(ours, report["arms"][ours["compared_with"]], ours["compared_with"], args)
    print(f"\nload average: start {report['load_start']}, end {report['load_end']} (2 CPUs, shared)")


def _every(values: list[float], points: int = 10) -> list[float]:
    """At most ``points`` numbers: the values, or the means of equal slices of them."""
    if len(values) <= points:
        return [round(v, 3) for v in values]
    cuts = [round(i * len(values) / points) for i in range(points + 1)]
    return [round(sum(values[a:b]) / (b - a), 4) for a, b in zip(cuts, cuts[1:], strict=False)]


def _compare(ours: dict[str, Any], trl: dict[str, Any], arm: str, args: argparse.Namespace) -> None:
    steps = len(ours["metrics"])
    ours_s = ours["train_s"]
    print(f"\n## {arm.removeprefix('trl-').upper()}: learnloop vs TRL, {len(trl['steps'])} steps, same data")
    trl_per_step = trl["wall_s"] / max(1, len(trl["steps"]))
    print(f"seconds per step: learnloop {ours_s / steps:.2f}, TRL {trl_per_step:.2f}")
    if arm == "trl-grpo":
        per_step = args.prompts_per_step * args.generations
        logs = [x for x in trl["logs"] if "reward" in x]
        ours_gen = sum(m["completion_length"] for m in ours["metrics"]) * per_step
        trl_gen = sum(x.get("completions/mean_length", 0.0) for x in logs) * per_step
        print(f"generated tokens/s: learnloop {ours_gen / ours_s:.1f}, TRL {trl_gen / trl['wall_s']:.1f}")
        print(f"reward per step, learnloop: {_every([m['reward_mean'] for m in ours['metrics']])}")
        print(f"reward per step, TRL:       {_every([x['reward'] for x in logs])}")
    else:
        ours_tok = sum(m["tokens"] for m in ours["metrics"])
        trl_tok = max((x.get("num_tokens", 0) for x in trl["logs"]), default=0)
        print(f"tokens/s: learnloop {ours_tok / ours_s:.1f}, TRL {trl_tok / trl['wall_s']:.1f}")
        print("loss (the steps' values, or the means of ten equal slices of them):")
        print(f"  learnloop {_every([m['loss'] for m in ours['metrics']])}")
        print(f"  TRL       {_every([x['loss'] for x in trl['logs'] if 'loss' in x])}")


if __name__ == "__main__":
    main()
