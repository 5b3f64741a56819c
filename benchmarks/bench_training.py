"""LoRA training throughput on SmolLM2-135M-Instruct (CPU): learnloop against the strongest honest
peers a knowledgeable user would run, with each arm's model FLOPs utilisation beside it.

    .venv/bin/python benchmarks/bench_training.py                      # full: 3 rounds, fp32, SFT and DPO
    .venv/bin/python benchmarks/bench_training.py --quick              # smoke run, every arm, ~6 min
    .venv/bin/python benchmarks/bench_training.py --only sft --dtype bfloat16 --json sft-bf16.json

Arms (every one trains the same model, data, LoRA r=16/alpha=32/dropout 0 on all linear layers,
max_length, micro-batch, optimizer AdamW constant LR clip 1.0, and number of optimizer steps):

SFT
- learnloop             ``learnloop.training.run.train``, defaults (length-grouped batches, output layer
                        on label positions only)
- learnloop-ungrouped   the same with ``length_grouping=False`` (shuffled batches): the padding share
                        and the label-only output layer are measured apart
- trl-defaults          ``SFTTrainer`` with TRL's defaults, except fp32/no autocast in the fp32 run
                        and no gradient checkpointing (learnloop uses neither), no saving/reporting
- trl-grouped           + ``train_sampling_strategy="group_by_length"`` (transformers 5's name for
                        the old ``group_by_length=True``: LengthGroupedSampler)
- trl-padfree           + ``padding_free=True`` (rows concatenated into one sequence, no padding)
- plain-naive           hand-written loop: shuffled batches, the model's own full-logits loss
- plain-strong          hand-written loop: length-grouped batches (learnloop's order, so both train on
                        the same batches) and the output layer on label positions only (the strongest
                        hand-written loop)
DPO
- learnloop             defaults (reference = the same model with the adapter disabled)
- trl-defaults          ``DPOTrainer`` defaults (as above)
- trl-grouped           + length grouping (a ``length`` column = prompt + longer answer)
- trl-grouped-precompute + ``precompute_ref_log_probs=True``; the reference pass runs before
                        training and is timed end to end: its time is added in proportion to the
                        timed steps' share of the data

Measurement: each arm runs in its own process with the same torch thread count. The first
optimizer step is a warm-up and is not timed. Tokens are counted where the model consumes them
(in the loss call of each arm, not in a collator: accelerate's loader builds one batch ahead),
real tokens only; pad % = padded slots / computed slots. Arms run ``--rounds`` times in an order
rotated every round; tables show medians and [min-max] over rounds, ratios are medians of the
per-round ratios (both arms measured in the same round).

MFU = tokens/s x FLOPs per real token / peak. FLOPs per token are counted from the model's
shapes and the dataset, the same for every arm of an algorithm (the work the loss needs, not
what an arm happens to compute): forward 2 x (frozen linear params + LoRA params), the LoRA
backward 2 x frozen linear params (input gradients only, frozen weights get none) + 4 x LoRA
params, causal attention 4 x layers x hidden x context forward and twice that backward, and the
output layer 2 x hidden x vocab forward + the same backward at label positions only. DPO adds the
reference forward (frozen linear + attention + output layer at label positions). The peak is the
best of large ``torch.mm`` runs (2048^3) in the same dtype and thread count, measured at the start
and the end of the same run.
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
WORDS = (
    "the a to of and in is it you that for on with as are this be at have or from by not but what all were "
    "when we there can an your which their if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just "
    "where most know get through back much before go good new write our used me man too any day same right "
    "look think also around another came come work three word must because does part even place well such "
    "queue worker restart cache token model answer request latency retry shard index replica vector prompt"
).split()
SYSTEM = "You are a helpful assistant."
TEMPLATE_OVERHEAD = 20  # tokens the ChatML headers and the system message add to a conversation


# ----------------------------------------------------------------------------------------------------
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
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": _text(rng, user)},
                ],
                "completion": [{"role": "assistant", "content": _text(rng, max(3, total - user))}],
            }
        )
    return rows


def dpo_rows(n: int, seed: int, min_tokens: int, max_tokens: int) -> list[dict[str, Any]]:
    """Preference pairs: one prompt, two answers of different lengths; each side min..max tokens."""
    rng = random.Random(seed + 1)
    rows = []
    for _ in range(n):
        prompt_words = max(
            3, int((rng.randint(min_tokens, max_tokens) - TEMPLATE_OVERHEAD) * rng.uniform(0.2, 0.5))
        )
        answers = []
        for _side in range(2):
            total = rng.randint(min_tokens, max_tokens) - TEMPLATE_OVERHEAD
            answers.append(_text(rng, max(3, total - prompt_words)))
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": _text(rng, prompt_words)},
                ],
                "chosen": [{"role": "assistant", "content": answers[0]}],
                "rejected": [{"role": "assistant", "content": answers[1]}],
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------
# Measurement inside an arm's process


class Meter:
    """Timestamps (wall, CPU) and cumulative tokens at the end of each optimizer step.

    ``consumed`` is called where the model takes a micro-batch (in the loss call), so a data loader
    that builds batches ahead cannot make an arm look faster or slower.
    """

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int, int]] = []
        self.tokens = 0
        self.padded = 0  # token slots the forward passes computed, padding included
        self.losses: list[float] = []
        self.rss_at_start = 0
        self.extra_wall = 0.0  # work done before training that the timed steps depend on (DPO precompute)
        self.extra_cpu = 0.0
        self.extra_share = 0.0
        self._t0 = 0.0

    def consumed(self, real: int, slots: int) -> None:
        self.tokens += real
        self.padded += slots

    def step(self, loss: float | None = None) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), self.tokens, self.padded))
        if loss is not None:
            self.losses.append(float(loss))

    def mark_train_begin(self) -> None:
        self._t0 = time.perf_counter()
        self.rss_at_start = _rss_now()

    def result(self, steps: int) -> dict[str, Any]:
        if len(self.marks) != steps:
            raise RuntimeError(f"expected {steps} optimizer steps, saw {len(self.marks)}")
        (w1, c1, t1, p1), (wn, cn, tn, pn) = self.marks[0], self.marks[-1]
        timed = steps - 1
        wall = wn - w1 + self.extra_wall * self.extra_share
        cpu = cn - c1 + self.extra_cpu * self.extra_share
        return {
            "steps": steps,
            "timed_steps": timed,
            "tokens_total": tn,
            "tokens_timed": tn - t1,
            "pad_fraction": 1 - (tn - t1) / (pn - p1) if pn > p1 else float("nan"),
            "wall_timed_s": wall,
            "cpu_timed_s": cpu,
            "extra_s": self.extra_wall,
            "step_s": wall / timed,
            "first_step_s": w1 - self._t0,
            "tok_per_s": (tn - t1) / wall,
            "tok_per_cpu_s": (tn - t1) / cpu,
            "rss_start_mb": self.rss_at_start / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
        }


def _rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _torch_dtype(spec: dict[str, Any]) -> Any:
    import torch

    return getattr(torch, spec["dtype"])


def _lora_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "r": spec["lora_r"],
        "lora_alpha": spec["lora_alpha"],
        "lora_dropout": 0.0,
        "target_modules": "all-linear",
        "task_type": "CAUSAL_LM",
    }


def _count_batch(meter: Meter, batch: dict[str, Any]) -> None:
    mask = batch.get("attention_mask")
    if mask is None:  # padding-free: one concatenated row, every slot a real token
        n = int(batch["input_ids"].numel())
        meter.consumed(n, n)
    else:
        meter.consumed(int(mask.sum()), int(mask.numel()))


# ----------------------------------------------------------------------------------------------------
# Arms


def arm_learnloop(
    spec: dict[str, Any], algorithm: str, work: Path, *, grouped: bool = True
) -> dict[str, Any]:
    from learnloop.training.config import LoraConfig, TrainConfig
    from learnloop.training.dpo import DPOObjective
    from learnloop.training.run import train
    from learnloop.training.sft import SFTObjective

    data = work / f"{algorithm}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in spec["rows"]))
    steps = spec["steps"]
    config = TrainConfig(
        algorithm=algorithm,
        base_model=spec["model"],
        dataset=data,
        output_dir=work / "out",
        lora=LoraConfig(r=spec["lora_r"], alpha=spec["lora_alpha"], dropout=0.0, target_modules="all-linear"),
        max_length=spec["max_length"],
        batch_size=spec["batch_size"],
        grad_accum=spec["grad_accum"],
        max_steps=steps,
        learning_rate=spec["lr"],
        lr_scheduler="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        checkpoint_every=steps + 1000,
        seed=spec["seed"],
        device="cpu",
        dtype=spec["dtype"],
        length_grouping=grouped,
    )
    meter = Meter()
    # Count at the loss call: wrap the objective class's compute (what the loop calls per micro-batch).
    cls = SFTObjective if algorithm == "sft" else DPOObjective
    original = cls.compute

    def compute(self: Any, model: Any, batch: dict[str, Any]) -> Any:
        _count_batch(meter, batch)
        return original(self, model, batch)

    cls.compute = compute

    def progress(event: Any) -> None:
        if event.kind == "start":
            meter.mark_train_begin()
        elif event.kind == "step":
            meter.step(event.metrics.get("loss"))

    train(config, progress=progress)
    return meter.result(steps)


def arm_learnloop_ungrouped(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    return arm_learnloop(spec, algorithm, work, grouped=False)


def _trl_common(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    bf16 = spec["dtype"] == "bfloat16"
    return dict(
        output_dir=str(work / "out"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"],
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_length=spec["max_length"],
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec["seed"],
    )


def _trl_meter_callback(meter: Meter) -> Any:
    from transformers import TrainerCallback

    class Cb(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.mark_train_begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.step()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if logs and "loss" in logs:
                meter.losses.append(float(logs["loss"]))

    return Cb()


def _trl_count_at_loss(trainer: Any, meter: Meter) -> None:
    original = trainer.compute_loss

    def compute_loss(model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
        if model.training:
            _count_batch(meter, inputs)
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = compute_loss


def arm_trl(
    spec: dict[str, Any],
    algorithm: str,
    work: Path,
    *,
    grouped: bool = False,
    padding_free: bool = False,
    precompute: bool = False,
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=_torch_dtype(spec))
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = Dataset.from_list(spec["rows"])
    meter = Meter()
    extra = {"train_sampling_strategy": "group_by_length"} if grouped else {}
    if algorithm == "sft":
        from trl import SFTConfig, SFTTrainer

        common = _trl_common(spec, work)
        if padding_free:
            # TRL refuses padding_free with a max_length it would not enforce; no example here reaches it.
            common["max_length"] = None
        args = SFTConfig(**common, padding_free=padding_free, **extra)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(**_lora_kwargs(spec)),
            callbacks=[_trl_meter_callback(meter)],
        )
    else:
        from trl import DPOConfig, DPOTrainer

        if precompute:
            # The reference pass runs inside the constructor: time it
            # (wall and CPU) for the end-to-end figure.
            original = DPOTrainer._precompute_ref_logps

            def timed(self: Any, *a: Any, **kw: Any) -> Any:
                w, c = time.perf_counter(), time.process_time()
                out = original(self, *a, **kw)
                meter.extra_wall += time.perf_counter() - w
                meter.extra_cpu += time.process_time() - c
                return out

            DPOTrainer._precompute_ref_logps = timed
        args = DPOConfig(
            **_trl_common(spec, work), beta=spec["beta"], precompute_ref_log_probs=precompute, **extra
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(**_lora_kwargs(spec)),
            callbacks=[_trl_meter_callback(meter)],
        )
        if precompute and meter.extra_wall == 0:
            raise RuntimeError(
                "precompute_ref_log_probs did not run (a cached result would make the arm look faster)"
            )
        # The reference pass covers the whole dataset: count the timed steps' share of it.
        meter.extra_share = (spec["steps"] - 1) * spec["batch_size"] * spec["grad_accum"] / len(spec["rows"])
        if grouped:
            # DPO rows hold prompt_ids/chosen_ids/rejected_ids, no input_ids: give the sampler a length
            # column (what the collator will pad to) and keep it through the unused-column filter.
            ds = trainer.train_dataset
            trainer.train_dataset = ds.add_column(
                "length",
                [
                    len(p) + max(len(c), len(r))
                    for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
                ],
            )
            trainer._set_signature_columns_if_needed()
            trainer._signature_columns = [*trainer._signature_columns, "length"]
    _trl_count_at_loss(trainer, meter)
    torch.manual_seed(spec["seed"])
    trainer.train()
    return meter.result(spec["steps"])


def arm_trl_grouped(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    return arm_trl(spec, algorithm, work, grouped=True)


def arm_trl_padfree(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    return arm_trl(spec, algorithm, work, padding_free=True)


def arm_trl_grouped_precompute(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    return arm_trl(spec, algorithm, work, grouped=True, precompute=True)


def arm_plain(spec: dict[str, Any], algorithm: str, work: Path, *, strong: bool = False) -> dict[str, Any]:
    """A hand-written PyTorch + peft loop. Naive: shuffled batches padded to their longest row, the
    model's own full-logits loss with prompt tokens labelled -100. Strong: length-grouped batches and
    the output layer applied to the label positions only."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert algorithm == "sft"
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = []
    for row in spec["rows"]:
        prompt = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        full = tokenizer.apply_chat_template(
            row["prompt"] + row["completion"], tokenize=True, return_dict=False
        )
        labels = [IGNORE] * len(prompt) + full[len(prompt) :]
        examples.append((full[: spec["max_length"]], labels[: spec["max_length"]]))
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=_torch_dtype(spec))
    torch.manual_seed(spec["seed"])
    model = get_peft_model(model, LoraConfig(**_lora_kwargs(spec)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    if strong:
        # learnloop's own batch order (length-sorted windows, shuffled batches): both arms train on the
        # same batches, so their ratio isolates the training step. (transformers' recipe starts with
        # the longest megabatch: a 10-step window would see longer rows than a whole epoch does.)
        from learnloop.training.data import epoch_batches

        batches = epoch_batches(
            [len(ids) for ids, _ in examples], spec["batch_size"], seed=spec["seed"], epoch=0
        )
    else:
        order = list(range(len(examples)))
        random.Random(spec["seed"]).shuffle(order)
        batches = [order[i : i + spec["batch_size"]] for i in range(0, len(order), spec["batch_size"])]
    lm = model.get_base_model()
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
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
            meter.consumed(int(mask.sum()), int(mask.numel()))
            if strong:
                hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
                targets = labels[:, 1:]
                keep = targets != IGNORE
                loss = F.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep])
            else:
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            (loss / spec["grad_accum"]).backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step(loss_sum / spec["grad_accum"])
    return meter.result(spec["steps"])


