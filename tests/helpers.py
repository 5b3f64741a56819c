"""Small builders shared by tests."""

from __future__ import annotations


def chat(prompt: str, answer: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
