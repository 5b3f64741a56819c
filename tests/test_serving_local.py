"""LocalBackend on the tiny model: greedy parity with generate, batching, streaming, adapters, bad input."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path

import pytest
import torch
from serving_support import PROMPTS, make_adapter, one_torch_thread

from learnloop.errors import NotFound, Overloaded, ValidationFailed
from learnloop.serving.backend import ChatRequest
from learnloop.serving.chat_format import normalize_messages, parse_tool_calls, validate_tools
from learnloop.serving.local import LocalBackend


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {f"v{i}": make_adapter(tiny_model_dir, root / f"v{i}", seed=i) for i in (1, 2)}


# Every test on the backend runs on both runners: the CPU decoder (folding an adapter into the weights
# after a single step alone, so merging and unmerging happen all the time) and transformers' forward.
@pytest.fixture(scope="module", params=["decoder", "transformers"])
def backend(request: pytest.FixtureRequest, tiny_model_dir: Path, adapters: dict[str, Path]) -> LocalBackend:
    with one_torch_thread():
        b = LocalBackend(
            tiny_model_dir, device="cpu", max_batch_size=8, decoder=request.param == "decoder", merge_after=1
        )
        assert b.engine.runner_name == request.param
        for name, path in adapters.items():
            b.load_adapter(name, path)
        yield b
        b.close()


def _generate(model, backend: LocalBackend, messages, n: int = 20) -> str:  # noqa: ANN001
    ids = torch.tensor([backend.prompt_ids(ChatRequest(messages=messages))])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
    return backend.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _greedy(backend: LocalBackend, model: str, messages, n: int = 20) -> str:  # noqa: ANN001
    return backend.chat(model, ChatRequest(messages=messages, temperature=0, max_tokens=n))[0].text


def test_greedy_equals_generate_alone_and_in_mixed_batches(
    backend: LocalBackend, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with_v1 = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters["v1"]
    ).eval()
    expected = {("base", i): _generate(plain, backend, m) for i, m in enumerate(PROMPTS)}
    expected |= {("v1", i): _generate(with_v1, backend, m) for i, m in enumerate(PROMPTS)}
    # one at a time
    for (name, i), text in expected.items():
        assert _greedy(backend, name, PROMPTS[i]) == text
    # all at once: rows of different lengths and adapters share batches, joining mid-decode
    jobs = [(name, i) for name in ("base", "v1", "v2") for i in range(len(PROMPTS))] * 2
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda job: _greedy(backend, job[0], PROMPTS[job[1]]), jobs))
    for job, text in zip(jobs, got):
        if job in expected:
            assert text == expected[job], job
    v2 = {i: _greedy(backend, "v2", m) for i, m in enumerate(PROMPTS)}
    assert all(v2[i] != expected[("v1", i)] and v2[i] != expected[("base", i)] for i in v2)  # adapters matter


def test_stream_sampling_seed_n_and_stop(backend: LocalBackend) -> None:
    req = ChatRequest(messages=PROMPTS[0], temperature=0.9, top_p=0.9, seed=7, max_tokens=12)
    deltas = list(backend.stream("v1", req))
    assert len(deltas) > 1  # token by token, not one block
    assert "".join(deltas) == backend.chat("v1", req)[0].text  # the seed makes sampling reproducible
    two = backend.chat(
        "v1", ChatRequest(messages=PROMPTS[0], temperature=0.9, top_p=0.9, seed=7, max_tokens=12, n=2)
    )
    assert len(two) == 2 and two[0].text == "".join(deltas) and two[0].text != two[1].text
    full = _greedy(backend, "base", PROMPTS[3], 20)
    stop = full[6:9]
    cut = backend.chat("base", ChatRequest(messages=PROMPTS[3], temperature=0, max_tokens=20, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]
    assert (
        "".join(
            backend.stream(
                "base", ChatRequest(messages=PROMPTS[3], temperature=0, max_tokens=20, stop=[stop])
            )
        )
        == cut.text
    )
    r = backend.chat("base", ChatRequest(messages=PROMPTS[0], temperature=0, max_tokens=5))[0]
    assert (r.finish_reason, r.completion_tokens) == ("length", 5) and r.prompt_tokens > 0


def test_bad_input_is_a_clear_domain_error(backend: LocalBackend) -> None:
    with pytest.raises(NotFound, match="v9"):
        backend.chat("v9", ChatRequest(messages=PROMPTS[0]))
    with pytest.raises(ValidationFailed, match=r"prompt is \d+ tokens; this model's context is 512"):
        backend.chat("base", ChatRequest(messages=[{"role": "user", "content": "two plus two " * 400}]))
    with pytest.raises(ValidationFailed, match=r"max_tokens is 5000 .* at most \d+"):
        backend.chat("base", ChatRequest(messages=PROMPTS[0], max_tokens=5000))
    with pytest.raises(ValidationFailed, match=r"messages\[0\].role is 'wizard'"):
        normalize_messages([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValidationFailed, match="non-empty"):
        normalize_messages([])
    with pytest.raises(ValidationFailed, match=r"messages\[0\].content is empty"):
        normalize_messages([{"role": "user", "content": ""}])
    with pytest.raises(ValidationFailed, match=r"tools\[0\]"):
        validate_tools([{"type": "function", "function": {"description": "no name"}}])
    with pytest.raises(ValidationFailed, match=r"tools\[1\]"):
        validate_tools([{"type": "function", "function": {"name": "ok"}}, {"type": "retrieval"}])


def test_tool_call_parsing_and_tool_messages(backend: LocalBackend) -> None:
    content, calls = parse_tool_calls(
        'ok <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )
    assert content == "ok" and calls[0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", None)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"t": 3}'},
    ]
    prompt = backend.tokenizer.decode(backend.prompt_ids(ChatRequest(messages=messages, tools=tools)))
    assert "get_weather" in prompt and '"city": "Oslo"' in prompt and '{"t": 3}' in prompt
    assert (
        backend.chat("v1", ChatRequest(messages=messages, tools=tools, temperature=0, max_tokens=4))[0].text
        is not None
    )


def test_cancel_frees_the_slot_and_capacity_is_bounded(tiny_model_dir: Path) -> None:
    b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=1, max_queued=1)
    try:
        stream = b.stream("base", ChatRequest(messages=PROMPTS[0], max_tokens=400, temperature=0))
        next(stream)
        assert b.engine.load[0] == 1
        # one slot busy, one request may wait; the third is refused
        waiting = threading.Thread(
            target=b.chat, args=("base", ChatRequest(messages=PROMPTS[1], max_tokens=2))
        )
        waiting.start()
        time.sleep(0.05)
        with pytest.raises(Overloaded):
            b.chat("base", ChatRequest(messages=PROMPTS[2], max_tokens=2))
        stream.close()  # the client went away
        waiting.join(10)
        deadline = time.monotonic() + 60
        while b.engine.load != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.engine.load == (0, 0)
    finally:
        b.close()


def test_adapters_load_by_name_and_unload(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    b = LocalBackend(tiny_model_dir, device="cpu")
    try:
        base = _greedy(b, "base", PROMPTS[0])
        b.load_adapter("a", adapters["v1"])
        b.load_adapter("a", adapters["v2"])  # a loaded name never changes meaning: no-op
        b.load_adapter("b", adapters["v2"])
        assert b.list() == ["base", "a", "b"]
        a = _greedy(b, "a", PROMPTS[0])
        b.unload_adapter("b")
        assert b.list() == ["base", "a"] and _greedy(b, "a", PROMPTS[0]) == a
        b.unload_adapter("a")
        assert b.list() == ["base"] and _greedy(b, "base", PROMPTS[0]) == base
        with pytest.raises(NotFound, match="adapter_config.json"):
            b.load_adapter("c", tmp_path)
    finally:
        b.close()


def _peft(tiny_model_dir: Path, adapter: Path | None):  # noqa: ANN202
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model if adapter is None else PeftModel.from_pretrained(model, adapter).eval()


def test_decoder_merges_the_adapter_alone_and_unmerges_for_others(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=4, merge_after=2)
    try:
        b.load_adapter("v1", adapters["v1"])
        dec = b.engine.runner.decoder
        want_v1 = _generate(_peft(tiny_model_dir, adapters["v1"]), b, PROMPTS[0])
        want_base = _generate(_peft(tiny_model_dir, None), b, PROMPTS[0])
        assert _greedy(b, "v1", PROMPTS[0]) == want_v1
        assert dec.merged == "v1"  # alone for more than two steps: folded into the weights
        assert _greedy(b, "base", PROMPTS[0]) == want_base  # the base's rows run on the exact weights
        assert dec.merged is None
        with cf.ThreadPoolExecutor(4) as pool:  # mixed rows: never merged while they share steps
            got = list(pool.map(lambda m: _greedy(b, m, PROMPTS[0]), ["v1", "base", "v1", "base"]))
        assert got == [want_v1, want_base, want_v1, want_base]
    finally:
        b.close()


def test_a_failing_decoder_step_falls_back_to_transformers_with_a_warning(
    tiny_model_dir: Path, adapters: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=4)
    try:
        b.load_adapter("v1", adapters["v1"])
        want = _generate(_peft(tiny_model_dir, adapters["v1"]), b, PROMPTS[1])
        dec = b.engine.runner.decoder
        real, calls = dec.step, []

        def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(1)
            if len(calls) == 3:  # mid-answer: the prompt and one decode step done, two tokens out
                raise RuntimeError("injected decoder failure")
            return real(*args, **kwargs)

        dec.step = failing
        with caplog.at_level("WARNING", logger="learnloop.serving"):
            assert _greedy(b, "v1", PROMPTS[1]) == want  # carried on from the tokens it had
        assert b.engine.runner_name == "transformers"
        assert any("injected decoder failure" in r.getMessage() for r in caplog.records)
        assert _greedy(b, "v1", PROMPTS[1]) == want
    finally:
        b.close()


def test_an_adapter_the_decoder_cannot_apply_moves_serving_to_transformers(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    dora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, use_dora=True),
    )
    dora.save_pretrained(tmp_path / "dora")
    b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=4)
    try:
        b.load_adapter("v1", adapters["v1"])
        assert b.engine.runner_name == "decoder"
        with caplog.at_level("WARNING", logger="learnloop.serving"):
            b.load_adapter("dora", tmp_path / "dora")
        assert b.engine.runner_name == "transformers"
        assert any("use_dora" in r.getMessage() for r in caplog.records)
        assert _greedy(b, "dora", PROMPTS[0]) == _generate(
            _peft(tiny_model_dir, tmp_path / "dora"), b, PROMPTS[0]
        )
        assert _greedy(b, "v1", PROMPTS[0]) == _generate(_peft(tiny_model_dir, adapters["v1"]), b, PROMPTS[0])
    finally:
        b.close()


def test_background_rows_never_hold_a_request_back(tiny_model_dir: Path) -> None:
    import queue

    from learnloop.evaluation.backend import default_backend

    b = LocalBackend(tiny_model_dir, device="cpu", max_batch_size=1, background_slots=1)
    try:
        shared = default_backend(str(tiny_model_dir))  # what an evaluation in this process gets
        assert shared.base_path == b.base_path and shared.list() == b.list()
        events: queue.SimpleQueue = queue.SimpleQueue()

        def rows(name: str, max_tokens: int, background: bool) -> list:  # noqa: ANN202
            req = ChatRequest(messages=PROMPTS[0], max_tokens=max_tokens, temperature=0)
            return b._sequences(
                "base", req, lambda i: lambda ev: events.put((name, ev)), background=background
            )

        # hold the worker between two steps while two background rows and one request arrive
        inside, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=b.engine.call, args=(lambda: (inside.set(), release.wait(60)),))
        holder.start()
        assert inside.wait(60)
        b.engine.submit(rows("eval-1", 50, True) + rows("eval-2", 50, True))
        b.engine.submit(rows("request", 2, False))
        release.set()
        holder.join(60)
        seen = []
        while not seen or seen[-1] != "request":
            name, ev = events.get(timeout=60)
            if ev.finish is not None:
                seen.append(name)
        # the request was answered beside the first background row, before the second one started:
        # background rows queue for their own slot, never for the request's (the first one needs at
        # least five steps: base greedy on this prompt runs to a length of 5, test above)
        assert "eval-2" not in seen
        shared.close()  # the view closes; the server's backend keeps answering
        assert _greedy(b, "base", PROMPTS[2], 3)
    finally:
        b.close()
