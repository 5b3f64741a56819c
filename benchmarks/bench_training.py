"""LoRA training throughput: learnloop vs TRL's SFTTrainer vs a plain PyTorch+peft loop (SFT), and
learnloop vs TRL's DPOTrainer (DPO step time), on SmolLM2-135M-Instruct, fp32, CPU.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--rounds 1] [--sft-steps 8] [--threads 1] [--dpo-steps 4]

Every arm trains the same model with the same seeded synthetic chat data (prompt/completion
conversations of 30-300 tokens; DPO: prompt + chosen/rejected), the same LoRA (r=16, alpha=32,
dropout 0, all linear layers), max_length, micro-batch, gradient accumulation, optimizer
(AdamW, constant LR, clip 1.0) and number of optimizer steps. The dataset holds exactly
steps x micro-batch x accumulation examples, so every arm sees each example once.

- learnloop: ``learnloop.training.run.train`` with its defaults (length-grouped batches, loss
  computed only at labelled positions).
- TRL: ``SFTTrainer`` / ``DPOTrainer`` with TRL's defaults except where they would change the
  experiment: fp32 instead of bf16 autocast and no gradient checkpointing (learnloop uses neither;
  TRL turns both on by default), no checkpoint saving, no reporting integrations.
- plain (SFT only): a naive loop, shuffled batches padded to their longest row, the model's own
  full-logits loss with prompt tokens labelled -100.

Each arm runs in its own subprocess, so imports, model memory and peak RSS are its own. The first
optimizer step is a warm-up (allocator, kernel selection) and is not timed; tokens/s counts real
(non-pad) tokens of the timed steps, per wall second and per CPU second of the process. The CPU
figure is steadier on a shared machine: a neighbour's load stretches wall time far more than the
CPU time our own work needs. With --rounds N the arms run N times in rotated order and the ratios
are medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IGNORE = -100
WORDS = ("the a to of and in is it you that for on with as are this be at have or from by not but what all were "
         "when we there can an your which their if do will each about how up out them then she many some so "
         "these would other into has more her two like him see time could no make than first been its who now "
         "people my made over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too any day same right "
         "look think also around another came come work three word must because does part even place well such "
         "queue worker restart cache token model answer request latency retry shard index replica vector prompt").split()
SYSTEM = "You are a helpful assistant."
TEMPLATE_OVERHEAD = 20  # tokens the ChatML headers and the system message add to a conversation


# ---------------------------------------------------------------------------------------------------------------
# Data


def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(1, n_words))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def sft_rows(n: int, seed: int, min_tokens: int, max_tokens: int) -> list[dict[str, Any]]:
    """Single-turn prompt/completion conversations of roughly min..max tokens (uniform), seeded."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = rng.randint(min_tokens, max_tokens) - TEMPLATE_OVERHEAD
        user = max(3, int(total * rng.uniform(0.2, 0.6)))
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _text(rng, user)}],
            "completion": [{"role": "assistant", "content": _text(rng, max(3, total - user))}],
        })
    return rows


def dpo_rows(n: int, seed: int, min_tokens: int, max_tokens: int) -> list[dict[str, Any]]:
    """Preference pairs: one prompt, two answers of different lengths; each side min..max tokens."""
    rng = random.Random(seed + 1)
    rows = []
    for _ in range(n):
        prompt_words = max(3, int((rng.randint(min_tokens, max_tokens) - TEMPLATE_OVERHEAD) * rng.uniform(0.2, 0.5)))
        answers = []
        for _side in range(2):
            total = rng.randint(min_tokens, max_tokens) - TEMPLATE_OVERHEAD
            answers.append(_text(rng, max(3, total - prompt_words)))
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _text(rng, prompt_words)}],
            "chosen": [{"role": "assistant", "content": answers[0]}],
            "rejected": [{"role": "assistant", "content": answers[1]}],
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Measurement inside an arm's process


