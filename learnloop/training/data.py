"""Reading a training JSONL and ordering it into length-grouped micro-batches.

The order is a pure function of (seed, epoch), so a resumed run rebuilds it and skips exactly the
batches the checkpoint says were consumed: the position is (epoch, batch index).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from learnloop.errors import ValidationFailed
from learnloop.training.objective import Example, Objective

# Examples are shuffled, then sorted by length inside windows of this many batches: padding stays
# small while the order stays random (the same idea as transformers' LengthGroupedSampler).
MEGABATCH_MULT = 50


@dataclass
class LoadedDataset:
    examples: list[Example]
    skipped: int
    sha256: str
    path: Path


def load_examples(path: Path | str, objective: Objective) -> LoadedDataset:
    """Parse every line and prepare it with ``objective``; a malformed line raises ValidationFailed
    naming the file, the line and the field, before any training starts."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValidationFailed(f"Dataset file {path} does not exist.") from None
    examples: list[Example] = []
    skipped = 0
    for lineno, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(
                f"{path}: line {lineno}: not valid JSON ({exc.msg})", [(f"{path}:{lineno}", exc.msg)]
            ) from None
        if not isinstance(record, dict):
            raise ValidationFailed(
                f"{path}: line {lineno}: expected a JSON object", [(f"{path}:{lineno}", "not an object")]
            )
        try:
            example = objective.prepare(record, lineno)
        except ValidationFailed as exc:
            msg = str(exc) if f"line {lineno}" in str(exc) else f"line {lineno}: {exc}"
            raise ValidationFailed(
                f"{path}: {msg}",
                [(f"{path}:{loc}", why) for loc, why in exc.problems] or [(f"{path}:{lineno}", str(exc))],
            ) from None
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if not examples:
        raise ValidationFailed(
            f"{path}: no usable training examples ({skipped} skipped by the {objective.name} objective)."
        )
    return LoadedDataset(
        examples=examples, skipped=skipped, sha256=hashlib.sha256(raw).hexdigest(), path=path
    )


def epoch_batches(
    lengths: list[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch, deterministic in (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    window = batch_size * MEGABATCH_MULT
    for start in range(0, len(order), window):
        mega = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches.extend(mega[i : i + batch_size] for i in range(0, len(mega), batch_size))
    rng.shuffle(batches)  # sorted batches, random batch order
    return batches


@dataclass
class Position:
    """Where the next micro-batch comes from: batch ``index`` of epoch ``epoch``."""

    epoch: int = 0
    index: int = 0


class BatchStream:
    """An endless, resumable stream of micro-batches across epochs.

    With several processes each one takes every ``world``-th batch of the same global order, so the
    position (counted in global batches) means the same on every rank.
    """

    def __init__(
        self,
        dataset: LoadedDataset,
        batch_size: int,
        *,
        seed: int,
        group_by_length: bool,
        rank: int = 0,
        world: int = 1,
        position: Position | None = None,
    ) -> None:
        self.lengths = [e.length for e in dataset.examples]
        self.examples = dataset.examples
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.rank, self.world = rank, world
        self.position = position or Position()
        self._cache: tuple[int, list[list[int]]] | None = None

    def batches_of(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (
                epoch,
                epoch_batches(
                    self.lengths, self.batch_size, seed=self.seed, epoch=epoch, group_by_length=self.group
                ),
            )
        return self._cache[1]

    @property
    def batches_per_epoch(self) -> int:
        """Global micro-batch rounds per epoch (one round = one batch on every rank)."""
        return max(1, len(self.batches_of(0)) // self.world)

    def epoch_progress(self) -> float:
        return self.position.epoch + self.position.index / self.batches_per_epoch

    def next(self) -> list[Example]:
        """The next micro-batch of this rank; advances the position by one round."""
        if self.position.index >= self.batches_per_epoch:
            self.position = Position(self.position.epoch + 1, 0)
        batches = self.batches_of(self.position.epoch)
        chosen = batches[(self.position.index * self.world + self.rank) % len(batches)]
        self.position = Position(self.position.epoch, self.position.index + 1)
        return [self.examples[i] for i in chosen]

    def __iter__(self) -> Iterator[list[Example]]:
        while True:
            yield self.next()
