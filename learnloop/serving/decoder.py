"""A decode-shaped forward for Llama-family models on the CPU: what the batch engine runs per step.

transformers' forward is written for any batch of equal-length rows; a serving step is different
(each row at its own position, one new token per row, several LoRA adapters in one batch), and
on a CPU three things made it cost 2-4x the weights' read time (measured in
``benchmarks/bench_serving.py``):

- its matmuls (MKL ``sgemm``) repack every weight on every call when a few rows multiply it;
  oneDNN's ``_linear_pointwise`` over a weight reordered once does not;
- its ``DynamicCache`` grows by concatenation, copying every row's keys and values each step;
  here each row owns a slot of a preallocated cache and a step writes one column per row;
- peft's LoRA adds three modules per linear layer; here the adapters of a layer's fused
  projections are two small matmuls per adapter in the batch.

The model's own embedding, rotary embedding and activation are called as they are; its RMSNorm
weights go through torch's fused ``rms_norm`` (the same formula); the projections are fused
(q|k|v, gate|up) and reordered. ``BatchEngine`` checks the decoder against transformers' forward
before serving with it. Models this does not cover (``supports``) are served by transformers'
forward, and so is everything off the CPU: a GPU gets transformers' forward, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

_LLAMA_TYPES = {"llama"}  # same module layout as LlamaForCausalLM: checked in supports()


def supports(model: Any) -> str | None:
    """None when this forward can serve ``model``; else why not (logged, and the engine uses
    transformers' forward)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _LLAMA_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not Llama-shaped"
    device = next(model.parameters()).device
    if device.type != "cpu":
        return f"the decoder is for the CPU; the model is on {device.type}"
    if hasattr(model, "peft_config"):
        return "the model already carries peft adapters"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "biased projections"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if not torch.backends.mkldnn.is_available():
        return "oneDNN is not available in this torch build"
    return None


class PackedLinear:
    """``x @ W.T`` for W the model's weights ``parts`` stacked, reordered once into oneDNN's layout.

    Only the reordered copy is new memory: the plain W is rebuilt from the parts when a merge needs it.
    ``reorder=False`` keeps W plain and multiplies with ``F.linear`` (for measuring what reordering buys).
    """

    def __init__(self, parts: list[torch.Tensor], rows_hint: int, *, reorder: bool = True) -> None:
        self.parts = [p.detach() for p in parts]
        self.rows_hint = rows_hint
        self.reorder = reorder
        self.packed = self._pack(self.plain())

    def plain(self) -> torch.Tensor:
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.reorder:
            return weight.contiguous()
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), self.rows_hint)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reorder:
            return F.linear(x, self.packed)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def serve(self, delta: torch.Tensor | None) -> None:
        """Serve W + ``delta`` (an adapter folded in), or W itself when ``delta`` is None."""
        self.packed = self._pack(self.plain() if delta is None else self.plain() + delta)


@dataclass
class LoraPair:
    """One adapter on one fused projection: ``delta = (x @ a.T) @ b.T``, the scale folded into b."""

    a: torch.Tensor  # (rank over the fused parts, in)
    b: torch.Tensor  # (out of the fused projection, rank over the fused parts): block diagonal

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.T) @ self.b.T

    def weight(self) -> torch.Tensor:
        return self.b @ self.a


# Which of peft's target names make up each fused projection, in the order their outputs are stacked.
_FUSED = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "o": ("self_attn", ("o_proj",)),
    "gate_up": ("mlp", ("gate_proj", "up_proj")),
    "down": ("mlp", ("down_proj",)),
}


class AdapterUnsupported(ValueError):
    """An adapter this decoder cannot apply exactly (DoRA, per-module ranks, other targets...)."""


