"""A RULER-style group judge behind a real OpenAI-compatible HTTP endpoint (FastAPI in uvicorn).

A paid remote judge cannot run here; this one reads the candidates out of the request learnloop sends
(shared context once, then "## Candidate i" sections) and scores each by a rule a tiny model can
learn: the share of a-z characters of its answer. It records every request and its headers.
"""

from __future__ import annotations

import json
import re
import string
import threading
from typing import Any

from fastapi import FastAPI, Request

_CANDIDATE = re.compile(
    r"^## Candidate (\d+)\n(.*?)(?=^## Candidate \d+\n|^Score all \d+ candidates)", re.M | re.S
)


def answer_of(body: str) -> str:
    """The candidate's answer text: its rendered lines without the '[assistant] ' role tag."""
    lines = [line.removeprefix("[assistant] ") for line in body.strip("\n").split("\n")]
    return "\n".join(lines)


def lower_share(text: str) -> float:
    return sum(c in string.ascii_lowercase for c in text) / len(text) if text else 0.0


class RulerJudge:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.candidates: list[list[str]] = []
        self.garbage = False
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        def completions(body: dict[str, Any], request: Request) -> dict[str, Any]:
            user = body["messages"][-1]["content"]
            answers = [answer_of(m.group(2)) for m in _CANDIDATE.finditer(user)]
            with self.lock:
                self.requests.append(body)
                self.headers.append(dict(request.headers))
                self.candidates.append(answers)
            scores = [
                {"index": i, "score": round(lower_share(a), 6), "rationale": "share of lowercase letters"}
                for i, a in enumerate(answers, start=1)
            ]
            content = "I cannot rank these." if self.garbage else json.dumps({"scores": scores})
            return {
                "id": "judge",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
            }
