"""`learnloop demo`: the whole loop, unattended, on a fresh data dir, through public interfaces only.

It starts the rule-based teacher (``learnloop.demo.teacher``: a small real OpenAI-compatible server,
standing in for a hosted big model) and ``learnloop serve`` (server + daemon) as subprocesses,
points the ``learnloop`` alias at the teacher (``learnloop alias set learnloop upstream:teacher``),
drops a backfill of earlier teacher answers in the inbox, and measures the base model by name. Then
the simulated app talks to the ``learnloop`` alias only: the teacher answers it through learnloop,
which keeps 15% of those answers plus the confident ones as teacher data; the daemon trains on them,
gates the candidate against the teacher, and moves the app's users to it in canary steps, watching
its live reward against the teacher's. Once the student serves every user the demo measures it on
fresh cases, and writes a report (success before and after, each target's share over time, the
cost saved) and a plot (success, loss, the student's share, the canary steps) under the data dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from learnloop.children import signalled_when_parent_dies
from learnloop.demo.app import DemoApp
from learnloop.demo.profiles import TEACHER_KEY_ENV, Profile
from learnloop.demo.task import SCENARIO, cases
from learnloop.errors import LearnloopError


class DemoFailed(LearnloopError):
    """The demo could not complete a stage; the message says which and where its log is."""


@dataclass(frozen=True)
class Budget:
    """The time the loop may take, once the model is prepared, until the trained model serves every user.

    It is a target the report holds the run to (met, or missed by how much), not a deadline: a slow or
    busy machine still finishes the demo. ``strict`` makes a missed budget fail the demo the moment it
    is passed. Without it the demo gives up only after ``give_up_s`` (ten budgets, at least 30 minutes
    more than one), where a loop that has not promoted is stuck, not slow.
    """

    seconds: float
    strict: bool = False

    @property
    def give_up_s(self) -> float:
        return max(10 * self.seconds, self.seconds + 1800)

    def check(self, elapsed: float, where: str) -> None:
        """Raise DemoFailed when the run, ``elapsed`` seconds in, may go on no longer."""
        if self.strict and elapsed > self.seconds:
            raise DemoFailed(
                f"the student did not take over every user within the {self.seconds:.0f} s budget "
                f"(--strict); see {where} and `learnloop status`"
            )
        if elapsed > self.give_up_s:
            raise DemoFailed(
                f"the student did not take over every user within {self.give_up_s:.0f} s (the budget "
                f"was {self.seconds:.0f} s; this far past it the loop looks stuck, not slow); see {where} "
                "and `learnloop status`"
            )

    def verdict(self, took_s: float | None) -> dict[str, Any]:
        """The report's line: when the student took over, against the budget."""
        if took_s is None:
            return {
                "budget_s": self.seconds,
                "took_s": None,
                "met": False,
                "missed_by_s": None,
                "strict": self.strict,
                "line": f"no promotion (budget {self.seconds:.0f} s)",
            }
        met = took_s <= self.seconds
        missed_by = None if met else round(took_s - self.seconds, 1)
        line = (
            f"the student served every user at {took_s:.0f} s: within the {self.seconds:.0f} s budget"
            if met
            else f"the student served every user at {took_s:.0f} s: missed the {self.seconds:.0f} s "
            f"budget by {missed_by:.0f} s (a slow or busy machine; --strict makes this a failure)"
        )
        return {
            "budget_s": self.seconds,
            "took_s": round(took_s, 1),
            "met": met,
            "missed_by_s": missed_by,
            "strict": self.strict,
            "line": line,
        }


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
    def __init__(
        self, profile: Profile, data_dir: Path, *, port: int, console: Any, strict: bool = False
    ) -> None:
        self.profile = profile
        self.budget = Budget(profile.budget_s, strict=strict)
        self.promoted_at: float | None = None  # seconds into the demo when the student served everyone
        self.data_dir = data_dir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.console = console
        self.timeline = Timeline()
        self.samples: list[StatusSample] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.teacher: subprocess.Popen[bytes] | None = None
        self.teacher_port = _free_port()
        self.teacher_url = f"http://127.0.0.1:{self.teacher_port}"
        self.teacher_key = f"sk-demo-{secrets.token_hex(16)}"  # the server reads it from the environment
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
        env[TEACHER_KEY_ENV] = self.teacher_key
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
            self.profile.config_toml(
                base_model=base_model, data_dir=self.data_dir, port=self.port, teacher_url=self.teacher_url
            )
        )

    def start_teacher(self) -> None:
        """The teacher as its own process, asking for its API key, with a hosted model's latency."""
        log = (self.data_dir / "teacher.log").open("wb")
        self.teacher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "learnloop.demo.teacher",
                "--port",
                str(self.teacher_port),
                "--api-key-env",
                TEACHER_KEY_ENV,
                "--first-token-ms",
                str(self.profile.teacher_first_token_ms),
                "--token-ms",
                str(self.profile.teacher_token_ms),
            ],
            preexec_fn=_STOP_WITH_DEMO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        headers = {"Authorization": f"Bearer {self.teacher_key}"}
        while time.monotonic() < deadline:
            if self.teacher.poll() is not None:
                raise DemoFailed(f"the teacher exited; see {self.data_dir / 'teacher.log'}")
            try:
                if httpx.get(f"{self.teacher_url}/v1/models", headers=headers, timeout=5).status_code == 200:
                    self.timeline.mark(f"teacher up at {self.teacher_url} (rule-based, OpenAI-compatible)")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoFailed(f"the teacher did not come up within 120 s; see {self.data_dir / 'teacher.log'}")

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
            preexec_fn=_STOP_WITH_DEMO,
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
                    target = "base" if self.profile.no_teacher else "upstream:teacher"
                    self.timeline.mark(f"server up: `learnloop` serves {target}")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise DemoFailed(f"the server did not come up within 600 s; see {self.data_dir / 'serve.log'}")

    def stop_server(self) -> None:
        for proc in (self.server, self.teacher):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

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
        alias = self.alias(st)
        if alias.get("candidate") and alias.get("split"):
            self.timeline.mark(
                f"canary: {alias['candidate']} answers {alias['split']:.0%} of users",
                once=f"canary:{alias['candidate']}:{alias['split']}",
            )
        for c in st.get("canaries") or []:
            if c.get("decision") == "fall_back":
                self.timeline.mark(
                    f"canary of {c['candidate']} falling back: {c['reason']}", once=f"fb:{c['candidate']}"
                )

    @staticmethod
    def alias(st: dict[str, Any]) -> dict[str, Any]:
        return next((a for a in st.get("serving") or [] if a.get("alias") == "learnloop"), {})

    @classmethod
    def serving_version(cls, st: dict[str, Any]) -> str | None:
        return cls.alias(st).get("version_id")

    @classmethod
    def student_serves_all(cls, st: dict[str, Any]) -> str | None:
        """The trained version the alias serves to every user (None while the teacher still answers)."""
        version = cls.serving_version(st)
        return version if version and version != "base" and not version.startswith("upstream:") else None

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from rich.live import Live

        import learnloop

        self.fresh_data_dir()
        base = self.prepare_model()
        self.timeline = Timeline()  # the demo's clock starts once the model is ready
        self.write_config(base)
        if self.profile.no_teacher:
            # No teacher, no backfill: the app's users are answered by the base model from the start.
            self.cli("alias", "set", "learnloop", "base", "--reason", "no teacher: start on the base model")
        else:
            self.start_teacher()
            backfilled = self.backfill_inbox()
            self.timeline.mark(f"{backfilled} earlier teacher answers dropped in the inbox")
            self.cli("alias", "set", "learnloop", "upstream:teacher", "--reason", "start on the big model")
        self.start_server()
        # The app reads the same learnloop.toml (its sampling rules) and spools under the demo's data dir.
        os.environ.update(LEARNLOOP_CONFIG=str(self.config_path), LEARNLOOP_DATA_DIR=str(self.data_dir))
        learnloop.configure(server_url=self.base_url)
        app = DemoApp(
            self.base_url, token=None, concurrency=self.profile.batch, max_tokens=self.profile.max_tokens
        )
        # The base model, measured by its name beside the app (which only ever asks `learnloop`).
        probe = DemoApp(
            self.base_url,
            token=None,
            concurrency=self.profile.batch,
            max_tokens=self.profile.max_tokens,
            model="base",
        )
        fresh = iter(cases(self.profile.seed + 2, 100_000))
        promoted: str | None = None
        try:
            with Live(
                self.view(app, probe, "measuring the base model"),
                console=self.console,
                refresh_per_second=2,
                transient=False,
            ) as live:
                for _ in range(self.profile.before_rounds):
                    probe.round([next(fresh) for _ in range(self.profile.batch)], phase="before")
                    self.sample()
                    live.update(self.view(app, probe, "measuring the base model"))
                self.timeline.mark(
                    "base model measured; the app runs on "
                    + ("the base model" if self.profile.no_teacher else "the teacher")
                    + " while the loop learns"
                )
                while True:
                    elapsed = time.time() - self.timeline.started
                    if promoted is not None and elapsed > self.budget.seconds:
                        break  # learning until the target: the budget is over, measure what serves
                    if promoted is None:
                        self.budget.check(elapsed, str(self.data_dir / "serve.log"))
                    answers = app.round([next(fresh) for _ in range(self.profile.batch)], phase="learning")
                    student = self.student_serves_all(self.sample().state)
                    if student and student != promoted and any(a.version == student for a in answers):
                        promoted = student
                        if self.promoted_at is None:  # the budget counts the first take-over
                            self.promoted_at = time.time() - self.timeline.started
                        self.timeline.mark(f"{promoted} serves every user")
                    live.update(self.view(app, probe, "the app runs; the daemon learns"))
                    if promoted is not None and self.good_enough(app, promoted):
                        break
                    time.sleep(self.profile_pause())
                self.timeline.mark(f"measuring {self.profile.after_cases} fresh cases on {promoted}")
                after_cases = [next(fresh) for _ in range(self.profile.after_cases)]
                for i in range(0, len(after_cases), self.profile.batch):
                    app.round(after_cases[i : i + self.profile.batch], phase="after")
                    self.sample()
                    live.update(self.view(app, probe, f"measuring {promoted} on fresh cases"))
                self.timeline.mark("done")
            learnloop.flush(timeout=30)
            final = self.status()
        finally:
            self.stop_server()
        return self.report(app, probe, promoted, final)

    def good_enough(self, app: DemoApp, version: str) -> bool:
        """Whether the demo may stop learning: at once for a profile without ``learn_until``, else once
        the lower end of the 95% interval of the version's success rate on the app's requests reaches
        that rate (the loop keeps training and promoting until then, or until the budget runs out).
        The interval, not a recent window's rate: a version answering 64% passed a window of its last
        32 answers at 80% (measured: 41/64 on fresh cases right after); 32 of 32 reach 0.89."""
        bar = self.profile.learn_until
        if bar is None:
            return True
        from scipy.stats import binomtest

        answers = [a for a in app.answers if a.phase == "learning" and a.version == version]
        if not answers:
            return False
        ok = sum(a.success for a in answers)
        return binomtest(ok, len(answers)).proportion_ci(method="wilson").low >= bar

    def profile_pause(self) -> float:
        # While the daemon trains on the same two cores, a slower trickle of traffic leaves it the CPU.
        st = self.samples[-1].state if self.samples else {}
        return 5.0 if st.get("running_job") else 0.5

    # -- what the person sees -------------------------------------------------------------------

    def view(self, app: DemoApp, probe: DemoApp, phase: str) -> Any:
        from rich.table import Table

        st = self.samples[-1].state if self.samples else {}
        table = Table(
            title=f"learnloop demo ({self.profile.name}) - {phase}", show_header=False, min_width=72
        )
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        elapsed = time.time() - self.timeline.started
        over = " (over the budget; the demo goes on and the report says by how much)"
        table.add_row(
            "elapsed",
            f"{elapsed:.0f} s of a {self.budget.seconds:.0f} s budget"
            + (over if elapsed > self.budget.seconds and self.promoted_at is None else ""),
        )
        table.add_row("dashboard", f"{self.base_url}/")
        ok, n = probe.success_rate(lambda a: a.phase == "before")
        if n:
            table.add_row("success, base model", f"{ok}/{n} = {ok / n:.0%} (asked by name)")
        for target in sorted({a.version for a in app.answers if a.phase == "learning"}):
            ok, n = app.success_rate(lambda a, t=target: a.phase == "learning" and a.version == t)
            table.add_row(f"success, {target}", f"{ok}/{n} = {ok / n:.0%} (the app's traffic)")
        ok, n = app.success_rate(lambda a: a.phase == "after")
        if n:
            table.add_row("success, student on fresh cases", f"{ok}/{n} = {ok / n:.0%}")
        table.add_row("requests the app sent", str(len(app.answers)))
        counts = (st.get("trajectories") or {}).get("by_source") or {}
        table.add_row(
            "traces captured",
            ", ".join(f"{k} {v['total']}" for k, v in sorted(counts.items()) if v.get("total")) or "-",
        )
        alias = self.alias(st)
        if alias:
            who = alias.get("version") or "base"
            if alias.get("candidate"):
                who += f", {alias['candidate']} for {alias['split']:.0%} of users (canary)"
            table.add_row("`learnloop` serves", who)
        for c in st.get("canaries") or []:
            table.add_row("canary", str(c.get("reason", ""))[:140])
        traffic = next((t for t in st.get("traffic") or [] if t.get("alias") == "learnloop"), None)
        if traffic:
            shares = ", ".join(f"{t['target']} {t['share']:.0%}" for t in traffic["targets"] if t["requests"])
            table.add_row("share, last hour", shares or "-")
            if traffic.get("cost_saved") is not None:
                table.add_row("cost saved so far", f"${traffic['cost_saved']:.4f}")
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
        return table

    def report(
        self, app: DemoApp, probe: DemoApp, promoted: str | None, final: dict[str, Any]
    ) -> dict[str, Any]:
        from scipy.stats import binomtest

        def rate(who: DemoApp, phase: str) -> dict[str, Any]:
            ok, n = who.success_rate(lambda a: a.phase == phase)
            if not n:
                return {"n": 0}
            ci = binomtest(ok, n).proportion_ci(method="wilson")
            return {"successes": ok, "n": n, "rate": ok / n, "ci95": [ci.low, ci.high]}

        lineage: Any = None
        gate: Any = None
        if promoted:
            try:
                lineage = json.loads(self.cli("versions", "show", promoted, "--json").stdout)
                evaluations = json.loads(self.cli("eval", "list", "--candidate", promoted, "--json").stdout)
                passed = next((e for e in evaluations if e.get("verdict") == "promote"), None)
                gate = _gate_summary(passed) if passed else None
            except (DemoFailed, ValueError) as exc:
                lineage = {"error": str(exc)}
        traffic = next((t for t in final.get("traffic") or [] if t.get("alias") == "learnloop"), {})
        plot = self.plot(app, probe, promoted)
        report = {
            "profile": self.profile.name,
            "prepare_s": round(self.prepare_seconds, 1),
            "demo_s": round(
                (self.timeline.marks[-1][0] if self.timeline.marks else time.time()) - self.timeline.started,
                1,
            ),
            "before": rate(probe, "before"),
            "after": rate(app, "after"),
            "promoted": promoted,
            "budget": self.budget.verdict(self.promoted_at),
            "teacher": not self.profile.no_teacher,
            "algorithm": self.profile.algorithm,
            "cycles": self.cycles(),
            "requests": len(app.answers),
            "share_over_time": self.shares(app),
            "gate": gate,
            "cost": {
                "teacher_cost_per_1k_requests": traffic.get("teacher_cost_per_1k_requests"),
                "own_requests": traffic.get("own_requests"),
                "cost_saved": traffic.get("cost_saved"),
                "teacher_price_per_1k_tokens": {
                    "input": self.profile.teacher_price[0],
                    "output": self.profile.teacher_price[1],
                },
                "note": "the teacher's price is a large hosted model's list price; its latency is simulated",
            },
            "timeline": [
                {"t_s": round(t - self.timeline.started, 1), "what": w} for t, w in self.timeline.marks
            ],
            "lineage": lineage,
            "plot": str(plot),
        }
        (self.data_dir / "demo-report.json").write_text(json.dumps(report, indent=2, default=str))
        return report

    def cycles(self) -> list[dict[str, Any]]:
        """The loop's cycles as its jobs recorded them: what each trained on, its gate, its outcome."""
        try:
            jobs = json.loads(self.cli("jobs", "list", "--loop", "orders", "--json").stdout)
            out = []
            for j in sorted(jobs, key=lambda j: j["id"]):
                full = json.loads(self.cli("jobs", "show", str(j["id"]), "--json").stdout)
                result = full.get("result") or {}
                out.append(
                    {
                        "job_id": j["id"],
                        "cycle": (full.get("payload") or {}).get("cycle"),
                        "state": j["state"],
                        "examples": result.get("examples"),
                        "steps": result.get("step"),
                        "seconds": j.get("duration_s"),
                        "gate": (result.get("gate") or {}).get("verdict"),
                        "promoted": result.get("promoted"),
                        "error": full.get("error"),
                    }
                )
            return out
        except (DemoFailed, ValueError, KeyError) as exc:
            return [{"error": str(exc)}]

    def shares(self, app: DemoApp, bucket_s: float = 30.0) -> list[dict[str, Any]]:
        """The app's requests per target in each ``bucket_s`` seconds: the teacher's share falling."""
        t0 = self.timeline.started
        buckets: dict[int, dict[str, int]] = {}
        for a in app.answers:
            counts = buckets.setdefault(int((a.at - t0) // bucket_s), {})
            counts[a.version] = counts.get(a.version, 0) + 1
        out = []
        for b in sorted(buckets):
            counts = buckets[b]
            total = sum(counts.values())
            teacher = sum(n for v, n in counts.items() if v.startswith("upstream:"))
            out.append(
                {
                    "t_s": b * bucket_s,
                    "requests": total,
                    "by_target": counts,
                    "teacher_share": teacher / total,
                    "student_share": 1 - teacher / total,
                }
            )
        return out

    def plot(self, app: DemoApp, probe: DemoApp, promoted: str | None) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t0 = self.timeline.started
        fig, ax = plt.subplots(figsize=(10, 5))
        window = max(4, self.profile.batch)

        def rolling(answers: list[Any]) -> tuple[list[float], list[float]]:
            xs, ys = [], []
            for i in range(len(answers)):
                chunk = answers[max(0, i - window + 1) : i + 1]
                xs.append((answers[i].at - t0) / 60)
                ys.append(sum(a.success for a in chunk) / len(chunk))
            return xs, ys

        xs, ys = rolling(sorted(probe.answers, key=lambda a: a.at))
        ax.plot(xs, ys, color="tab:gray", label="base model (asked by name)")
        answers = sorted(app.answers, key=lambda a: a.at)
        xs, ys = rolling(answers)
        ax.plot(xs, ys, color="tab:blue", label=f"the app's success (last {window} requests)")
        shares = self.shares(app, bucket_s=15.0)
        if shares:
            end = (answers[-1].at - t0) / 60
            ax.fill_between(
                [s["t_s"] / 60 for s in shares] + [end],
                [s["student_share"] for s in shares] + [shares[-1]["student_share"]],
                step="post",
                color="tab:green",
                alpha=0.15,
                label="student's share of the app's requests (15 s)",
            )
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("minutes since the demo started")
        ax.set_ylabel("success rate · share", color="tab:blue")
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
            x = (t - t0) / 60
            if what.startswith("canary:"):
                ax.axvline(x, color="tab:green", linestyle=":")
                ax.annotate(what.split(": ", 1)[1], (x, 0.35), color="tab:green", rotation=90, fontsize=7)
            elif what.endswith("serves every user"):
                ax.axvline(x, color="tab:green", linestyle="--")
                ax.annotate(what, (x, 0.05), color="tab:green", rotation=90, fontsize=7)
            elif "falling back" in what:
                ax.axvline(x, color="tab:red", linestyle="--")
        ax.legend(loc="center left", fontsize=8)
        ax.set_title("learnloop demo: from the teacher to the student, the app's success as the loop learns")
        fig.tight_layout()
        out = self.data_dir / "demo-success.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _gate_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """The passing evaluation's quality, latency and cost, both sides."""
    o = (ev.get("metrics") or {}).get("overall") or {}
    keys = ("reward", "latency_p50", "latency_p95", "cost_per_1k_requests")
    return {
        "evaluation_id": ev.get("id"),
        "baseline": ev.get("baseline"),
        "n": o.get("n"),
        "reward_diff": o.get("reward_diff"),
        "reward_diff_ci": o.get("reward_diff_ci"),
        **{
            f"{k}_{side}": o.get(f"{k}_{side}_ms" if k.startswith("latency") else f"{k}_{side}")
            for k in keys
            for side in ("candidate", "baseline")
        },
    }


# The server and the teacher get SIGTERM from the kernel when the demo dies, even by SIGKILL: they
# shut down as they do when the demo stops them (the server's daemon checkpoints and stops training).
_STOP_WITH_DEMO = signalled_when_parent_dies(signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
