"""Building a dataset end to end: stream, check, dedup, measure, write JSONL, record it once.

The examples stream straight into a temporary JSONL file in the data dir (memory holds one chunk of
rows, the duplicate detector's signatures and the item ids); the content hash is taken over the
bytes as they are written. A dataset whose content hash is already recorded is not recorded again:
the existing row is returned. The file is renamed into place inside the transaction that records
the row, so a failed build leaves neither a row without a file nor a stray file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import math
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from learnloop.config import Settings
from learnloop.datasets.builders import BUILDERS, MAX_LISTED, BuildReport, Item
from learnloop.datasets.dedup import Deduplicator
from learnloop.datasets.filters import KINDS, DatasetFilters, parse_filters
from learnloop.datasets.guardrails import TokenCounter, conversation_text, length_report, token_counter
from learnloop.durable import fsync_dir, fsync_file
from learnloop.errors import NotFound, ValidationFailed
from learnloop.paths import data_dir
from learnloop.store.db import Database
from learnloop.store.models import Dataset, Split

TRAINING_KINDS = ("sft", "dpo", "grpo", "kto")
_FLUSH_EVERY = 256


@dataclass
class DatasetInfo:
    """A recorded dataset, as callers (CLI, API, training) see it."""

    id: int
    name: str | None
    kind: str
    split: str
    filters: dict[str, Any]
    stats: dict[str, Any]
    content_hash: str
    count: int
    path: str | None
    created_at: dt.datetime
    reused: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


def _info(row: Any, *, reused: bool = False) -> DatasetInfo:
    split = getattr(row.split, "value", row.split)
    return DatasetInfo(
        id=row.id,
        name=row.name,
        kind=row.kind,
        split=split,
        filters=row.filters or {},
        stats=row.stats or {},
        content_hash=row.content_hash,
        count=int((row.stats or {}).get("count", 0)),
        path=row.path,
        created_at=row.created_at,
        reused=reused,
    )


class _Writer:
    """Dedup, batch token counting, JSONL lines and the running content hash."""

    def __init__(
        self, fh: IO[bytes], kind: str, split: str, counter: TokenCounter, dedup: Deduplicator | None
    ) -> None:
        self.fh, self.counter, self.dedup = fh, counter, dedup
        self.hasher = hashlib.sha256(f"learnloop-dataset:{kind}:{split}\n".encode())
        self.ids: list[str] = []
        self.lengths: list[int] = []
        self.rewards: list[float] = []
        self.unscored = 0
        self.duplicates: Counter[str] = Counter()
        self.duplicate_items: list[dict[str, Any]] = []
        self._pending: list[Item] = []

    def add(self, item: Item) -> None:
        """Queue ``item``; duplicates are dropped and the rest written at the next flush (in batches:
        duplicate detection and token counting are batch operations)."""
        self._pending.append(item)
        if len(self._pending) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        if self.dedup is not None:
            verdicts = self.dedup.check_many([(item.id, item.text) for item in self._pending])
            kept = []
            for item, verdict in zip(self._pending, verdicts):
                if verdict is None:
                    kept.append(item)
                    continue
                kind, earlier, sim = verdict
                self.duplicates[kind] += 1
                if len(self.duplicate_items) < MAX_LISTED:
                    self.duplicate_items.append(
                        {"id": item.id, "duplicate_of": earlier, "kind": kind, "similarity": sim}
                    )
            self._pending = kept
        convs = [c for item in self._pending for c in item.conversations]
        counts = iter(self.counter.count(convs))
        for item in self._pending:
            self.lengths.append(max(next(counts) for _ in item.conversations))
            line = (
                json.dumps(item.record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
            ).encode()
            self.fh.write(line)
            self.hasher.update(line)
            self.ids.append(item.id)
            if item.reward is None:
                self.unscored += 1
            else:
                self.rewards.append(item.reward)
        self._pending.clear()


def build_dataset(
    db: Database,
    kind: str,
    filters: DatasetFilters | Mapping[str, Any] | None = None,
    *,
    settings: Settings,
    tokenizer: str | Path | TokenCounter | None = None,
    name: str | None = None,
    out: str | Path | None = None,
) -> DatasetInfo:
    """Build, check, record and write a dataset of ``kind`` (sft, dpo, grpo, kto, prompts or holdout).

    Returns the recorded dataset; when the same content was recorded before, that record
    (``reused=True``). ``out`` also writes the JSONL there. Raises ValidationFailed when the kind
    or filters are invalid, or when no example passes them (the message shows where rows dropped out).
    """
    if kind not in KINDS:
        raise ValidationFailed(f"Unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}.")
    f = filters if isinstance(filters, DatasetFilters) else parse_filters(dict(filters or {}))
    config = settings.datasets
    f = f.resolved(kind, config)
    # Loaded before any row is read, so a bad tokenizer path fails fast.
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        counter: TokenCounter = token_counter(tokenizer or config.tokenizer)
    else:
        counter = tokenizer
    split = Split.holdout if kind == "holdout" else Split.train
    started = time.perf_counter()

    folder = data_dir(settings.data_dir).datasets
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".building-{uuid.uuid4().hex}.jsonl"
    report = BuildReport()
    try:
        with open(tmp, "wb") as fh:
            writer = _Writer(
                fh,
                kind,
                split.value,
                counter,
                Deduplicator(config.near_duplicate_threshold) if f.dedup else None,
            )
            with db.read_session() as session:
                for item in BUILDERS[kind](session, f, settings.scoring, report, config.chunk_size):
                    writer.add(item)
                writer.flush()
                replay = (
                    _replay(session, kind, writer, f.replay_fraction or 0.0)
                    if kind in TRAINING_KINDS
                    else None
                )
                writer.flush()
            fsync_file(fh)
        if not writer.ids:
            raise ValidationFailed(
                f"No {kind} examples passed the filters ({_funnel_text(report)}). "
                "Loosen the filters (lookback, reward bar, margin, group size) or "
                "capture and score more data."
            )
        content_hash = writer.hasher.hexdigest()
        stats = _stats(
            kind, writer, report, counter, config.max_length, replay, time.perf_counter() - started
        )
        info = _record(db, folder, tmp, kind, split, f, stats, content_hash, writer.ids, name)
    finally:
        tmp.unlink(missing_ok=True)
    if out is not None and info.path:
        _copy_atomic(Path(info.path), Path(out))
    return info


def _funnel_text(report: BuildReport) -> str:
    parts = [f"{k}={v}" for k, v in report.funnel.items()]
    if report.rejected_count:
        parts.append(f"malformed={report.rejected_count}")
    return ", ".join(parts) or "no rows matched"


def _record(
    db: Database,
    folder: Path,
    tmp: Path,
    kind: str,
    split: Split,
    f: DatasetFilters,
    stats: dict[str, Any],
    content_hash: str,
    ids: list[str],
    name: str | None,
) -> DatasetInfo:
    placed: Path | None = None
    try:
        with db.session() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Two builds of the same content must not both record it
                # (SQLite's BEGIN IMMEDIATE already serialises).
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(content_hash[:15], 16)})
            existing = session.scalars(
                select(Dataset)
                .where(Dataset.content_hash == content_hash, Dataset.kind == kind, Dataset.split == split)
                .order_by(Dataset.id)
                .limit(1)
            ).first()
            if existing is not None:
                if not existing.path or not Path(existing.path).is_file():
                    # The earlier file was deleted: the bytes are identical, so restore it from this build.
                    existing.path = str(data_dir(folder.parent).dataset_file(existing.id, kind))
                    os.replace(tmp, existing.path)
                if _length_basis(existing.stats) != _length_basis(stats):
                    # Same examples measured against another tokenizer or max length: keep the newer report.
                    existing.stats = stats
                return _info(existing, reused=True)
            row = Dataset(
                name=name,
                kind=kind,
                split=split,
                filters=f.recorded(),
                stats=stats,
                content_hash=content_hash,
                item_ids=ids,
            )
            session.add(row)
            session.flush()
            placed = data_dir(folder.parent).dataset_file(row.id, kind)
            row.path = str(placed)
            session.flush()
            os.replace(tmp, placed)
            fsync_dir(folder)
            info = _info(row)
    except BaseException:
        if placed is not None:  # the row was rolled back: no file may claim its id
            placed.unlink(missing_ok=True)
        raise
    return info


def _length_basis(stats: dict[str, Any] | None) -> tuple[Any, Any]:
    length = (stats or {}).get("length", {})
    return length.get("tokenizer"), length.get("max_length")


def _stats(
    kind: str,
    w: _Writer,
    report: BuildReport,
    counter: TokenCounter,
    max_length: int,
    replay: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    rewards = sorted(w.rewards)
    of = {
        "sft": "trajectory reward",
        "dpo": "chosen - rejected reward",
        "grpo": "group mean reward",
        "prompts": "best stored answer's reward",
    }.get(kind, "trajectory reward")
    stats: dict[str, Any] = {
        "count": len(w.ids),
        "length": length_report(w.lengths, max_length, w.ids, counter=counter.name),
        "rewards": {
            "of": of,
            "count": len(rewards),
            "unscored": w.unscored,
            "min": rewards[0] if rewards else None,
            "p50": _pct(rewards, 50),
            "mean": sum(rewards) / len(rewards) if rewards else None,
            "max": rewards[-1] if rewards else None,
        },
        "duplicates": {
            "exact": w.duplicates["exact"],
            "near": w.duplicates["near"],
            "items": w.duplicate_items,
        },
        **report.as_dict(),
        "build_seconds": round(seconds, 3),
    }
    if replay is not None:
        stats["replay"] = replay
    return stats


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return values[max(1, math.ceil(p / 100 * len(values))) - 1]


def _item_from_record(kind: str, item_id: str, record: dict[str, Any]) -> Item:
    if kind == "sft":
        convs = [record["messages"]]
    elif kind == "dpo":
        convs = [record["prompt"] + record["chosen"], record["prompt"] + record["rejected"]]
    elif kind == "kto":
        convs = [record["prompt"] + record["completion"]]
    else:
        convs = [record["prompt"] + c for c in record["completions"]]
    return Item(item_id, record, convs, "\n---\n".join(conversation_text(c) for c in convs))


def _replay(session: Session, kind: str, writer: _Writer, fraction: float) -> dict[str, Any] | None:
    """Mix in examples of earlier datasets of this kind, chosen by a hash of their id seeded with
    this content.

    ``fraction`` is the share of the final dataset; examples already in it are not taken twice.
    """
    if fraction <= 0:
        return None
    wanted = math.floor(len(writer.ids) * fraction / (1 - fraction))
    result: dict[str, Any] = {
        "fraction": fraction,
        "wanted": wanted,
        "added": 0,
        "from_datasets": [],
        "missing_files": [],
    }
    if wanted == 0:
        return result
    seed = writer.hasher.copy().hexdigest()
    current = set(writer.ids)
    heap: list[
        tuple[int, str, str, int]
    ] = []  # (-rank, item id, file, line number): the `wanted` smallest ranks
    seen: set[str] = set()
    earlier = session.execute(
        select(Dataset.id, Dataset.path, Dataset.item_ids)
        .where(Dataset.kind == kind, Dataset.split == Split.train)
        .order_by(Dataset.id.desc())
    )
    for ds_id, path, item_ids in earlier:
        if not path or not Path(path).is_file():
            result["missing_files"].append(ds_id)
            continue
        for line_no, iid in enumerate(item_ids or ()):
            if iid in current or iid in seen:
                continue
            seen.add(iid)
            rank = int.from_bytes(hashlib.blake2b(f"{seed}:{iid}".encode(), digest_size=8).digest(), "big")
            entry = (-rank, iid, path, line_no)
            if len(heap) < wanted:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
    by_file: dict[str, dict[int, str]] = {}
    for _, iid, path, line_no in heap:
        by_file.setdefault(path, {})[line_no] = iid
    writer.flush()
    before = len(writer.ids)
    for path, lines in by_file.items():
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh):
                if line_no in lines:
                    writer.add(_item_from_record(kind, lines[line_no], json.loads(line)))
        result["from_datasets"].append(path)
    writer.flush()
    result["added"] = len(writer.ids) - before  # duplicates of kept examples are not added
    return result


def list_datasets(session: Session, *, kind: str | None = None, limit: int = 50) -> list[DatasetInfo]:
    """Newest first. The item ids are not loaded."""
    cols = [
        Dataset.id,
        Dataset.name,
        Dataset.kind,
        Dataset.split,
        Dataset.filters,
        Dataset.stats,
        Dataset.content_hash,
        Dataset.path,
        Dataset.created_at,
    ]
    stmt = select(*cols).order_by(Dataset.id.desc()).limit(limit)
    if kind is not None:
        stmt = stmt.where(Dataset.kind == kind)
    return [_info(row) for row in session.execute(stmt)]


def get_dataset(session: Session, dataset_id: int) -> DatasetInfo:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound(f"No dataset with id {dataset_id}. `learnloop datasets list` shows the recorded ones.")
    return _info(row)


def dataset_item_ids(session: Session, dataset_id: int) -> list[str]:
    """The ids behind each line of the dataset's JSONL, in order (trajectory ids;
    'a>b' for pairs; 'fb:N' for corrections)."""
    ids = session.scalar(select(Dataset.item_ids).where(Dataset.id == dataset_id))
    if ids is None:
        raise NotFound(f"No dataset with id {dataset_id}.")
    return list(ids)


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def export_dataset(session: Session, dataset_id: int, dest: str | Path) -> Path:
    """Write a recorded dataset's JSONL to ``dest`` (atomically)."""
    info = get_dataset(session, dataset_id)
    if not info.path or not Path(info.path).is_file():
        raise NotFound(
            f"The file of dataset {dataset_id} ({info.path}) is gone. Rebuild it: "
            f"`learnloop datasets build {info.kind}` with the recorded filters {json.dumps(info.filters)} "
            "(the same content is recognised by its hash)."
        )
    return _copy_atomic(Path(info.path), Path(dest))


def _copy_atomic(src: Path, dest: Path) -> Path:
    dest = dest.expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
