"""OTLP traces to trajectories: the GenAI spans an instrumented app already exports, mapped to the
wire records the SDK sends.

Decoding reads an OTLP ``ExportTraceServiceRequest`` (protobuf, or the OTLP/JSON encoding with its
hex ids) with the official ``opentelemetry-proto`` classes into plain ``Span`` objects; a span
without a valid trace or span id refuses the whole export. Mapping then:

* finds the LLM calls: a span whose ``gen_ai.operation.name`` is a chat or completion, whose
  ``openinference.span.kind`` is ``LLM``, or (older instrumentations) that carries prompt and
  completion attributes. Every other span (HTTP, database, tool, agent spans) is ignored and counted.
* reads each call's messages in whichever style the instrumentation wrote them: the current
  GenAI conventions' ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions`` (as span attributes or on the
  ``gen_ai.client.inference.operation.details`` event), the older per-message events
  (``gen_ai.user.message``, ``gen_ai.choice``, ...), the attribute style
  ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*``, or OpenInference's
  ``llm.input_messages.N.message.*`` / ``llm.output_messages.N.message.*``; with the tools, the
  model, usage, sampling parameters, latency (the span's duration) and the error (status ERROR).
* makes the LLM calls of one trace one trajectory (one call: the trajectory of a single wrapped
  call; several: one ``llm_calls`` entry per call, as inside ``learnloop.trajectory()``). An
  exporter sends spans as they end, so a run's calls often arrive exports before its root span:
  ``store_export`` holds every call (``store.otlp_calls``) and stores a trace's run when the export
  holding its root span (no parent, or a remote one) arrives; ``flush_overdue`` stores the runs
  whose root never comes. The trajectory's id is ``otlp-<trace id>-<span id of its first call>``,
  and a span taken once is never taken again: a resent export stores nothing twice.
* takes scenario, agent, group, source, tags and metadata from the documented ``learnloop.*``
  attributes (ATTRIBUTES), resource first, then the calls' spans, then the trace's root span.

An LLM call span that cannot become a trajectory (no message content was recorded, a message the
store refuses) is rejected on its own and reported (OTLP's partial success); the others are kept.
"""

from learnloop.capture.otlp.decode import Span, decode_json, decode_protobuf, request_from_json, spans_of
from learnloop.capture.otlp.runs import (
    ATTRIBUTES,
    CallSpan,
    Mapped,
    Stored,
    build_run,
    flush_overdue,
    map_spans,
    run_fields,
    run_record,
    store_export,
    trajectories,
)
from learnloop.capture.otlp.spans import is_llm_call, llm_call

__all__ = [
    "ATTRIBUTES",
    "CallSpan",
    "Mapped",
    "Span",
    "Stored",
    "build_run",
    "decode_json",
    "decode_protobuf",
    "flush_overdue",
    "is_llm_call",
    "llm_call",
    "map_spans",
    "request_from_json",
    "run_fields",
    "run_record",
    "spans_of",
    "store_export",
    "trajectories",
]
