"""The registry: model versions with lineage, immutable adapter files, promote/rollback/restore, export.

Public surface::

    register_version(db, settings, adapter_dir=..., base_model=...) -> "v0003"
    move(db, settings, "learnloop", "set", "v0003", force=False, actor=..., reason=...)  # every alias move
    move(db, settings, "learnloop", "split", "v0004", share=0.1, shadow=0.0)        # A/B (None ends it)
    promote(db, settings, "v0003", actor=..., reason=..., evaluation_id=...)   # gate verdict or force
    rollback(db, settings) -> "v0002" | None                                   # None: the base model
    restore(db, settings, "v0001", loop=None, serve=False)                     # head for the next training
    alias_history(db, alias=None) -> [log entry dicts]                          # the alias log, newest first
    get_version(db, id) / list_versions(db) / delete_version(db, settings, id, force=False)
    lineage(db, id) / trace_trajectory(db, trajectory_id) / diff_versions(db, a, b)
    export_version(db, settings, id, fmt="merged"|"gguf"|"ollama", out=None)
    named_export_dir(settings, "name") -> <data dir>/exports/name   # where an export over HTTP goes
    find_adapter(path) -> (adapter folder, run folder | None)
"""

from learnloop.registry.aliases import (
    MOVE_KINDS,
    Moved,
    alias_history,
    alias_log,
    log_entry,
    move,
    move_in,
    state_of,
)
from learnloop.registry.export import EXPORT_NAME, OLLAMA_NAME, named_export_dir  # light: no torch here
from learnloop.registry.lineage import diff_versions, lineage, trace_trajectory
from learnloop.registry.promotion import (
    Restored,
    head_version,
    local_actor,
    promote,
    restore,
    rollback,
    serving_stack,
)
from learnloop.registry.versions import (
    VersionInfo,
    apply_retention,
    delete_version,
    find_adapter,
    get_version,
    list_versions,
    register_version,
)


def export_version(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - re-exported lazily: export needs torch
    from learnloop.registry.export import export_version as _export

    return _export(*args, **kwargs)


__all__ = [
    "EXPORT_NAME",
    "MOVE_KINDS",
    "OLLAMA_NAME",
    "Moved",
    "Restored",
    "VersionInfo",
    "alias_history",
    "alias_log",
    "apply_retention",
    "delete_version",
    "diff_versions",
    "export_version",
    "find_adapter",
    "get_version",
    "head_version",
    "lineage",
    "list_versions",
    "local_actor",
    "log_entry",
    "move",
    "move_in",
    "named_export_dir",
    "promote",
    "register_version",
    "restore",
    "rollback",
    "serving_stack",
    "state_of",
    "trace_trajectory",
]
