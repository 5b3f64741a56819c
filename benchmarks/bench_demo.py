"""The full demo as a benchmark: `python benchmarks/bench_demo.py [--quick] [--no-teacher]`.

With ``--no-teacher`` it runs `learnloop demo --no-teacher --json` (no teacher, no backfill: the
app's traffic on the base model, its verifier as the only reward, an RFT loop) against that
variant's targets: base success <= 0.3, promoted success >= 0.8 within 30 minutes; it also prints
the loop's cycles (examples, steps, seconds, gate).

Runs `learnloop demo --json` (SmolLM2-135M-Instruct on this machine's CPU) and prints its figures
against the targets: base success <= 0.3, promoted success >= 0.9 on fresh cases, the whole demo
within 15 minutes once the model is prepared (preparation reported separately).

Then the cycle that promoted, from the demo's own database: the time from the trigger (the job
queued) to the promotion (the alias moved), and its parts, each from the row its stage writes:
waiting for the worker (job started), dataset (dataset row), training (version registered; the
subprocess's start-up and its steps apart, from the first and last training metric), evaluation
(evaluation row), promotion (alias event), and then until the app's first answer by the new version.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASELINE_CYCLE_S = 3.5 * 60  # trigger to promotion on this machine before the serving work (issue 23)


def _mark(report: dict[str, Any], prefix: str) -> float | None:
    return next((m["t_s"] for m in report.get("timeline", []) if m["what"].startswith(prefix)), None)


def cycle_parts(data_dir: Path, promoted: str, report: dict[str, Any]) -> dict[str, float]:
    """Seconds of each stage of the cycle that made ``promoted``, read from the demo's database."""
    import datetime as dt

    from sqlalchemy import select

    from learnloop.store.db import Database
    from learnloop.store.models import AliasEvent, Dataset, Evaluation, Job, ModelVersion, TrainingMetric

    db = Database(f"sqlite:///{data_dir / 'learnloop.db'}")
    with db.read_session() as s:
        version = s.get(ModelVersion, promoted)
        job = s.get(Job, version.job_id)
        dataset = s.get(Dataset, job.result["dataset_id"])
        evaluation = s.scalars(
            select(Evaluation).where(Evaluation.candidate_id == promoted).order_by(Evaluation.id)
        ).first()
        moved = s.scalars(
            select(AliasEvent).where(AliasEvent.to_version == promoted).order_by(AliasEvent.id)
        ).first()
        steps = s.scalars(
            select(TrainingMetric.created_at)
            .where(TrainingMetric.job_id == job.id)
            .order_by(TrainingMetric.id)
        ).all()
    db.engine.dispose()

    def sec(a: dt.datetime, b: dt.datetime) -> float:
        return round((b - a).total_seconds(), 1)

    parts = {
        "trigger to promotion": sec(job.created_at, moved.created_at),
        "waiting for the worker": sec(job.created_at, job.started_at),
        "dataset": sec(job.started_at, dataset.created_at),
        "training": sec(dataset.created_at, version.created_at),
        "  training start-up (subprocess, model load)": sec(dataset.created_at, steps[0]) if steps else None,
        "  training steps": sec(steps[0], steps[-1]) if steps else None,
        "  after the last step (save, register)": sec(steps[-1], version.created_at) if steps else None,
        "evaluation": sec(version.created_at, evaluation.created_at),
        "promotion (gate, alias move)": sec(evaluation.created_at, moved.created_at),
    }
    # the app's first answer by the new version, on the demo's own clock (its report's timeline)
    moved_at = _mark(report, "alias `learnloop` now points at")
    first_at = _mark(report, "first answer served by")
    if moved_at is not None and first_at is not None:
        parts["alias moved to the app's first answer by it (demo clock)"] = round(first_at - moved_at, 1)
    return {k: v for k, v in parts.items() if v is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="The tiny-model flow (checks the plumbing, not the targets)."
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="Demo data dir (default: a temporary one)."
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=40,
        help="The demo's time budget in minutes (default 40). The demo reports it met or missed and "
        "gives up only at ten budgets; the 15-minute target is checked separately below.",
    )
    parser.add_argument(
        "--no-teacher",
        action="store_true",
        help="The demo without a teacher (targets: base <= 0.30, promoted >= 0.80 within 30 minutes).",
    )
    args = parser.parse_args()
    target_after, target_min = (0.8, 30) if args.no_teacher else (0.9, 15)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="learnloop-bench-demo-"))
    started = time.monotonic()
    cmd = [sys.executable, "-m", "learnloop", "demo", "--json", "--budget", str(args.budget)]
    cmd += ["--data-dir", str(data_dir)] + (["--quick"] if args.quick else [])
    cmd += ["--no-teacher"] if args.no_teacher else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        report_file = data_dir / "demo-report.json"
        sys.exit(
            f"demo failed:\n{out.stderr[-4000:]}"
            + (f"\nits report: {report_file}" if report_file.exists() else "")
        )
    report = json.loads(out.stdout)
    wall = time.monotonic() - started
    before, after = report["before"], report["after"]
    rows = [
        (
            "base model success",
            f"{before['rate']:.2f} [{before['ci95'][0]:.2f}, {before['ci95'][1]:.2f}] n={before['n']}",
            "<= 0.30",
            before["rate"] <= 0.3,
        ),
        (
            f"promoted ({report['promoted']}) success",
            f"{after['rate']:.2f} [{after['ci95'][0]:.2f}, {after['ci95'][1]:.2f}] n={after['n']}",
            f">= {target_after:.2f}",
            after["rate"] >= target_after,
        ),
        (
            "demo time, model prepared",
            f"{report['demo_s'] / 60:.1f} min",
            f"<= {target_min} min",
            report["demo_s"] <= target_min * 60,
        ),
        ("model preparation", f"{report['prepare_s']:.0f} s", "(reported apart)", True),
        ("wall time of this command", f"{wall / 60:.1f} min", "", True),
    ]
    print(f"{'figure':34} {'measured':40} {'target':14} met")
    for name, value, target, met in rows:
        print(f"{name:34} {value:40} {target:14} {'yes' if met else 'NO'}")
    print(
        f"\nalgorithm: {report.get('algorithm')}; teacher: {'yes' if report.get('teacher', True) else 'none'}"
    )
    for c in report.get("cycles") or []:
        print(
            f"  cycle {c.get('cycle')} (job {c.get('job_id')}): {c.get('state')}, "
            f"{c.get('examples')} examples, {c.get('steps')} steps, {c.get('seconds')} s, "
            f"gate {c.get('gate') or '-'}" + (", promoted" if c.get("promoted") else "")
        )
    if report.get("promoted"):
        parts = cycle_parts(data_dir, report["promoted"], report)
        report["cycle_parts_s"] = parts
        print(f"\nthe cycle that promoted {report['promoted']}:")
        for name, seconds in parts.items():
            print(f"  {name:58} {seconds:7.1f} s")
        if args.no_teacher:
            (data_dir / "demo-report.json").write_text(json.dumps(report, indent=2, default=str))
            print(f"report: {data_dir / 'demo-report.json'}; plot: {report['plot']}")
            return
        speedup = BASELINE_CYCLE_S / parts["trigger to promotion"]
        verdict = "met" if speedup >= 1.5 else "NOT met"
        if args.quick:
            verdict += "; the quick profile's model is not the one the target is for"
        print(
            f"  trigger to promotion: {parts['trigger to promotion'] / 60:.1f} min, x{speedup:.2f} shorter "
            f"than the {BASELINE_CYCLE_S / 60:.1f} min before (target >= 1.5x: {verdict})"
        )
        (data_dir / "demo-report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {data_dir / 'demo-report.json'}; plot: {report['plot']}")


if __name__ == "__main__":
    main()