class Meter:
    """Timestamps (wall, CPU) and cumulative real tokens at the end of each optimizer step."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int, int]] = []
        self.tokens = 0
        self.padded = 0  # token slots the forward passes computed, padding included
        self.losses: list[float] = []
        self.rss_at_start = 0
        self._t0 = 0.0

    def start(self) -> None:
        self.rss_at_start = _rss_now()

    def step(self, loss: float | None = None) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), self.tokens, self.padded))
        if loss is not None:
            self.losses.append(float(loss))

    def result(self, steps: int, batch_size: int) -> dict[str, Any]:
        if len(self.marks) != steps:
            raise RuntimeError(f"expected {steps} optimizer steps, saw {len(self.marks)}")
        (w1, c1, t1, p1), (wn, cn, tn, pn) = self.marks[0], self.marks[-1]
        timed = steps - 1
        return {
            "steps": steps,
            "timed_steps": timed,
            "tokens_total": tn,
            "tokens_timed": tn - t1,
            "pad_fraction": 1 - (tn - t1) / (pn - p1) if pn > p1 else float("nan"),
            "wall_timed_s": wn - w1,
            "cpu_timed_s": cn - c1,
            "step_s": (wn - w1) / timed if timed else float("nan"),
            "first_step_s": w1 - self._t0,
            "tok_per_s": (tn - t1) / (wn - w1) if timed else float("nan"),
            "tok_per_cpu_s": (tn - t1) / (cn - c1) if timed else float("nan"),
            "rss_start_mb": self.rss_at_start / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
        }

    def mark_train_begin(self) -> None:
        self._t0 = time.perf_counter()
        self.start()


def _rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _lora_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    return {"r": spec["lora_r"], "lora_alpha": spec["lora_alpha"], "lora_dropout": 0.0,
            "target_modules": "all-linear", "task_type": "CAUSAL_LM"}


def arm_learnloop(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    from learnloop.training.config import LoraConfig, TrainConfig
    from learnloop.training.run import train

    data = work / f"{algorithm}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in spec["rows"]))
    steps = spec["steps"]
    config = TrainConfig(
        algorithm=algorithm, base_model=spec["model"], dataset=data, output_dir=work / "out",
        lora=LoraConfig(r=spec["lora_r"], alpha=spec["lora_alpha"], dropout=0.0, target_modules="all-linear"),
        max_length=spec["max_length"], batch_size=spec["batch_size"], grad_accum=spec["grad_accum"], max_steps=steps,
        learning_rate=spec["lr"], lr_scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        checkpoint_every=steps + 1000, seed=spec["seed"], device="cpu", dtype="float32",
    )
    meter = Meter()
    # Only to count padded slots (the loop reports real tokens): wrap the collate function the
    # objectives imported. Adds one numel() per micro-batch.
    import learnloop.training.dpo as dpo_mod
    import learnloop.training.sft as sft_mod

    for mod in (sft_mod, dpo_mod):
        def counted(rows: Any, pad_id: int, _orig: Any = mod.collate_ids) -> dict[str, Any]:
            batch = _orig(rows, pad_id)
            meter.padded += batch["attention_mask"].numel()
            return batch

        mod.collate_ids = counted

    def progress(event: Any) -> None:
        if event.kind == "start":
            meter.mark_train_begin()
        elif event.kind == "step":
            meter.tokens += int(event.metrics["tokens"])  # attention-mask sum: real tokens only
            meter.step(event.metrics.get("loss"))

    train(config, progress=progress)
    return meter.result(steps, spec["batch_size"])


def _counting_collator(collator: Any, meter: Meter) -> Any:
    def collate(features: list[Any]) -> Any:
        batch = collator(features)
        meter.tokens += int(batch["attention_mask"].sum())
        meter.padded += batch["attention_mask"].numel()
        return batch

    return collate


def _trl_common(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    return dict(
        output_dir=str(work / "out"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        max_length=spec["max_length"], bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        seed=spec["seed"],
    )


def _trl_meter_callback(meter: Meter) -> Any:
    from transformers import TrainerCallback

    class Cb(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.mark_train_begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.step()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                meter.losses.append(float(logs["loss"]))

    return Cb()


def arm_trl(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = Dataset.from_list(spec["rows"])
    meter = Meter()
    if algorithm == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**_trl_common(spec, work))
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(**_lora_kwargs(spec)), callbacks=[_trl_meter_callback(meter)])
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**_trl_common(spec, work), beta=spec["beta"])
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(**_lora_kwargs(spec)), callbacks=[_trl_meter_callback(meter)])
    # The Trainer builds its DataLoader inside train() from this attribute: wrapping it counts the
    # real tokens of every micro-batch it actually consumes.
    trainer.data_collator = _counting_collator(trainer.data_collator, meter)
    trainer.train()
    return meter.result(spec["steps"], spec["batch_size"])


def arm_plain(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    """What one writes first: shuffled batches padded to their longest row, full logits, HF's loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert algorithm == "sft"
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = []
    for row in spec["rows"]:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False)
        labels = [IGNORE] * len(prompt) + full[len(prompt):]
        examples.append((full[: spec["max_length"]], labels[: spec["max_length"]]))
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    torch.manual_seed(spec["seed"])
    model = get_peft_model(model, LoraConfig(**_lora_kwargs(spec)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    order = list(range(len(examples)))
    random.Random(spec["seed"]).shuffle(order)
    batches = [order[i : i + spec["batch_size"]] for i in range(0, len(order), spec["batch_size"])]
    meter = Meter()
    model.train()
    meter.mark_train_begin()
    it = iter(batches)
    for _step in range(spec["steps"]):
        loss_sum = 0.0
        for _micro in range(spec["grad_accum"]):
            rows = [examples[i] for i in next(it)]
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (ids, lab) in enumerate(rows):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                labels[r, : len(lab)] = torch.tensor(lab)
                mask[r, : len(ids)] = 1
            meter.tokens += int(mask.sum())
            meter.padded += mask.numel()
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            (loss / spec["grad_accum"]).backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step(loss_sum / spec["grad_accum"])
    return meter.result(spec["steps"], spec["batch_size"])


ARMS = {"learnloop": arm_learnloop, "trl": arm_trl, "plain": arm_plain}


def child_main(arm: str, algorithm: str, spec_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{arm}-") as work:
        result = ARMS[arm](spec, algorithm, Path(work))
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The driver


def run_arm(arm: str, algorithm: str, spec: dict[str, Any], spec_path: Path, verbose: bool) -> dict[str, Any]:
    started = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run([sys.executable, __file__, "--child", arm, algorithm, str(spec_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        print(f"  {algorithm}/{arm} FAILED (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        return {"error": tail}
    if verbose:
        print(proc.stderr[-2000:], file=sys.stderr)
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result["process_wall_s"] = wall
    print(f"  {algorithm}/{arm}: {result['tok_per_s']:.0f} tok/s, {result['tok_per_cpu_s']:.0f} tok/CPU-s, "
          f"{result['step_s']:.2f} s/step, peak {result['peak_rss_mb']:.0f} MB ({wall:.0f} s)", flush=True)
    return result


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def _median_ratio(rounds: list[dict[str, dict[str, Any]]], a: str, b: str, key: str, invert: bool = False) -> str:
    vals = []
    for r in rounds:
        if "error" in r.get(a, {"error": 1}) or "error" in r.get(b, {"error": 1}):
            continue
        x, y = r[a][key], r[b][key]
        vals.append(y / x if invert else x / y)
    if not vals:
        return "-"
    med = statistics.median(vals)
    rng = f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else ""
    return f"{med:.2f}x{rng}"


def print_table(algorithm: str, arms: list[str], rounds: list[dict[str, dict[str, Any]]]) -> None:
    cols = ("arm", "tok/s", "tok/CPU-s", "s/step", "1st step s", "tokens timed", "pad %", "RSS start MB", "peak RSS MB",
            "process s", "loss first→last")
    print(f"\n{algorithm.upper()} (medians over {len(rounds)} round(s))")
    rows = []
    for arm in arms:
        res = [r[arm] for r in rounds if arm in r and "error" not in r[arm]]
        if not res:
            rows.append((arm, "failed", *[""] * (len(cols) - 2)))
            continue

        def med(key: str, res: list[dict] = res) -> float:
            return statistics.median(x[key] for x in res)

        loss = f"{_fmt(res[-1]['loss_first'], '.3f')}→{_fmt(res[-1]['loss_last'], '.3f')}"
        rows.append((arm, _fmt(med("tok_per_s")), _fmt(med("tok_per_cpu_s")), _fmt(med("step_s"), ".2f"),
                     _fmt(med("first_step_s"), ".2f"), _fmt(med("tokens_timed")), _fmt(100 * med("pad_fraction"), ".0f"),
                     _fmt(med("rss_start_mb")),
                     _fmt(med("peak_rss_mb")), _fmt(med("process_wall_s")), loss))
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("ARM", "ALGORITHM", "SPEC"), help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2", help="HF folder, .gguf file or prepared name (prepared if needed)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 steps per arm, short examples")
    ap.add_argument("--rounds", type=int, default=1, help="run every arm this many times in rotated order")
    ap.add_argument("--sft-steps", type=int, default=8, help="optimizer steps per SFT arm (the first is not timed)")
    ap.add_argument("--dpo-steps", type=int, default=4, help="optimizer steps per DPO arm (the first is not timed)")
    ap.add_argument("--batch-size", type=int, default=2, help="micro-batch (DPO: pairs per micro-batch)")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--min-tokens", type=int, default=30, help="shortest example (tokens, approximate)")
    ap.add_argument("--max-tokens", type=int, default=300, help="longest example (tokens, approximate)")
    # One thread by default: on a shared machine two OpenMP threads spin at every barrier while a
    # neighbour holds the other core, which made the same step take 1.2 s or 9 s (wall and CPU alike).
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every arm (raise on a dedicated machine)")
    ap.add_argument("--skip", nargs="*", default=[], help="arms to leave out, e.g. plain or dpo/trl")
    ap.add_argument("--json", dest="json_out", help="also write all raw results here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.child:
        child_main(*args.child)
        return
    if args.quick:
        args.sft_steps, args.dpo_steps, args.max_tokens, args.max_length = 2, 2, 120, 128

    from learnloop.models.prepared import KNOWN_MODELS, prepare_model, resolve_base_model

    started = time.perf_counter()
    if args.model.lower() in KNOWN_MODELS:
        model_path = prepare_model(args.model).path  # a no-op once `learnloop models prepare` has run
    else:
        model_path = resolve_base_model(args.model)
    common = {"model": str(model_path), "max_length": args.max_length, "batch_size": args.batch_size,
              "grad_accum": args.grad_accum, "lr": 2e-4, "lora_r": 16, "lora_alpha": 32, "beta": 0.1, "seed": 0,
              "threads": args.threads}
    per_step = args.batch_size * args.grad_accum
    plans = [
        ("sft", ["learnloop", "trl", "plain"], args.sft_steps,
         sft_rows(args.sft_steps * per_step, 0, args.min_tokens, args.max_tokens)),
        ("dpo", ["learnloop", "trl"], args.dpo_steps,
         dpo_rows(args.dpo_steps * per_step, 0, args.min_tokens, args.max_tokens)),
    ]
    print(f"model {model_path}; fp32 CPU, {args.threads} threads; LoRA r=16 alpha=32 all-linear; micro-batch "
          f"{args.batch_size} x accum {args.grad_accum}; max_length {args.max_length}; examples ~{args.min_tokens}-"
          f"{args.max_tokens} tokens; SFT {args.sft_steps} steps, DPO {args.dpo_steps} steps (first untimed); "
          f"{args.rounds} round(s)", flush=True)
    raw: dict[str, list[dict[str, dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for algorithm, arms, steps, rows in plans:
            arms = [a for a in arms if a not in args.skip and f"{algorithm}/{a}" not in args.skip and algorithm not in args.skip]
            if not arms:
                continue
            spec_path = Path(tmp) / f"{algorithm}.json"
            spec_path.write_text(json.dumps({**common, "steps": steps, "rows": rows}))
            rounds = []
            for k in range(args.rounds):
                order = arms[k % len(arms):] + arms[: k % len(arms)]  # rotate: no arm always runs first
                rounds.append({arm: run_arm(arm, algorithm, common, spec_path, args.verbose) for arm in order})
            raw[algorithm] = rounds
            print_table(algorithm, arms, rounds)
            if algorithm == "sft":
                for other, goal in (("trl", 1.3), ("plain", 1.0)):
                    if other in arms and "learnloop" in arms:
                        print(f"  learnloop / {other}: tok/s {_median_ratio(rounds, 'learnloop', other, 'tok_per_s')}, "
                              f"tok/CPU-s {_median_ratio(rounds, 'learnloop', other, 'tok_per_cpu_s')}  (goal >= {goal}x)")
            elif "learnloop" in arms and "trl" in arms:
                print(f"  TRL step time / learnloop step time: {_median_ratio(rounds, 'learnloop', 'trl', 'step_s', invert=True)}; "
                      f"learnloop / trl tok/CPU-s {_median_ratio(rounds, 'learnloop', 'trl', 'tok_per_cpu_s')}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