def read_lora(path: Path | str, model: Any, dtype: torch.dtype) -> list[dict[str, LoraPair]]:
    """The LoRA at ``path`` as, per layer, one ``LoraPair`` per fused projection it touches.

    Raises AdapterUnsupported for anything but plain LoRA on the decoder layers' linear projections.
    """
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    cfg = PeftConfig.from_pretrained(str(path))
    if getattr(cfg, "peft_type", None) is None or str(cfg.peft_type).split(".")[-1] != "LORA":
        raise AdapterUnsupported(f"{cfg.peft_type} is not LoRA")
    for flag in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layer_replication"):
        if getattr(cfg, flag, None):
            raise AdapterUnsupported(f"{flag} is set")
    if getattr(cfg, "bias", "none") != "none":
        raise AdapterUnsupported("the adapter trains biases")
    scale = cfg.lora_alpha / (cfg.r**0.5 if getattr(cfg, "use_rslora", False) else cfg.r)
    weights = load_peft_weights(str(path), device="cpu")
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        # base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
        parts = key.split(".")
        try:
            at = parts.index("layers")
            layer, group, proj, kind = int(parts[at + 1]), parts[at + 2], parts[at + 3], parts[at + 4]
        except (ValueError, IndexError):
            raise AdapterUnsupported(f"weight {key} is not on a decoder layer's projection") from None
        if kind not in ("lora_A", "lora_B") or parts[-1] != "weight":
            raise AdapterUnsupported(f"weight {key} is not a LoRA matrix")
        found.setdefault((layer, f"{group}.{proj}"), {})[kind] = value
    layers: list[dict[str, LoraPair]] = [{} for _ in model.model.layers]
    for li, layer in enumerate(model.model.layers):
        for fused, (group, projs) in _FUSED.items():
            mods = [getattr(getattr(layer, group), p) for p in projs]
            pairs = [found.pop((li, f"{group}.{p}"), None) for p in projs]
            if not any(pairs):
                continue
            if any(pair is not None and set(pair) != {"lora_A", "lora_B"} for pair in pairs):
                raise AdapterUnsupported(f"layer {li} {fused}: lora_A or lora_B is missing")
            # the parts' A matrices stacked; B block-diagonal, so each part's delta lands on its outputs
            a = torch.cat([pair["lora_A"] for pair in pairs if pair is not None])
            b = torch.zeros(sum(m.out_features for m in mods), a.shape[0])
            row = col = 0
            for mod, pair in zip(mods, pairs):
                if pair is not None:
                    r = pair["lora_A"].shape[0]
                    b[row : row + mod.out_features, col : col + r] = pair["lora_B"] * scale
                    col += r
                row += mod.out_features
            layers[li][fused] = LoraPair(a.to(dtype).contiguous(), b.to(dtype).contiguous())
    if found:
        raise AdapterUnsupported(f"weights on modules the decoder does not fuse: {sorted(found)[:3]}")
    return layers


class SlotCache:
    """Keys and values of every layer, one slot (row) per sequence, grown by doubling its length."""

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        self.shape = (layers, slots, kv_heads, head_dim)
        self.dtype = dtype
        self.length = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.reserve(128)

    def reserve(self, length: int) -> None:
        if length <= self.length:
            return
        new = max(length, 2 * self.length)
        layers, slots, kv_heads, head_dim = self.shape
        for store in (self.k, self.v):
            for i in range(layers):
                grown = torch.zeros(slots, kv_heads, new, head_dim, dtype=self.dtype)
                if store and i < len(store):
                    grown[:, :, : self.length] = store[i]
                    store[i] = grown
                else:
                    store.append(grown)
        self.length = new

    def move(self, src: int, dst: int, length: int) -> None:
        for store in (self.k, self.v):
            for t in store:
                t[dst, :, :length] = t[src, :, :length]


