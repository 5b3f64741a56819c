"""The simulated application: what a real app does to put its model in the loop, and nothing more.

It asks learnloop's ``learnloop`` alias through the official ``openai`` client (and nothing else:
which model answers is the alias's business: the teacher upstream first, the trained student in the
end), checks each answer with the verifier, and sends the verdict back as feedback with the SDK.
Each user is one of 50, named in every request, so an A/B split keeps a user on one side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import learnloop
from learnloop.demo.task import SCENARIO, Case, check

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
        self,
        base_url: str,
        *,
        token: str | None,
        concurrency: int,
        max_tokens: int,
        model: str = "learnloop",
    ) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key=token or "unused", max_retries=8, timeout=600
        )
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.model = model  # the app's is the alias; the demo measures the base model by name apart
        self.answers: list[Answer] = []
        self.requests = 0
        self._lock = threading.Lock()

    def ask(self, case: Case, *, user: str, phase: str) -> Answer:
        started = time.monotonic()
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model,
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

    def round(self, cases: list[Case], *, phase: str) -> list[Answer]:
        """Ask a batch of requests at once (serving batches them), then send each verdict as feedback."""
        with self._lock:
            first = self.requests
            self.requests += len(cases)
        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(
                pool.map(
                    lambda ic: self.ask(ic[1], user=f"user-{(first + ic[0]) % 50}", phase=phase),
                    enumerate(cases),
                )
            )
        for a in answers:
            learnloop.feedback(a.trajectory_id, success=a.success, comment=f"verifier score {a.score:.2f}")
        return answers

    def success_rate(self, predicate: Callable[[Answer], bool]) -> tuple[int, int]:
        with self._lock:
            chosen = [a for a in self.answers if predicate(a)]
        return sum(a.success for a in chosen), len(chosen)
