"""`learnloop demo`: the whole loop, unattended, on a fresh data dir, through public interfaces only.

It starts ``learnloop serve`` (server + daemon) as a subprocess, drops a backfill of earlier
teacher answers in the inbox, and runs the simulated app against the ``learnloop`` alias while
the daemon triggers training, evaluates the candidate on held-out cases, promotes it through the
gate and the server hot-swaps it in. Then it measures the app's success rate on fresh cases
again, and writes a report and a plot under the data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from learnloop.demo.app import DemoApp
from learnloop.demo.profiles import Profile
from learnloop.demo.task import SCENARIO, cases
from learnloop.errors import LearnloopError


class DemoFailed(LearnloopError):
    """The demo could not complete a stage; the message says which and where its log is."""


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    marks: list[tuple[float, str]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def mark(self, what: str, *, once: str | None = None) -> None:
        key = once or what
        if key in self.seen:
            return
        self.seen.add(key)
        self.marks.append((time.time(), what))

    def rows(self) -> list[tuple[str, str]]:
        return [(f"{t - self.started:7.1f} s", what) for t, what in self.marks]


@dataclass
class StatusSample:
    at: float
    loss: float | None
    step: int | None
    state: dict[str, Any]


class DemoRun:
    def __init__(self, profile: Profile, data_dir: Path, *, port: int, console: Any) -> None:
        self.profile = profile
        self.data_dir = data_dir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.console = console
        self.timeline = Timeline()
        self.samples: list[StatusSample] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.base_url, timeout=30)
        self.prepare_seconds = 0.0

    # -- set-up ---------------------------------------------------------------------------------

    def fresh_data_dir(self) -> None:
        """Everything but prepared models goes: the demo always starts from an empty database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for child in self.data_dir.iterdir():
            if child.name == "models":
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
        if self.config_path.exists():  # not yet while the model is prepared
            env["LEARNLOOP_CONFIG"] = str(self.config_path)
        env["LEARNLOOP_DATA_DIR"] = str(self.data_dir)
        return env

    @property
    def config_path(self) -> Path:
        return self.data_dir / "learnloop.toml"

    def cli(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "learnloop", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise DemoFailed(
                f"`learnloop {' '.join(args)}` failed: {(out.stderr or out.stdout).strip()[-2000:]}"
            )
        return out

    def prepare_model(self) -> str:
        started = time.monotonic()
        base = self.profile.prepare(self)
        self.prepare_seconds = time.monotonic() - started
        return base

    def write_config(self, base_model: str) -> None:
        self.config_path.write_text(
            self.profile.config_toml(base_model=base_model, data_dir=self.data_dir, port=self.port)
        )

    def backfill_inbox(self) -> int:
        """Earlier teacher answers as a JSONL file, dropped the safe way (write .tmp, then rename)."""
        inbox = self.data_dir / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, case in enumerate(cases(self.profile.seed + 1, self.profile.backfill)):
            rows.append(
                json.dumps(
                    {
                        "id": f"backfill-{i:05d}",
                        "scenario": SCENARIO,
                        "source": "teacher",
                        "messages": case.messages + [{"role": "assistant", "content": case.teacher_answer()}],
                        "metadata": {"confidence": 1.0, "origin": "backfill"},
                    }
                )
            )
        tmp = inbox / "teacher-backfill.jsonl.tmp"
        tmp.write_text("\n".join(rows) + "\n")
        tmp.rename(inbox / "teacher-backfill.jsonl")
        return len(rows)

    def start_server(self) -> None:
        log = (self.data_dir / "serve.log").open("wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "learnloop", "serve", "--port", str(self.port)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise DemoFailed(
                    f"the server exited with code {self.server.returncode}; see {self.data_dir / 'serve.log'}"
                )
            try:
                models = self.http.get("/v1/models")
                if models.status_code == 200 and any(m["id"] == "learnloop" for m in models.json()["data"]):
                    self.timeline.mark("server up, serving the base model as `learnloop`")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise DemoFailed(f"the server did not come up within 600 s; see {self.data_dir / 'serve.log'}")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    # -- watching ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        try:
            resp = self.http.get("/v1/status")
            return resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def sample(self) -> StatusSample:
        st = self.status()
        job = st.get("running_job") or {}
        s = StatusSample(time.time(), job.get("loss"), job.get("step"), st)
        self.samples.append(s)
        self._note_transitions(st)
        return s

    def _note_transitions(self, st: dict[str, Any]) -> None:
        loop = next(iter(st.get("loops") or []), {})
        if loop.get("state") not in (None, "idle"):
            self.timeline.mark(
                f"loop `{loop.get('name')}`: {loop.get('state')}", once=f"loop:{loop.get('state')}"
            )
        job = st.get("running_job") or {}
        if job.get("state") == "running" and job.get("step"):
            self.timeline.mark(f"training job {job.get('id')} running", once=f"job:{job.get('id')}")
        ev = st.get("last_evaluation") or {}
        if ev.get("verdict"):
            self.timeline.mark(
                f"evaluation of {ev.get('candidate_id')}: gate says {ev.get('verdict')}",
                once=f"eval:{ev.get('id')}",
            )
        serving = self.serving_version(st)
        if serving:
            self.timeline.mark(f"alias `learnloop` now points at {serving}", once=f"alias:{serving}")

    @staticmethod
    def serving_version(st: dict[str, Any]) -> str | None:
        for alias in st.get("serving") or []:
            if alias.get("alias") == "learnloop":
                return alias.get("version_id")
        return None

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from rich.live import Live

        import learnloop

        self.fresh_data_dir()
        base = self.prepare_model()
        self.timeline = Timeline()  # the demo's clock starts once the model is ready
        self.write_config(base)
        backfilled = self.backfill_inbox()
        self.timeline.mark(f"{backfilled} earlier teacher answers dropped in the inbox")
        self.start_server()
        # The app reads the same learnloop.toml (its sampling rules) and spools under the demo's data dir.
        os.environ.update(LEARNLOOP_CONFIG=str(self.config_path), LEARNLOOP_DATA_DIR=str(self.data_dir))
        learnloop.configure(server_url=self.base_url)
        app = DemoApp(
            self.base_url,
            token=None,
            concurrency=self.profile.batch,
            max_tokens=self.profile.max_tokens,
            seed=self.profile.seed,
        )
        fresh = iter(cases(self.profile.seed + 2, 100_000))
        promoted: str | None = None
        deadline = self.timeline.started + self.profile.budget_s
        try:
            with Live(
                self.view(app, "measuring the base model"),
                console=self.console,
                refresh_per_second=2,
                transient=False,
            ) as live:
                for _ in range(self.profile.before_rounds):
                    app.round([next(fresh) for _ in range(self.profile.batch)], phase="before")
                    self.sample()
                    live.update(self.view(app, "measuring the base model"))
                self.timeline.mark("base model measured; the app keeps running while the loop learns")
                while promoted is None:
                    if time.time() > deadline:
                        raise DemoFailed(
                            f"no version was promoted within the {self.profile.budget_s:.0f} s budget; "
                            f"see {self.data_dir / 'serve.log'} and `learnloop loops status`"
                        )
                    answers = app.round([next(fresh) for _ in range(self.profile.batch)], phase="learning")
                    serving = self.serving_version(self.sample().state)
                    if serving and any(a.version == serving for a in answers):
                        promoted = serving
                        self.timeline.mark(f"first answer served by {promoted}")
                    live.update(self.view(app, "the app runs; the daemon learns"))
                    if promoted is None:
                        time.sleep(self.profile_pause())
                self.timeline.mark(f"measuring {self.profile.after_cases} fresh cases on {promoted}")
                after_cases = [next(fresh) for _ in range(self.profile.after_cases)]
                for i in range(0, len(after_cases), self.profile.batch):
                    app.round(after_cases[i : i + self.profile.batch], phase="after", teacher=False)
                    self.sample()
                    live.update(self.view(app, f"measuring {promoted} on fresh cases"))
                self.timeline.mark("done")
            learnloop.flush(timeout=30)
        finally:
            self.stop_server()
        return self.report(app, promoted)

    def profile_pause(self) -> float:
        # While the daemon trains on the same two cores, a slower trickle of traffic leaves it the CPU.
        st = self.samples[-1].state if self.samples else {}
        return 5.0 if st.get("running_job") else 0.5

    # -- what the person sees -------------------------------------------------------------------

    def view(self, app: DemoApp, phase: str) -> Any:
        from rich.table import Table

        st = self.samples[-1].state if self.samples else {}
        table = Table(
            title=f"learnloop demo ({self.profile.name}) - {phase}", show_header=False, min_width=72
        )
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        elapsed = time.time() - self.timeline.started
        table.add_row("elapsed", f"{elapsed:.0f} s of a {self.profile.budget_s:.0f} s budget")
        table.add_row("dashboard", f"{self.base_url}/")
        for label, phase_name in (
            ("success, base model", "before"),
            ("success, while learning", "learning"),
            ("success, promoted model", "after"),
        ):
            ok, n = app.success_rate(lambda a, p=phase_name: a.phase == p)
            if n:
                table.add_row(label, f"{ok}/{n} = {ok / n:.0%}")
        table.add_row("requests served", str(len(app.answers)))
        counts = (st.get("trajectories") or {}).get("total_by_source") or {}
        table.add_row("traces captured", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-")
        table.add_row(
            "teacher answers offered", f"{app.teacher_recorded} (the SDK keeps 15% + the confident ones)"
        )
        loop = next(iter(st.get("loops") or []), None)
        if loop:
            nxt = loop.get("next_check_in_s")
            reasons = "; ".join(loop.get("readiness_reasons") or [])
            table.add_row(
                "loop `orders`", f"{loop.get('state')}, next check in {nxt if nxt is not None else '-'} s"
            )
            if reasons:
                table.add_row("trigger", reasons[:120])
        job = st.get("running_job")
        if job:
            loss = job.get("loss")
            table.add_row(
                "training",
                f"job {job.get('id')} {job.get('state')}: step {job.get('step') or 0}/"
                f"{job.get('total_steps') or '?'}, loss {loss:.4f}"
                if loss is not None
                else f"job {job.get('id')} {job.get('state')}",
            )
        ev = st.get("last_evaluation")
        if ev:
            table.add_row(
                "gate", f"{ev.get('candidate_id')} vs {ev.get('baseline_id') or 'base'}: {ev.get('verdict')}"
            )
        table.add_row("serving `learnloop`", self.serving_version(st) or "base")
        return table

    def report(self, app: DemoApp, promoted: str | None) -> dict[str, Any]:
        from scipy.stats import binomtest

        def rate(phase: str) -> dict[str, Any]:
            ok, n = app.success_rate(lambda a: a.phase == phase)
            if not n:
                return {"n": 0}
            ci = binomtest(ok, n).proportion_ci(method="wilson")
            return {"successes": ok, "n": n, "rate": ok / n, "ci95": [ci.low, ci.high]}

        lineage: Any = None
        if promoted:
            try:
                lineage = json.loads(self.cli("versions", "show", promoted, "--json").stdout)
            except (DemoFailed, ValueError) as exc:
                lineage = {"error": str(exc)}
        plot = self.plot(app, promoted)
        report = {
            "profile": self.profile.name,
            "prepare_s": round(self.prepare_seconds, 1),
            "demo_s": round(
                (self.timeline.marks[-1][0] if self.timeline.marks else time.time()) - self.timeline.started,
                1,
            ),
            "before": rate("before"),
            "after": rate("after"),
            "promoted": promoted,
            "requests": len(app.answers),
            "timeline": [
                {"t_s": round(t - self.timeline.started, 1), "what": w} for t, w in self.timeline.marks
            ],
            "lineage": lineage,
            "plot": str(plot),
        }
        (self.data_dir / "demo-report.json").write_text(json.dumps(report, indent=2, default=str))
        return report

    def plot(self, app: DemoApp, promoted: str | None) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t0 = self.timeline.started
        fig, ax = plt.subplots(figsize=(9, 4.5))
        answers = sorted(app.answers, key=lambda a: a.at)
        window = max(4, self.profile.batch)
        xs, ys = [], []
        for i in range(len(answers)):
            chunk = answers[max(0, i - window + 1) : i + 1]
            xs.append((answers[i].at - t0) / 60)
            ys.append(sum(a.success for a in chunk) / len(chunk))
        ax.plot(xs, ys, color="tab:blue", label=f"success rate (last {window} requests)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("minutes since the demo started")
        ax.set_ylabel("success rate", color="tab:blue")
        losses = [((s.at - t0) / 60, s.loss) for s in self.samples if s.loss is not None]
        if losses:
            ax2 = ax.twinx()
            ax2.plot(
                [x for x, _ in losses],
                [y for _, y in losses],
                "o-",
                color="tab:orange",
                label="training loss",
            )
            ax2.set_ylabel("training loss", color="tab:orange")
        for t, what in self.timeline.marks:
            if what.startswith("alias `learnloop` now points at"):
                ax.axvline((t - t0) / 60, color="tab:green", linestyle="--")
                ax.annotate(f"promoted {promoted}", ((t - t0) / 60, 0.05), color="tab:green", rotation=90)
        ax.set_title("learnloop demo: the app's success rate as the loop learns")
        fig.tight_layout()
        out = self.data_dir / "demo-success.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
