"""Datasets: SFT / DPO / GRPO / holdout builders over scored trajectories, guardrails, dedup, JSONL export.

Public surface::

    build_dataset(db, "sft", {"min_reward": 0.5}, settings=settings) -> DatasetInfo
    list_datasets(session) / get_dataset(session, id) / export_dataset(session, id, path)
    length_report(lengths, max_length) / token_counter(folder_or_None) / Deduplicator()
    guard_training_lengths(jsonl, tokenizer=..., max_length=..., max_truncated_share=...)  # before training
    list_windows(session, filters)   # capture windows, their counts and readiness
"""

from learnloop.datasets.catalog import (
    DatasetInfo,
    build_dataset,
    dataset_item_ids,
    export_dataset,
    get_dataset,
    list_datasets,
    read_records,
)
from learnloop.datasets.dedup import Deduplicator
from learnloop.datasets.filters import KINDS, DatasetFilters, parse_filters
from learnloop.datasets.guardrails import (
    ApproxTokenCounter,
    HFTokenCounter,
    LengthCheck,
    TokenCounter,
    check_messages,
    check_training_lengths,
    guard_training_lengths,
    length_report,
    token_counter,
)
from learnloop.datasets.windows import WindowSummary, list_windows

__all__ = [
    "KINDS",
    "ApproxTokenCounter",
    "DatasetFilters",
    "DatasetInfo",
    "Deduplicator",
    "HFTokenCounter",
    "LengthCheck",
    "TokenCounter",
    "WindowSummary",
    "build_dataset",
    "check_messages",
    "check_training_lengths",
    "dataset_item_ids",
    "guard_training_lengths",
    "list_windows",
    "export_dataset",
    "get_dataset",
    "length_report",
    "list_datasets",
    "parse_filters",
    "read_records",
    "token_counter",
]
