"""Lineage and differences: from a served answer back to the data that trained its model.

The chain: trajectory (``model_version``) -> version -> dataset (sha256, the filters that chose
its capture window) -> training config -> base model (spec + sha256 revision) -> adapter
(sha256) -> evaluations (verdicts) -> promotions (alias log: who, when, why) -> parent version.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from learnloop.errors import NotFound
from learnloop.registry.aliases import alias_log
from learnloop.registry.versions import version_info
from learnloop.store.db import Database
from learnloop.store.models import Dataset, Evaluation, Job, ModelVersion, Trajectory


def _evaluation_summary(ev: Evaluation) -> dict[str, Any]:
    overall = (ev.metrics or {}).get("overall", {})
    return {
        "id": ev.id,
        "baseline": ev.baseline_id,
        "scenario": ev.scenario,
        "verdict": ev.verdict,
        "n": overall.get("n"),
        "reward_candidate": overall.get("reward_candidate"),
        "reward_baseline": overall.get("reward_baseline"),
        "reward_diff": overall.get("reward_diff"),
        "reward_diff_ci": overall.get("reward_diff_ci"),
        "reasons": (ev.gate or {}).get("reasons", []),
        "created_at": ev.created_at.isoformat(),
    }


def lineage(db: Database, version_id: str, *, depth: int = 20) -> dict[str, Any]:
    """The whole chain for ``version_id`` and, under ``parent``, for the versions it continued."""
    with db.read_session() as session:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise NotFound(f"No model version {version_id!r}.")
        info = version_info(row)
        dataset = session.get(Dataset, row.dataset_id) if row.dataset_id else None
        job = session.get(Job, row.job_id) if row.job_id else None
        evaluations = list(
            session.scalars(
                select(Evaluation).where(Evaluation.candidate_id == version_id).order_by(Evaluation.id)
            )
        )
        moves = alias_log(session, version=version_id, limit=10_000, oldest_first=True)
        config = row.config or {}
        chain: dict[str, Any] = {
            "version": {
                "id": row.id,
                "name": row.name,
                "state": info.state,
                "loop": row.loop,
                "created_at": row.created_at.isoformat(),
                "note": row.note,
            },
            "dataset": {
                "id": row.dataset_id,
                "sha256": row.dataset_hash,
                "kind": dataset.kind if dataset else None,
                "filters": dataset.filters
                if dataset
                else None,  # the capture window: since/until/window_id/scenario
                "count": (dataset.stats or {}).get("count") if dataset else None,
                "path": dataset.path if dataset else config.get("dataset"),
            },
            "training": {
                "algorithm": row.algorithm,
                "job_id": row.job_id,
                "job_state": getattr(job.state, "value", None) if job else None,
                "config": config,
                "metrics": row.metrics or {},
            },
            "base_model": {"spec": row.base_model, "sha256": row.base_model_hash},
            "adapter": {"sha256": row.adapter_sha256, "files": row.files or {}, "path": row.artifact_path},
            "evaluations": [_evaluation_summary(e) for e in evaluations],
            "gate": row.gate or {},
            "promotions": moves,
            "parent": None,
        }
        parent_id = row.parent_id
    if parent_id and depth > 0:
        try:
            chain["parent"] = lineage(db, parent_id, depth=depth - 1)
        except NotFound:
            chain["parent"] = {"version": {"id": parent_id, "state": "deleted"}}
    return chain


def trace_trajectory(db: Database, trajectory_id: str) -> dict[str, Any]:
    """From one served answer to its model's lineage."""
    with db.read_session() as session:
        t = session.get(Trajectory, trajectory_id)
        if t is None:
            raise NotFound(f"No trajectory {trajectory_id!r}.")
        answer = {
            "id": t.id,
            "source": getattr(t.source, "value", t.source),
            "model": t.model,
            "model_version": t.model_version,
            "created_at": t.created_at.isoformat(),
        }
    if not t.model_version or t.model_version == "base":
        return {
            "trajectory": answer,
            "lineage": None,
            "note": "answered by the base model"
            if t.model_version
            else "the trajectory does not name the version that produced it",
        }
    return {"trajectory": answer, "lineage": lineage(db, t.model_version)}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _changes(a: Any, b: Any) -> dict[str, list[Any]]:
    fa, fb = _flatten(a or {}), _flatten(b or {})
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def diff_versions(db: Database, a: str, b: str) -> dict[str, Any]:
    """What differs between two versions: config, dataset, metrics, base, adapter, latest evaluation."""
    with db.read_session() as session:
        rows = {}
        for vid in (a, b):
            row = session.get(ModelVersion, vid)
            if row is None:
                raise NotFound(f"No model version {vid!r}.")
            ev = session.scalars(
                select(Evaluation).where(Evaluation.candidate_id == vid).order_by(Evaluation.id.desc())
            ).first()
            rows[vid] = (row, _evaluation_summary(ev) if ev else None)
    (ra, ea), (rb, eb) = rows[a], rows[b]
    fields = (
        "state",
        "base_model",
        "base_model_hash",
        "parent_id",
        "loop",
        "algorithm",
        "dataset_id",
        "dataset_hash",
        "adapter_sha256",
        "job_id",
    )
    return {
        "a": a,
        "b": b,
        "fields": {
            f: [
                str(getattr(ra, f).value) if hasattr(getattr(ra, f), "value") else getattr(ra, f),
                str(getattr(rb, f).value) if hasattr(getattr(rb, f), "value") else getattr(rb, f),
            ]
            for f in fields
            if getattr(ra, f) != getattr(rb, f)
        },
        "config": _changes(ra.config, rb.config),
        "metrics": _changes(
            {k: v for k, v in (ra.metrics or {}).items() if k != "eval_curve"},
            {k: v for k, v in (rb.metrics or {}).items() if k != "eval_curve"},
        ),
        "gate": _changes(
            {k: v for k, v in (ra.gate or {}).items() if k != "policy"},
            {k: v for k, v in (rb.gate or {}).items() if k != "policy"},
        ),
        "evaluation": [ea, eb],
        "same_base": ra.base_model_hash == rb.base_model_hash,
        "same_dataset": ra.dataset_hash == rb.dataset_hash and ra.dataset_hash is not None,
    }
