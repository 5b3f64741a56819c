"""The backend evaluation generates through: serving's LocalBackend, the one serving answers with.

Until serving's ``LocalBackend`` is on this branch, ``_MinimalLocalBackend`` stands in behind the
same ``ServingBackend`` protocol (greedy generation with transformers + peft); it goes once
serving lands, so there is one implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from learnloop.serving.backend import BASE, ChatRequest, ChatResult, ServingBackend


def default_backend(base_model: str | Path, *, device: str = "auto", data_dir: Path | None = None) -> ServingBackend:
    from learnloop.models.prepared import resolve_base_model

    base_path = resolve_base_model(str(base_model), data_dir)
    try:
        from learnloop.serving import LocalBackend  # type: ignore[attr-defined]
    except ImportError:
        return _MinimalLocalBackend(base_path, device=device)
    return LocalBackend(base_path, device=device)


class _MinimalLocalBackend:
    def __init__(self, base_model: Path, *, device: str = "auto", dtype: str = "auto") -> None:
        from learnloop.models.loading import load_base, load_tokenizer, pick_device, pick_dtype

        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(base_model)
        self.model: Any = load_base(base_model, self.device, pick_dtype(dtype, self.device))
        self.model.eval()
        self.adapters: set[str] = set()

    def load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self.adapters:
            return
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).to(self.device)
        else:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.eval()
        self.adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        if name in self.adapters:
            self.model.delete_adapter(name)
            self.adapters.discard(name)

    def list(self) -> list[str]:
        return [BASE, *sorted(self.adapters)]

    def chat(self, model: str, request: ChatRequest) -> list[ChatResult]:
        import contextlib

        import torch

        if model != BASE and model not in self.adapters:
            raise KeyError(f"model {model!r} is not loaded")
        ids = self.tokenizer.apply_chat_template(request.messages, tools=request.tools, add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        input_ids = ids["input_ids"].to(self.device)
        if model == BASE and self.adapters:
            ctx = self.model.disable_adapter()
        else:
            ctx = contextlib.nullcontext()
            if self.adapters:
                self.model.set_adapter(model)
        greedy = request.temperature <= 0
        with ctx, torch.no_grad():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            out = self.model.generate(
                input_ids=input_ids, attention_mask=ids["attention_mask"].to(self.device),
                max_new_tokens=request.max_tokens or 256, do_sample=not greedy,
                temperature=None if greedy else request.temperature, top_p=None if greedy else request.top_p,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[0, input_ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        finish = "stop" if len(new) and int(new[-1]) == eos else "length"
        return [ChatResult(text=text, finish_reason=finish, prompt_tokens=int(input_ids.shape[1]), completion_tokens=int(len(new)))]

    def stream(self, model: str, request: ChatRequest) -> Iterator[str]:
        yield from (r.text for r in self.chat(model, request))