class LlamaDecoder:
    """Prefill and decode steps over slots of a ``SlotCache``, with LoRA adapters per row."""

    def __init__(self, model: Any, *, slots: int, reorder: bool = True) -> None:
        self.model = model
        cfg = model.config
        self.dtype = next(model.parameters()).dtype
        inner = model.model
        self.embed = inner.embed_tokens
        self.norm = _rms_norm(inner.norm)
        self.rotary = inner.rotary_emb
        self.n_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        hint = max(1, slots)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                {
                    "norm1": _rms_norm(layer.input_layernorm),
                    "norm2": _rms_norm(layer.post_attention_layernorm),
                    "act": mlp.act_fn,
                    "qkv": PackedLinear(
                        [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], hint, reorder=reorder
                    ),
                    "o": PackedLinear([attn.o_proj.weight], hint, reorder=reorder),
                    "gate_up": PackedLinear(
                        [mlp.gate_proj.weight, mlp.up_proj.weight], hint, reorder=reorder
                    ),
                    "down": PackedLinear([mlp.down_proj.weight], hint, reorder=reorder),
                }
            )
        self.lm_head = PackedLinear([model.lm_head.weight], hint, reorder=reorder)
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.inter = inner.layers[0].mlp.gate_proj.out_features if inner.layers else 0
        self.cache = SlotCache(len(self.layers), slots, self.kv_heads, self.head_dim, self.dtype)
        self.adapters: dict[str, list[dict[str, LoraPair]]] = {}
        self.merged: str | None = None  # the adapter folded into the packed weights, if any
        self.merges = 0  # how many times an adapter was folded in (and so taken out again after)

    # -- adapters -----------------------------------------------------------------------------

    def add_adapter(self, name: str, path: Path | str) -> None:
        self.adapters[name] = read_lora(path, self.model, self.dtype)

    def remove_adapter(self, name: str) -> None:
        if self.merged == name:
            self.merge(None)
        del self.adapters[name]

    def merge(self, name: str | None) -> None:
        """Fold adapter ``name`` into the packed weights (None: back to the base weights)."""
        if name == self.merged:
            return
        for li, layer in enumerate(self.layers):
            for fused in _FUSED:
                lin: PackedLinear = layer[fused]
                pair = self.adapters[name][li].get(fused) if name is not None else None
                if pair is not None:
                    lin.serve(pair.weight())
                elif self.merged is not None and self.adapters[self.merged][li].get(fused) is not None:
                    lin.serve(None)
        self.merged = name
        self.merges += name is not None

    # -- steps ----------------------------------------------------------------------------------

    def _project(
        self, li: int, fused: str, x: torch.Tensor, groups: list[tuple[str | None, torch.Tensor | None]]
    ) -> torch.Tensor:
        y = self.layers[li][fused](x)
        for name, rows in groups:
            if name is None or name == self.merged:  # the base, or already in the weights
                continue
            pair = self.adapters[name][li].get(fused)
            if pair is None:
                continue
            if rows is None:
                y += pair(x)
            else:
                y.index_add_(0, rows, pair(x[rows]))
        return y

    def _layers(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        groups: list[tuple[str | None, torch.Tensor | None]],
        attend: Any,
    ) -> torch.Tensor:
        n = x.shape[0]
        for li, layer in enumerate(self.layers):
            h = layer["norm1"](x)
            qkv = self._project(li, "qkv", h, groups)
            # queries and keys rotated together: one set of elementwise ops instead of two
            qk = qkv[:, : self.q_size + self.kv_size].view(n, self.n_heads + self.kv_heads, self.head_dim)
            qk = qk * cos + _rotate_half(qk) * sin
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(n, self.kv_heads, self.head_dim)
            out = attend(li, q, k, v).reshape(n, self.q_size)
            x = x + self._project(li, "o", out, groups)
            h = layer["norm2"](x)
            gu = self._project(li, "gate_up", h, groups)
            h = layer["act"](gu[:, : self.inter]) * gu[:, self.inter :]
            x = x + self._project(li, "down", h, groups)
        return x

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(x, positions[None])
        return cos[0, :, None, :], sin[0, :, None, :]  # (tokens, 1, head_dim): broadcast over heads

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        adapters: list[str | None],
        prompts: Sequence[list[int]] = (),
        prompt_adapters: Sequence[str | None] = (),
    ) -> torch.Tensor:
        """One forward pass for the rows in slots 0..n-1 (one token each, at ``positions``: their lengths
        so far) and, in the same pass, the ``prompts`` of new rows, into slots n, n+1, ...: the weights
        are read once for both. Returns the next-token logits of every row (decode rows first)."""
        n = len(tokens)
        lengths = [len(p) for p in prompts]
        starts = [n]
        for length in lengths:
            starts.append(starts[-1] + length)
        width = int(positions.max()) + 1 if n else 0
        self.cache.reserve(max([width, *(length + 1 for length in lengths)]))
        ids = torch.cat([tokens, torch.tensor([t for p in prompts for t in p], dtype=torch.long)])
        all_positions = torch.cat([positions, *(torch.arange(length) for length in lengths)])
        by_name: dict[str | None, list[torch.Tensor]] = {}
        for i, name in enumerate(adapters):
            by_name.setdefault(name, []).append(torch.tensor([i]))
        for name, a, b in zip(prompt_adapters, starts, starts[1:]):
            by_name.setdefault(name, []).append(torch.arange(a, b))
        groups = _groups({k: torch.cat(v) for k, v in by_name.items()}, len(ids))
        x = self.embed(ids)
        cos, sin = self._rope(x, all_positions)
        rep = self.n_heads // self.kv_heads
        rows = torch.arange(n)
        # a decode row sees its own columns only: the rest of its slot is another length's leftovers
        mask = (torch.arange(width)[None, :] <= positions[:, None])[:, None, None, :]

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self.cache.k[li], self.cache.v[li]
            out = torch.empty_like(q)
            if n:
                keys[rows, :, positions] = k[:n]
                values[rows, :, positions] = v[:n]
                # grouped-query attention as one call: a key head's query heads stand in as its query rows
                o = F.scaled_dot_product_attention(
                    q[:n].reshape(n, self.kv_heads, rep, self.head_dim),
                    keys[:n, :, :width],
                    values[:n, :, :width],
                    attn_mask=mask,
                    scale=self.scale,
                )
                out[:n] = o.reshape(n, self.n_heads, self.head_dim)
            for slot, a, b in zip(range(n, n + len(lengths)), starts, starts[1:]):
                keys[slot, :, : b - a] = k[a:b].transpose(0, 1)
                values[slot, :, : b - a] = v[a:b].transpose(0, 1)
                kk = k[a:b].transpose(0, 1).repeat_interleave(rep, 0)
                vv = v[a:b].transpose(0, 1).repeat_interleave(rep, 0)
                o = F.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1), kk, vv, is_causal=True, scale=self.scale
                )
                out[a:b] = o.transpose(0, 1)
            return out

        x = self._layers(x, cos, sin, groups, attend)
        last = torch.cat([rows, torch.tensor(starts[1:], dtype=torch.long) - 1])
        return self.lm_head(self.norm(x[last]))

    def prefill(self, prompts: list[list[int]], adapters: list[str | None]) -> torch.Tensor:
        """New rows alone, into slots 0, 1, ...: their next-token logits."""
        empty = torch.zeros(0, dtype=torch.long)
        return self.step(empty, empty, [], prompts, adapters)

    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, adapters: list[str | None]
    ) -> torch.Tensor:
        """One token for each of the rows in slots 0..len(tokens)-1: their next-token logits."""
        return self.step(tokens, positions, adapters)


def _groups(
    by_name: dict[str | None, torch.Tensor], rows: int
) -> list[tuple[str | None, torch.Tensor | None]]:
    """(adapter, row indices) per adapter in the step; indices None when one adapter has every row."""
    if len(by_name) == 1:
        return [(next(iter(by_name)), None)]
    return list(by_name.items())


def _rms_norm(module: Any) -> Any:
    """The model's RMSNorm as torch's fused ``rms_norm`` (the same formula in one kernel, not seven)."""
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if weight is None or eps is None:
        return module
    shape = tuple(weight.shape)
    return lambda x: F.rms_norm(x, shape, weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