def arm_plain_naive(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    return arm_plain(spec, algorithm, work)


def arm_plain_strong(spec: dict[str, Any], algorithm: str, work: Path) -> dict[str, Any]:
    return arm_plain(spec, algorithm, work, strong=True)


ARMS = {
    "learnloop": arm_learnloop,
    "learnloop-ungrouped": arm_learnloop_ungrouped,
    "trl-defaults": arm_trl,
    "trl-grouped": arm_trl_grouped,
    "trl-padfree": arm_trl_padfree,
    "trl-grouped-precompute": arm_trl_grouped_precompute,
    "plain-naive": arm_plain_naive,
    "plain-strong": arm_plain_strong,
}
PLANS = {
    "sft": [
        "learnloop",
        "learnloop-ungrouped",
        "trl-defaults",
        "trl-grouped",
        "trl-padfree",
        "plain-naive",
        "plain-strong",
    ],
    "dpo": ["learnloop", "trl-defaults", "trl-grouped", "trl-grouped-precompute"],
}
PROFILE = False  # --profile: each arm prints its torch.profiler table (by self CPU time)
TRL_ARMS = ("trl-defaults", "trl-grouped", "trl-padfree", "trl-grouped-precompute")


def child_main(arm: str, algorithm: str, spec_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{arm}-") as work:
        # No arm may reuse a cache another process wrote (TRL caches precomputed reference log-probs).
        os.environ["HF_DATASETS_CACHE"] = work
        if os.environ.get("BENCH_PROFILE"):
            # Where the arm's CPU time goes, by operator (loading included; it is a few ops).
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                result = ARMS[arm](spec, algorithm, Path(work))
            print(
                prof.key_averages().table(
                    sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40
                ),
                file=sys.stderr,
            )
        else:
            result = ARMS[arm](spec, algorithm, Path(work))
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def peak_main(dtype: str, threads: int, n: int = 2048, reps: int = 5) -> None:
    """Best GFLOP/s of an n x n x n matmul in this dtype on this many threads."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    torch.mm(a, b)  # warm-up
    best = best_cpu = float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    print(
        "BENCH_RESULT "
        + json.dumps({"gflops": 2 * n**3 / best / 1e9, "gflops_cpu": 2 * n**3 / best_cpu / 1e9}),
        flush=True,
    )


# ----------------------------------------------------------------------------------------------------
# FLOPs per token (the same for every arm of an algorithm)


def flops_per_token(
    model_path: str, rows: list[dict[str, Any]], algorithm: str, lora_r: int
) -> dict[str, float]:
    """Model FLOPs per real token of this dataset; see the module docstring for what is counted."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    head = model.get_output_embeddings()
    frozen = lora = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            frozen += module.in_features * module.out_features
            lora += lora_r * (module.in_features + module.out_features)
    hidden, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    attn_width = cfg.num_attention_heads * getattr(cfg, "head_dim", hidden // cfg.num_attention_heads)
    tok = AutoTokenizer.from_pretrained(model_path)
    tokens = labelled = context = 0
    for row in rows:
        prompt_len = len(
            tok.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for answer in [row["completion"]] if algorithm == "sft" else [row["chosen"], row["rejected"]]:
            n = len(tok.apply_chat_template(row["prompt"] + answer, tokenize=True, return_dict=False))
            tokens += n
            labelled += n - prompt_len
            context += n * (n + 1) // 2  # causal: position t attends to t + 1 positions
    ctx = context / tokens
    lab = labelled / tokens
    attn_fwd = 4 * layers * attn_width * ctx
    fwd = 2 * (frozen + lora) + attn_fwd + 2 * hidden * vocab * lab
    bwd = 2 * frozen + 4 * lora + 2 * attn_fwd + 2 * hidden * vocab * lab
    ref = 2 * frozen + attn_fwd + 2 * hidden * vocab * lab if algorithm == "dpo" else 0.0
    return {
        "per_token": fwd + bwd + ref,
        "frozen_params": frozen,
        "lora_params": lora,
        "mean_context": ctx,
        "labelled_share": lab,
        "tokens": tokens,
    }


# ----------------------------------------------------------------------------------------------------
# The driver


def _child_env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        **({"BENCH_PROFILE": "1"} if PROFILE else {}),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "OMP_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",
    }


def _run_child(argv: list[str], threads: int) -> tuple[dict[str, Any] | None, str, int]:
    proc = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, env=_child_env(threads), cwd=ROOT
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        return None, (proc.stdout + proc.stderr)[-3000:], proc.returncode
    return json.loads(lines[-1][len("BENCH_RESULT ") :]), proc.stderr, 0


def measure_peak(dtype: str, threads: int) -> dict[str, float]:
    """Peak matmul GFLOP/s per wall second and per CPU second of the process."""
    result, tail, rc = _run_child(["--peak", dtype, str(threads)], threads)
    if result is None:
        print(f"  peak matmul ({dtype}) FAILED (exit {rc}):\n{tail}", file=sys.stderr)
        return {"gflops": float("nan"), "gflops_cpu": float("nan")}
    return result


def run_arm(arm: str, algorithm: str, spec: dict[str, Any], spec_path: Path, verbose: bool) -> dict[str, Any]:
    started = time.perf_counter()
    result, tail, rc = _run_child(["--child", arm, algorithm, str(spec_path)], spec["threads"])
    wall = time.perf_counter() - started
    if result is None:
        print(f"  {algorithm}/{arm} FAILED (exit {rc}):\n{tail}", file=sys.stderr)
        return {"error": tail}
    if verbose:
        print(tail if PROFILE else tail[-2000:], file=sys.stderr)
    result["process_wall_s"] = wall
    print(
        f"  {algorithm}/{arm}: {result['tok_per_s']:.0f} tok/s, {result['tok_per_cpu_s']:.0f} tok/CPU-s, "
        f"{result['step_s']:.2f} s/step, pad {100 * result['pad_fraction']:.0f}%, "
        f"peak {result['peak_rss_mb']:.0f} MB ({wall:.0f} s)",
        flush=True,
    )
    return result


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def _ok(rounds: list[dict[str, dict[str, Any]]], arm: str) -> list[dict[str, Any]]:
    return [r[arm] for r in rounds if arm in r and "error" not in r[arm]]


def _spread(vals: list[float], spec: str) -> str:
    if not vals:
        return "-"
    med = format(statistics.median(vals), spec)
    return med if len(vals) == 1 else f"{med} [{format(min(vals), spec)}-{format(max(vals), spec)}]"


def ratio_values(
    rounds: list[dict[str, dict[str, Any]]], a: str, b: str, key: str = "tok_per_s"
) -> list[float]:
    """Per-round a/b of ``key``, both arms measured in the same round."""
    return [
        r[a][key] / r[b][key]
        for r in rounds
        if a in r and b in r and "error" not in r[a] and "error" not in r[b]
    ]


def print_table(
    algorithm: str,
    arms: list[str],
    rounds: list[dict[str, dict[str, Any]]],
    flops: float,
    peak: dict[str, float],
) -> None:
    cols = (
        "arm",
        "tok/s",
        "tok/CPU-s",
        "MFU %",
        "MFU/CPU %",
        "s/step",
        "pad %",
        "tokens timed",
        "peak RSS MB",
        "process s",
        "loss first→last",
    )
    print(
        f"\n{algorithm.upper()}: median [min-max] over {len(rounds)} round(s); "
        f"MFU at {flops / 1e6:.0f} MFLOP/token and a peak of {peak['gflops']:.0f} GFLOP/s, "
        f"{peak['gflops_cpu']:.0f} GFLOP/CPU-s"
    )
    rows = []
    for arm in arms:
        res = _ok(rounds, arm)
        if not res:
            rows.append((arm, "failed", *[""] * (len(cols) - 2)))
            continue
        loss = f"{_fmt(res[-1]['loss_first'], '.3f')}→{_fmt(res[-1]['loss_last'], '.3f')}"
        rows.append(
            (
                arm,
                _spread([x["tok_per_s"] for x in res], ".0f"),
                _spread([x["tok_per_cpu_s"] for x in res], ".0f"),
                _spread([100 * x["tok_per_s"] * flops / (peak["gflops"] * 1e9) for x in res], ".1f"),
                _spread([100 * x["tok_per_cpu_s"] * flops / (peak["gflops_cpu"] * 1e9) for x in res], ".1f"),
                _spread([x["step_s"] for x in res], ".2f"),
                _fmt(100 * statistics.median(x["pad_fraction"] for x in res)),
                _fmt(statistics.median(x["tokens_timed"] for x in res)),
                _fmt(statistics.median(x["peak_rss_mb"] for x in res)),
                _fmt(statistics.median(x["process_wall_s"] for x in res)),
                loss,
            )
        )
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def verdicts(
    algorithm: str, arms: list[str], rounds: list[dict[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """learnloop against the best TRL arm of each round (an expert picks the fastest configuration)
    and, for SFT, the strongest plain loop; per wall second and per CPU second."""
    out = []
    trl = [a for a in arms if a in TRL_ARMS and _ok(rounds, a)]
    for key, basis in (("tok_per_s", "wall"), ("tok_per_cpu_s", "CPU")):
        goals = []
        if trl and "learnloop" in arms:
            per_round = []
            for r in rounds:
                cands = [r[a][key] for a in trl if a in r and "error" not in r[a]]
                if cands and "learnloop" in r and "error" not in r["learnloop"]:
                    per_round.append(r["learnloop"][key] / max(cands))
            goals.append(("best TRL arm", per_round, 1.3))
        if algorithm == "sft" and "plain-strong" in arms and "learnloop" in arms:
            goals.append(("plain-strong", ratio_values(rounds, "learnloop", "plain-strong", key), 1.0))
        for name, vals, goal in goals:
            if not vals:
                continue
            med = statistics.median(vals)
            out.append(
                {
                    "algorithm": algorithm,
                    "against": name,
                    "basis": basis,
                    "median": med,
                    "min": min(vals),
                    "max": max(vals),
                    "goal": goal,
                    "met": med >= goal,
                }
            )
            print(
                f"  [{basis:4s}] learnloop / {name}: {_spread(vals, '.2f')}x (goal >= {goal}x): "
                f"{'MET' if med >= goal else 'MISSED'}"
            )
        for other in arms:
            if other != "learnloop" and "learnloop" in arms:
                vals = ratio_values(rounds, "learnloop", other, key)
                if vals:
                    print(f"  [{basis:4s}]   learnloop / {other}: {_spread(vals, '.2f')}x")
    return out


def report(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Print the tables and verdicts of a run (or of its --json file); returns the verdicts."""
    peaks = [
        p if isinstance(p, dict) else {"gflops": p, "gflops_cpu": float("nan")}
        for p in raw.get("peak_gflops") or []
    ]
    peak = {
        k: max((p[k] for p in peaks if p[k] == p[k]), default=float("nan")) for k in ("gflops", "gflops_cpu")
    }
    a = raw["args"]
    print(
        f"\npeak matmul {a['dtype']}, {a['threads']} thread(s): "
        + ", ".join(f"{p['gflops']:.0f} GFLOP/s ({p['gflops_cpu']:.0f} per CPU second)" for p in peaks)
        + " (start, end); MFU uses the higher of each",
        flush=True,
    )
    results = []
    for algorithm in ("sft", "dpo"):
        if algorithm not in raw:
            continue
        rounds = raw[algorithm]["rounds"]
        arms = [x for x in PLANS[algorithm] if any(x in r for r in rounds)]
        info = raw[algorithm]["flops"]
        print_table(algorithm, arms, rounds, info["per_token"], peak)
        print(
            f"  FLOPs/token {info['per_token'] / 1e6:.0f} M: frozen linear {info['frozen_params'] / 1e6:.1f} "
            f"M params, LoRA {info['lora_params'] / 1e6:.2f} M, mean causal context "
            f"{info['mean_context']:.0f}, labelled share {100 * info['labelled_share']:.0f}%"
        )
        results += verdicts(algorithm, arms, rounds)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("ARM", "ALGORITHM", "SPEC"), help=argparse.SUPPRESS)
    ap.add_argument("--peak", nargs=2, metavar=("DTYPE", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--model", default="smollm2", help="HF folder, .gguf file or prepared name (prepared if needed)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 3 steps per arm, short examples"
    )
    ap.add_argument("--only", choices=["sft", "dpo"], help="run one algorithm")
    ap.add_argument("--arms", nargs="*", help="run only these arms (names as in the tables)")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="bfloat16: weights in bf16 in every arm, TRL with bf16=True (autocast)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="run every arm this many times in rotated order")
    ap.add_argument(
        "--sft-steps", type=int, default=31, help="optimizer steps per SFT arm (the first is not timed)"
    )
    ap.add_argument(
        "--dpo-steps", type=int, default=31, help="optimizer steps per DPO arm (the first is not timed)"
    )
    # More rows than the steps consume, so that length grouping works as it does on a real dataset:
    # transformers' LengthGroupedSampler sorts megabatches of min(rows // (4 x batch), 50) batches,
    # learnloop windows of 50 batches. Each arm trains on the first steps x batch of its own order.
    ap.add_argument(
        "--sft-rows", type=int, default=400, help="SFT dataset rows (400: full 50-batch megabatches)"
    )
    ap.add_argument(
        "--dpo-rows",
        type=int,
        default=48,
        help="DPO dataset pairs (kept small: the precompute arm's reference pass covers them all)",
    )
    ap.add_argument("--batch-size", type=int, default=2, help="micro-batch (DPO: pairs per micro-batch)")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--min-tokens", type=int, default=30, help="shortest example (tokens, approximate)")
    ap.add_argument("--max-tokens", type=int, default=150, help="longest example (tokens, approximate)")
    # One thread by default: on a shared machine two OpenMP threads spin at every barrier while a
    # neighbour holds the other core, which made the same step take 1.2 s or 9 s (wall and CPU alike).
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads in every arm (raise on a dedicated machine)"
    )
    ap.add_argument("--json", dest="json_out", help="also write all raw results here")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run each arm under torch.profiler and print where its CPU time goes (slower; not for figures)",
    )
    ap.add_argument(
        "--report",
        metavar="JSON",
        nargs="+",
        help="print the tables of earlier --json files (their rounds pooled; same settings), run nothing",
    )
    ap.add_argument(
        "--rotation",
        type=int,
        default=0,
        help="start the order rotation here (a second process running more rounds at the same time)",
    )
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.profile:
        args.verbose = True
    if args.report:
        runs = [json.loads(Path(f).read_text()) for f in args.report]
        pooled = runs[0]
        for other in runs[1:]:
            pooled["peak_gflops"] = pooled.get("peak_gflops", []) + other.get("peak_gflops", [])
            for alg in ("sft", "dpo"):
                if alg in other:
                    pooled.setdefault(alg, {"rounds": [], "flops": other[alg]["flops"]})["rounds"] += other[
                        alg
                    ]["rounds"]
        report(pooled)
        return
    if args.child:
        child_main(*args.child)
        return
    if args.peak:
        peak_main(args.peak[0], int(args.peak[1]))
        return
    if args.quick:
        args.rounds, args.sft_steps, args.dpo_steps, args.max_tokens, args.max_length = 1, 3, 3, 100, 128
        args.sft_rows, args.dpo_rows = 100, 12

    from learnloop.errors import ConfigError
    from learnloop.models.prepared import KNOWN_MODELS, prepare_model, resolve_base_model

    started = time.perf_counter()
    try:
        model_path = resolve_base_model(args.model)  # a prepared name, an HF folder or a GGUF file
    except ConfigError:
        if args.model.lower() not in KNOWN_MODELS:
            raise
        model_path = prepare_model(args.model).path  # what `learnloop models prepare smollm2` does
    common = {
        "model": str(model_path),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": 2e-4,
        "lora_r": 16,
        "lora_alpha": 32,
        "beta": 0.1,
        "seed": 0,
        "threads": args.threads,
        "dtype": args.dtype,
    }
    per_step = args.batch_size * args.grad_accum
    plans = [
        (alg, arms, steps, rows)
        for alg, arms, steps, rows in (
            (
                "sft",
                PLANS["sft"],
                args.sft_steps,
                sft_rows(max(args.sft_rows, args.sft_steps * per_step), 0, args.min_tokens, args.max_tokens),
            ),
            (
                "dpo",
                PLANS["dpo"],
                args.dpo_steps,
                dpo_rows(max(args.dpo_rows, args.dpo_steps * per_step), 0, args.min_tokens, args.max_tokens),
            ),
        )
        if args.only in (None, alg)
    ]
    print(
        f"model {model_path}; {args.dtype} CPU, {args.threads} torch thread(s); "
        f"LoRA r=16 alpha=32 all-linear; micro-batch {args.batch_size} x accum {args.grad_accum}; "
        f"max_length {args.max_length}; examples ~{args.min_tokens}-{args.max_tokens} tokens; "
        f"SFT {args.sft_steps}, DPO {args.dpo_steps} optimizer steps per arm (first untimed); "
        f"{args.rounds} round(s), order rotated; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    peaks = [measure_peak(args.dtype, args.threads)]
    print(
        f"peak matmul {args.dtype}, {args.threads} thread(s): {peaks[0]['gflops']:.0f} GFLOP/s, "
        f"{peaks[0]['gflops_cpu']:.0f} GFLOP/CPU-s (start)",
        flush=True,
    )
    raw: dict[str, Any] = {"args": vars(args), "loadavg_start": os.getloadavg(), "peak_gflops": peaks}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for algorithm, arms, steps, rows in plans:
            arms = [a for a in arms if not args.arms or a in args.arms]
            if not arms:
                continue
            flops = flops_per_token(str(model_path), rows, algorithm, 16)
            spec_path = Path(tmp) / f"{algorithm}.json"
            spec_path.write_text(json.dumps({**common, "steps": steps, "rows": rows}))
            rounds: list[dict[str, Any]] = []
            raw[algorithm] = {"rounds": rounds, "flops": flops}
            for k in range(args.rounds):
                shift = (k + args.rotation) % len(arms)
                order = arms[shift:] + arms[:shift]  # rotate: no arm always runs first
                rounds.append({})
                for arm in order:
                    rounds[-1][arm] = run_arm(arm, algorithm, common, spec_path, args.verbose)
                    if (
                        args.json_out
                    ):  # after every arm: a run cut short keeps what it measured (--report reads it)
                        Path(args.json_out).write_text(json.dumps(raw, indent=2))
        peaks.append(measure_peak(args.dtype, args.threads))
        raw["verdicts"] = report(raw)
    raw["loadavg_end"] = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
