"""The simulated application: what a real app does to put its model in the loop, and nothing more.

It asks learnloop's ``learnloop`` alias through the official ``openai`` client, checks each answer
with the verifier, sends the verdict back as feedback with the SDK, and records a rule-based
teacher's answer through the SDK's sampling rules (``source = teacher``): the traces a real app
would distil from a large model.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import learnloop
from learnloop.demo.task import SCENARIO, SYSTEM, Case, check

VERSION_HEADER = "x-learnloop-version"
SCENARIO_HEADER = "x-learnloop-scenario"


@dataclass
class Answer:
    at: float
    case: Case
    text: str
    score: float
    version: str
    trajectory_id: str
    latency_s: float
    phase: str

    @property
    def success(self) -> bool:
        return self.score == 1.0


class DemoApp:
    def __init__(
        self, base_url: str, *, token: str | None, concurrency: int, max_tokens: int, seed: int
    ) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key=token or "unused", max_retries=8, timeout=600
        )
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.rng = random.Random(seed)
        self.answers: list[Answer] = []
        self.teacher_recorded = 0
        self._lock = threading.Lock()

    def ask(self, case: Case, *, user: str, phase: str) -> Answer:
        started = time.monotonic()
        raw = self.client.chat.completions.with_raw_response.create(
            model="learnloop",
            messages=case.messages,
            max_tokens=self.max_tokens,
            temperature=0,
            user=user,
            extra_headers={SCENARIO_HEADER: SCENARIO},
        )
        completion = raw.parse()
        text = completion.choices[0].message.content or ""
        answer = Answer(
            at=time.time(),
            case=case,
            text=text,
            score=check(case.message, text),
            version=raw.headers.get(VERSION_HEADER, "?"),
            trajectory_id=completion.id,
            latency_s=time.monotonic() - started,
            phase=phase,
        )
        with self._lock:
            self.answers.append(answer)
        return answer

    def round(self, cases: list[Case], *, phase: str, teacher: bool = True) -> list[Answer]:
        """Ask a batch of requests at once (serving batches them), then send verdicts and teacher traces."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(
                pool.map(lambda ic: self.ask(ic[1], user=f"user-{ic[0] % 50}", phase=phase), enumerate(cases))
            )
        # The server stores what it served a moment after answering; feedback must not overtake it.
        time.sleep(0.3)
        for a in answers:
            learnloop.feedback(a.trajectory_id, success=a.success, comment=f"verifier score {a.score:.2f}")
            if teacher:
                self.record_teacher(a.case)
        return answers

    def record_teacher(self, case: Case) -> None:
        """The teacher answers every request; the SDK's sampling keeps a share plus the confident ones."""
        confidence = round(self.rng.uniform(0.5, 1.0), 2)
        with learnloop.trajectory(
            scenario=SCENARIO, source="teacher", metadata={"confidence": confidence}
        ) as t:
            t.system(SYSTEM)
            t.user(case.message)
            t.assistant(case.teacher_answer())
        self.teacher_recorded += 1

    def success_rate(self, predicate: Callable[[Answer], bool]) -> tuple[int, int]:
        with self._lock:
            chosen = [a for a in self.answers if predicate(a)]
        return sum(a.success for a in chosen), len(chosen)
