"""The registry: model versions with lineage, immutable adapter files, promote/rollback/restore, export.

Public surface::

    register_version(db, settings, adapter_dir=..., base_model=...) -> "v0003"
    promote(db, settings, "v0003", actor=..., reason=..., evaluation_id=...)   # gate verdict or force
    check_servable(session, "v0003", force=False)                              # the gate, for any alias move
    rollback(db, settings) -> "v0002" | None                                   # None: the base model
    restore(db, settings, "v0001", loop=None, serve=False)                     # head for the next training
    get_version(db, id) / list_versions(db) / delete_version(db, settings, id, force=False)
    lineage(db, id) / trace_trajectory(db, trajectory_id) / diff_versions(db, a, b)
    export_version(db, settings, id, fmt="merged"|"gguf"|"ollama", out=None)
"""

from learnloop.registry.lineage import diff_versions, lineage, trace_trajectory
from learnloop.registry.promotion import (
    Restored,
    check_servable,
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
    get_version,
    list_versions,
    register_version,
)


def export_version(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - re-exported lazily: export needs torch
    from learnloop.registry.export import export_version as _export

    return _export(*args, **kwargs)


__all__ = [
    "Restored",
    "VersionInfo",
    "apply_retention",
    "check_servable",
    "delete_version",
    "diff_versions",
    "export_version",
    "get_version",
    "head_version",
    "lineage",
    "list_versions",
    "local_actor",
    "promote",
    "register_version",
    "restore",
    "rollback",
    "serving_stack",
    "trace_trajectory",
]
