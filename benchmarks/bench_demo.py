"""The full demo as a benchmark: `python benchmarks/bench_demo.py [--quick]`.

Runs `learnloop demo --json` (SmolLM2-135M-Instruct on this machine's CPU) and prints its figures
against the targets: base success <= 0.3, promoted success >= 0.9 on fresh cases, the whole demo
within 15 minutes once the model is prepared (preparation reported separately).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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
        help="Minutes the demo may run before it gives up (default 40: a slow run still reports its "
        "figures; the 15-minute target is checked separately).",
    )
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="learnloop-bench-demo-"))
    started = time.monotonic()
    cmd = [sys.executable, "-m", "learnloop", "demo", "--json", "--budget", str(args.budget)]
    cmd += ["--data-dir", str(data_dir)] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"demo failed:\n{out.stderr[-4000:]}")
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
            ">= 0.90",
            after["rate"] >= 0.9,
        ),
        (
            "demo time, model prepared",
            f"{report['demo_s'] / 60:.1f} min",
            "<= 15 min",
            report["demo_s"] <= 900,
        ),
        ("model preparation", f"{report['prepare_s']:.0f} s", "(reported apart)", True),
        ("wall time of this command", f"{wall / 60:.1f} min", "", True),
    ]
    print(f"{'figure':34} {'measured':40} {'target':14} met")
    for name, value, target, met in rows:
        print(f"{name:34} {value:40} {target:14} {'yes' if met else 'NO'}")
    print(f"report: {data_dir / 'demo-report.json'}; plot: {report['plot']}")


if __name__ == "__main__":
    main()
