"""Schemathesis hooks for tests/test_api_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

``accepts_valid_data`` is Schemathesis' ``positive_data_acceptance`` with what JSON Schema cannot
state taken out: a request the document calls valid may still break a rule across values, and is
then refused with a 422 naming the rule (each is in the document's descriptions); and the
OpenAI-compatible route keeps OpenAI's contract, which no JSON Schema states whole.
"""

from __future__ import annotations

import json
import re

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

RULES_BEYOND_JSON_SCHEMA = re.compile(
    "|".join(
        (
            r"repeats the (id|idempotency_key) .* with different content",  # unique within a batch
            r"outside the range of a UTC timestamp",  # a time whose UTC conversion leaves years 1-9999
            # a training config's rules across fields (TrainConfig's description names them)
            r"\(deprecated\) and rollout\.\w+ disagree",
            r"both name rewards; keep rollout's",
            r"online GRPO compares samples",
            r"rft samples answers and keeps those a reward passes",
            r"kto estimates its KL term",
        )
    )
)


OPENAI_PATHS = ("/v1/chat/completions",)


@schemathesis.check
def accepts_valid_data(ctx, response, case):  # type: ignore[no-untyped-def]
    if case.operation.path in OPENAI_PATHS:
        return None
    if response.status_code == 422:
        try:
            problems = json.loads(response.content).get("problems") or []
        except ValueError:
            problems = []
        if problems and all(RULES_BEYOND_JSON_SCHEMA.search(p.get("msg", "")) for p in problems):
            return None
    return positive_data_acceptance(ctx, response, case)
