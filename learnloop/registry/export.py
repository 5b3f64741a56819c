"""Exporting a version: merged safetensors, a GGUF file (llama architecture), an Ollama Modelfile.

The GGUF is written with the ``gguf`` package (llama.cpp's own writer library): tensor names from
its llama name map, q/k rows permuted into llama.cpp's rotary layout, the byte-level BPE vocabulary
with merges and special tokens, the chat template. Tested by loading the file back with
transformers and comparing greedy answers with the merged model.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learnloop.config import Settings
from learnloop.errors import ConfigError, Conflict, ValidationFailed
from learnloop.paths import data_dir
from learnloop.registry import files as fs
from learnloop.store.db import Database
from learnloop.store.models import ModelVersion

FORMATS = ("merged", "gguf", "ollama")
QUANTS = ("f32", "f16", "q8_0")
GGUF_ARCHITECTURES = ("llama",)  # model_type values this writer maps


@dataclass
class ExportResult:
    version_id: str
    format: str
    path: Path
    files: list[str] = field(default_factory=list)
    ollama_name: str | None = None
    ollama_command: str | None = None
    ollama_created: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "format": self.format,
            "path": str(self.path),
            "files": self.files,
            "ollama_name": self.ollama_name,
            "ollama_command": self.ollama_command,
            "ollama_created": self.ollama_created,
        }


# A name of a folder under <data dir>/exports/, as an export over HTTP gives it (never a path).
EXPORT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# What `ollama create` takes as a model name; never starting with '-', which it would read as an option.
OLLAMA_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$"


def named_export_dir(settings: Settings, name: str) -> Path:
    """``<data dir>/exports/<name>``: where an export requested over HTTP goes. ``name`` is one
    folder name (no separators, no ``..``); a link there pointing out of the folder is refused."""
    if not re.fullmatch(EXPORT_NAME, name):
        raise ValidationFailed(
            f"Invalid export name {name[:80]!r}: over HTTP an export goes to a folder under the data "
            "dir's exports/ named by letters, digits, '.', '_' and '-' (not a path); "
            "`learnloop versions export --out` writes anywhere.",
            [("out", "must be a folder name, not a path")],
        )
    root = data_dir(settings.data_dir).exports
    target = root / name
    if not target.resolve().is_relative_to(root.resolve()):
        raise Conflict(
            f"exports/{name} is a link out of the exports folder; remove it or choose another name."
        )
    return target


def export_version(
    db: Database,
    settings: Settings,
    version_id: str,
    *,
    fmt: str = "merged",
    out: str | Path | None = None,
    quant: str = "q8_0",
    ollama_name: str | None = None,
    run_ollama: bool = True,
) -> ExportResult:
    """Write ``version_id`` as ``fmt`` into ``out`` (default ``<data dir>/exports/<id>-<fmt>``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if quant not in QUANTS:
        raise ConfigError(f"Unknown GGUF type {quant!r}; choose one of {', '.join(QUANTS)}.")
    from learnloop.models.loading import merge_adapter
    from learnloop.models.prepared import resolve_base_model

    with db.read_session() as session:
        row = session.get(ModelVersion, version_id)
    if row is None:
        from learnloop.errors import NotFound

        raise NotFound(f"No model version {version_id!r}.")
    if not row.artifact_path:
        raise Conflict(f"{version_id}'s adapter files were pruned; it cannot be exported.")
    problems = fs.verify(Path(row.artifact_path), row.files or {})
    if problems:
        raise Conflict(f"{version_id}'s files do not match their recorded hashes: {'; '.join(problems[:3])}.")
    base_path = resolve_base_model(row.base_model, settings.data_dir)
    if fmt != "merged":
        check_gguf_architecture(base_path)
    target = Path(out) if out else data_dir(settings.data_dir).exports / f"{version_id}-{fmt}"
    target.mkdir(parents=True, exist_ok=True)

    if fmt == "merged":
        merge_adapter(base_path, row.artifact_path, target, dtype="float32")
        return ExportResult(version_id, fmt, target, sorted(p.name for p in target.iterdir()))

    merged = target / ".merged"
    try:
        merge_adapter(base_path, row.artifact_path, merged, dtype="float32")
        gguf_path = target / f"{version_id}-{quant}.gguf"
        write_gguf(merged, gguf_path, quant=quant, name=f"learnloop {version_id}", pre=_source_pre(base_path))
        result = ExportResult(version_id, fmt, target, [gguf_path.name])
        if fmt == "ollama":
            name = ollama_name or f"learnloop-{version_id}"
            modelfile = target / "Modelfile"
            modelfile.write_text(ollama_modelfile(gguf_path.name, _chat_template(merged)))
            result.files.append(modelfile.name)
            result.ollama_name = name
            result.ollama_command = f"ollama create {shlex.quote(name)} -f {shlex.quote(str(modelfile))}"
            if run_ollama and shutil.which("ollama"):
                proc = subprocess.run(
                    ["ollama", "create", name, "-f", str(modelfile)],
                    cwd=target,
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    raise ConfigError(
                        f"`{result.ollama_command}` failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
                    )
                result.ollama_created = True
        return result
    finally:
        shutil.rmtree(merged, ignore_errors=True)


def check_gguf_architecture(model_dir: Path) -> str:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in GGUF_ARCHITECTURES:
        raise ConfigError(
            f"GGUF export supports the {', '.join(GGUF_ARCHITECTURES)} architecture (SmolLM2, "
            f"Llama 2/3 and their kin); this base model is {model_type!r}. "
            "Export it with --format merged and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    return model_type


def _source_pre(base_path: Path) -> str:
    """llama.cpp's pre-tokenizer name: the one of the GGUF the base was prepared from, else GPT-2's."""
    from learnloop.models.prepared import MARKER

    try:
        source = json.loads((base_path / MARKER).read_text()).get("source")
    except (OSError, ValueError):
        source = None
    if source and Path(source).is_file():
        import gguf

        reader = gguf.GGUFReader(source)
        field_ = reader.fields.get("tokenizer.ggml.pre")
        if field_ is not None:
            return bytes(field_.parts[field_.data[0]]).decode()
    return "gpt-2"


def _chat_template(model_dir: Path) -> str | None:
    from learnloop.models.loading import load_tokenizer

    return getattr(load_tokenizer(model_dir), "chat_template", None)


def _permute(weights: Any, n_head: int, n_head_kv: int) -> Any:
    """HF's q/k row order -> llama.cpp's (the inverse of what transformers undoes when it loads a GGUF)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(
    model_dir: Path, out: Path, *, quant: str = "q8_0", name: str = "learnloop", pre: str = "gpt-2"
) -> Path:
    """Write the llama-architecture HF folder ``model_dir`` as one GGUF file of type ``quant``."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from learnloop.models.loading import load_tokenizer

    config = json.loads((model_dir / "config.json").read_text())
    check_gguf_architecture(model_dir)
    n_head, n_kv = (
        config["num_attention_heads"],
        config.get("num_key_value_heads") or config["num_attention_heads"],
    )
    n_layers = config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") not in ("default", None) or config.get("rope_scaling"):
        raise ConfigError(
            "GGUF export does not write rope scaling "
            f"({rope.get('rope_type') or config.get('rope_scaling')}) yet."
        )
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]

    tokenizer = load_tokenizer(model_dir)
    vocab = tokenizer.get_vocab()
    n_vocab = config["vocab_size"]
    by_id = {i: t for t, i in vocab.items()}
    special = set(tokenizer.all_special_tokens)
    added = {t for t in tokenizer.get_added_vocab()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(tok)
            types.append(
                gguf.TokenType.CONTROL
                if tok in special
                else gguf.TokenType.USER_DEFINED
                if tok in added
                else gguf.TokenType.NORMAL
            )

    tmp = out.with_name(f".{out.name}.tmp")
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    sv.chat_template = (
        None  # written below from the tokenizer (transformers 5 keeps it in chat_template.jinja)
    )
    sv.add_to_gguf(w, quiet=True)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tensors: dict[str, Any] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    for hf_name, data in tensors.items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConfigError(f"GGUF export cannot map tensor {hf_name!r} of this llama model.")
        data = data.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        if data.ndim == 1 or quant == "f32":
            w.add_tensor(new_name, data)  # norms stay f32 in every type, as llama.cpp keeps them
        elif (
            quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0
        ):
            w.add_tensor(
                new_name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            w.add_tensor(new_name, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return out


_CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
_LLAMA3 = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""
TEMPLATES = {
    "chatml": (_CHATML, ["<|im_start|>", "<|im_end|>"]),
    "llama3": (_LLAMA3, ["<|eot_id|>", "<|start_header_id|>"]),
}


def ollama_modelfile(gguf_name: str, chat_template: str | None) -> str:
    """A Modelfile: FROM the GGUF, TEMPLATE (Go syntax) for the model's chat format, its stop tokens."""
    if not chat_template:
        raise ConfigError("The model has no chat template; an Ollama Modelfile needs one.")
    if "<|im_start|>" in chat_template:
        kind = "chatml"
    elif "<|start_header_id|>" in chat_template:
        kind = "llama3"
    else:
        raise ConfigError(
            f"Ollama export knows the {' and '.join(TEMPLATES)} chat formats; "
            "this model's template is neither."
        )
    template, stops = TEMPLATES[kind]
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
