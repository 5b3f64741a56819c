"""OTLP/JSON files: one ``ExportTraceServiceRequest`` per file, or one per line (as the
OpenTelemetry Collector's file exporter writes them). A file is a finished record, so every
trace's LLM calls in it form one trajectory, as they would arriving in one export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learnloop.capture.formats import file_problems, json_documents
from learnloop.capture.otlp import map_spans, request_from_json, spans_of, trajectories
from learnloop.errors import ValidationFailed


def read_otlp_json(path: Path) -> list[dict[str, Any]]:
    spans = []
    problems: list[tuple[str, str]] = []
    for where, doc in json_documents(path):
        try:
            spans.extend(spans_of(request_from_json(doc, where), where))
        except ValidationFailed as exc:
            problems.extend(exc.problems or [(where, str(exc))])
    if problems:
        raise file_problems(path, problems, "OTLP/JSON")
    mapped = map_spans(spans)
    records = trajectories(mapped)
    if mapped.rejected:
        raise file_problems(path, [(f"span {sid}", why) for sid, why in mapped.rejected], "OTLP/JSON")
    return records
