"""The layering of docs/ARCHITECTURE.md, checked by reading every module's imports.

Stages import only downward (``LAYERS``: a unit may import units of lower layers, never its own
layer's others nor higher ones), never what the stage table says they must not know
(``MUST_NOT``), and ``api`` and ``cli`` import a stage only through its public surface: the
package itself, or a module ``PUBLIC`` names. Imports under ``if TYPE_CHECKING`` count: knowing a
type is knowing the stage.

The rules are data: a change that moves a stage, opens a module to the HTTP layer or fixes a known
violation edits these tables (and the architecture page) in the same commit. Every violation is
reported at once.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "learnloop"

# Lowest first. The first two layers are no stage: what every stage shares.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "ids", "jsonio", "paths", "durable", "windows", "importing", "masking", "children"),
    ("config",),
    ("config_example",),  # the example file, written from config's fields
    ("store", "models"),
    ("capture", "scoring"),
    ("training", "registry"),  # training's rollouts score with scoring's rewards, rule and judge
    ("datasets", "serving"),
    ("evaluation",),
    ("daemon",),
    ("watch", "demo"),
    ("api",),
    ("cli",),
    ("__main__",),
]
# learnloop/__init__.py is the capture SDK's front door (learnloop.configure, learnloop.feedback).
ROOT_UNIT = "capture"

# The stage table's "must not know about", where the layers alone would allow it.
MUST_NOT: dict[str, set[str]] = {
    "capture": {"training", "models"},
    "scoring": {"training"},
    "training": {"store"},  # it takes datasets and a config, returns artifacts and metrics
    "evaluation": {"training"},
    "serving": {"training"},
    "models": {"store"},
}

# Modules of a stage that api and cli may import besides the package itself: its public surface.
PUBLIC: dict[str, set[str]] = {
    "store": {"db", "models", "records", "trajectories", "aliases", "jsonl", "inbox"},
    "capture": {"client", "spool", "otlp", "formats"},  # otlp, formats: the mappings api/cli decode into
    "scoring": {"judge"},
    "datasets": {"catalog", "filters", "guardrails", "windows"},
    "models": {"loading", "prepared"},
    "training": {"run", "config", "control", "checkpoint", "loop"},
    "registry": {"lineage"},
    "serving": {"backend", "chat_format", "runtime", "setup"},
    "evaluation": set(),
    "daemon": {"queue", "loops", "service", "log"},
    "watch": set(),
    "demo": {"profiles", "runner"},
}
SHELLS = ("api", "cli")

# Violations known today, each with the work that removes it. Remove the line with the fix: the
# test fails on a line that no longer matches anything, so this list only shrinks.
KNOWN: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def module_imports(name: str, source: str, known: set[str], *, package: bool = False) -> set[str]:
    """The learnloop modules ``source`` (module ``name``) imports; ``from pkg import sub`` is ``pkg.sub``."""
    here = name if package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t == "learnloop" or t.startswith("learnloop."))
    return out


def imports(modules: dict[str, Path]) -> set[tuple[str, str]]:
    """(importer, imported module) for every learnloop import of every module."""
    known = set(modules)
    return {
        (name, target)
        for name, path in modules.items()
        for target in module_imports(name, path.read_text(), known, package=path.name == "__init__.py")
    }


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_UNIT


LAYER_OF = {u: i for i, layer in enumerate(LAYERS) for u in layer}


def violations(edges: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    found = {}
    for importer, imported in sorted(edges):
        a, b = unit(importer), unit(imported)
        if a == b:
            continue
        if a not in LAYER_OF or b not in LAYER_OF:
            found[(importer, imported)] = f"{a if a not in LAYER_OF else b!r} is in no layer of LAYERS"
        elif LAYER_OF[b] > LAYER_OF[a]:
            found[(importer, imported)] = f"{a} imports {b}, a higher layer"
        elif LAYER_OF[b] == LAYER_OF[a]:
            found[(importer, imported)] = f"{a} imports {b}, beside it in the same layer"
        elif b in MUST_NOT.get(a, set()):
            found[(importer, imported)] = f"{a} must not know about {b} (stage table)"
        elif a in SHELLS and b in PUBLIC:
            parts = imported.split(".")
            if len(parts) > 2 and parts[2] not in PUBLIC[b]:
                found[(importer, imported)] = f"{a} reaches past {b}'s public surface"
    return found


def test_every_module_is_in_a_layer() -> None:
    units = {unit(m) for m in _modules()}
    assert units - set(LAYER_OF) == set(), "add the new package or module to LAYERS"


def test_stages_import_only_downward_and_shells_only_public_surfaces() -> None:
    found = violations(imports(_modules()))
    new = [f"{a} -> {b}: {why}" for (a, b), why in found.items() if (a, b) not in KNOWN]
    stale = [f"{a} -> {b} ({why})" for (a, b), why in KNOWN.items() if (a, b) not in found]
    assert new == [], "imports against the layering (docs/ARCHITECTURE.md):\n" + "\n".join(new)
    assert stale == [], "fixed, so remove from KNOWN:\n" + "\n".join(stale)


def test_the_checker_sees_what_it_must() -> None:
    """The rules themselves: an upward import, a sideways one, a forbidden one, a reach past a surface."""
    cases = {
        ("learnloop.store.x", "learnloop.watch.status"): "higher layer",
        ("learnloop.datasets.x", "learnloop.serving.runtime"): "same layer",
        ("learnloop.training.x", "learnloop.store.db"): "must not know",
        ("learnloop.api.routes.x", "learnloop.watch.queries"): "public surface",
        ("learnloop.cli.x", "learnloop.registry.promotion"): "public surface",
    }
    found = violations(set(cases))
    for edge, why in cases.items():
        assert why in found.get(edge, ""), edge
    ok = {("learnloop.api.x", "learnloop.watch"), ("learnloop.cli.x", "learnloop.store.db")}
    assert violations(ok) == {}
    known = {"learnloop.a", "learnloop.a.b", "learnloop.a.c", "learnloop.d"}
    source = "from . import c\nfrom ..d import x\nimport learnloop.a\n"
    source += "if TYPE_CHECKING:\n    from learnloop.d import y\n"
    assert module_imports("learnloop.a.b", source, known) == {"learnloop.a.c", "learnloop.d", "learnloop.a"}
