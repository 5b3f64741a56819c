"""Reading training JSONL (errors name file, line and field) and length-grouped, resumable batching."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from learnloop.errors import ValidationFailed
from learnloop.training.data import BatchStream, LoadedDataset, Position, epoch_batches, load_examples
from learnloop.training.objective import Example
from training_support import SFT_ROWS, objective_for, write_jsonl


@pytest.fixture(scope="module")
def sft(tiny_model_dir: Path):  # noqa: ANN201
    return objective_for(tiny_model_dir)[0]


@pytest.mark.parametrize(
    ("bad_line", "pattern"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}', r"bad\.jsonl: line 3: not valid JSON"),
        ('["not", "an", "object"]', r"line 3: expected a JSON object"),
        ('{"text": "no messages"}', r"line 3: field 'messages' is missing"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}',
            r"line 3: field 'messages\[1\]\.content'",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}]}',
            r"line 3: field 'messages' has no assistant message",
        ),
    ],
)
def test_malformed_line_is_named(sft, tmp_path: Path, bad_line: str, pattern: str) -> None:  # noqa: ANN001
    import json

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(SFT_ROWS[0]) + "\n\n" + bad_line + "\n" + json.dumps(SFT_ROWS[1]) + "\n")
    with pytest.raises(ValidationFailed, match=pattern) as info:
        load_examples(path, sft)
    assert info.value.problems and str(path) in info.value.problems[0][0]


def test_valid_file_loads_with_hash_and_skips(sft, tmp_path: Path) -> None:  # noqa: ANN001
    rows = SFT_ROWS + [
        {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}]}
    ]
    data = load_examples(write_jsonl(tmp_path / "ok.jsonl", rows), sft)
    assert (
        len(data.examples) == len(SFT_ROWS) and data.skipped == 1
    )  # the over-long one has no assistant token left
    assert len(data.sha256) == 64
    with pytest.raises(ValidationFailed, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl", sft)


def test_epoch_order_is_deterministic_complete_and_length_grouped() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(5, 500) for _ in range(1000)]
    a = epoch_batches(lengths, 8, seed=3, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=3, epoch=0)
    assert a != epoch_batches(lengths, 8, seed=3, epoch=1) and a != epoch_batches(lengths, 8, seed=4, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(1000))  # every example exactly once

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=False)
    assert padding(a) < padding(plain) / 5
    # Grouping must not reduce to a global sort: long and short batches are interleaved.
    maxes = [max(lengths[i] for i in b) for b in a]
    assert maxes != sorted(maxes) and maxes != sorted(maxes, reverse=True)


def test_stream_resumes_from_a_position_across_epochs() -> None:
    examples = [Example(length=n % 17 + 1, data={"n": n}) for n in range(23)]
    data = LoadedDataset(examples=examples, skipped=0, sha256="x", path=Path("x"))

    def take(stream: BatchStream, k: int) -> list[list[int]]:
        return [[e.data["n"] for e in stream.next()] for _ in range(k)]

    whole = take(
        BatchStream(data, 4, seed=7, group_by_length=True), 15
    )  # 6 batches per epoch: crosses 2 epochs
    first = BatchStream(data, 4, seed=7, group_by_length=True)
    head = take(first, 8)
    assert first.position == Position(epoch=1, index=2)
    resumed = BatchStream(data, 4, seed=7, group_by_length=True, position=Position(**vars(first.position)))
    assert head + take(resumed, 7) == whole
    # Two ranks split each round between them and together see what one process sees.
    r0 = BatchStream(data, 2, seed=7, group_by_length=False, rank=0, world=2)
    r1 = BatchStream(data, 2, seed=7, group_by_length=False, rank=1, world=2)
    assert sorted(n for _ in range(r0.batches_per_epoch) for n in [*take(r0, 1)[0], *take(r1, 1)[0]]) == list(
        range(23)
    )
