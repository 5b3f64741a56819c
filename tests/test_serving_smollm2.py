"""SmolLM2-135M served for real: greedy parity with generate (alone and batched, base and LoRA), and a
request through the OpenAI client. Slow: uses the SmolLM2 the run converts once (conftest)."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import openai
import pytest
from serving_support import make_adapter, one_torch_thread

from api_support import live_server
from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.serving.backend import ChatRequest
from learnloop.store.db import Database

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 12 times 3?",
]


def test_smollm2_served_greedy_equals_generate(
    tmp_path: Path, sqlite_db: Database, settings: Settings, smollm2_prepared: dict[str, Any]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from learnloop.serving.local import LocalBackend
    from learnloop.serving.runtime import ServingRuntime

    base = smollm2_prepared["path"]
    adapter = make_adapter(base, tmp_path / "v1", seed=1, rank=8)
    with one_torch_thread():
        backend = LocalBackend(base, device="cpu", dtype="float32")
        try:
            backend.load_adapter("v1", adapter)
            plain = AutoModelForCausalLM.from_pretrained(base).eval()
            lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()

            def generate(model, q: str) -> str:  # noqa: ANN001
                ids = torch.tensor(
                    [backend.prompt_ids(ChatRequest(messages=[{"role": "user", "content": q}]))]
                )
                with torch.inference_mode():
                    out = model.generate(
                        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16
                    )
                return backend.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

            expected = {
                (name, q): generate(m, q) for name, m in (("base", plain), ("v1", lora)) for q in QUESTIONS
            }
            assert "Paris" in expected[("base", QUESTIONS[0])]

            def served(job: tuple[str, str]) -> str:
                name, q = job
                req = ChatRequest(messages=[{"role": "user", "content": q}], temperature=0, max_tokens=16)
                return backend.chat(name, req)[0].text

            with cf.ThreadPoolExecutor(8) as pool:  # base and LoRA rows of different lengths in one batch
                got = dict(zip(expected, pool.map(served, expected)))
            assert got == expected

            runtime = ServingRuntime(backend, sqlite_db, capture=None)
            with live_server(create_app(settings, sqlite_db, watch_inbox=False, serving=runtime)) as url:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
                r = client.chat.completions.create(
                    model="learnloop",
                    messages=[{"role": "user", "content": QUESTIONS[0]}],
                    temperature=0,
                    max_tokens=16,
                )
                assert r.choices[0].message.content == expected[("base", QUESTIONS[0])]
        finally:
            backend.close()
