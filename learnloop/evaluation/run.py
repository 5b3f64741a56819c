"""Running an evaluation: candidate and baseline answer the frozen held-out split, scored alike.

Answers come from the same ``ServingBackend`` serving uses, greedy, so a candidate is measured as
it would be served. Each answer is scored by the heuristic reward functions the scoring stage
applies (built-ins and the user's registered verifiers; feedback cannot exist for a fresh answer),
and its reward is the scoring stage's one rule (``scoring.combine``, explicit-first, with the
``[scoring]`` settings): a registered verifier decides, the generic built-ins only refine. Every
aspect is summarised per side too, so a loop's gate can compare one of them instead
(``gate.metric``). Answers are optionally judged pairwise in both orders. The result, its gate
verdict and every example are stored in ``evaluations``; the verdict is also written on the
candidate version (a rejected one is marked ``rejected``).

Against a teacher (``--baseline teacher``, ``upstream:<name>``, or ``serving`` while the alias serves
an upstream) the baseline's answers are the stored teacher answers of the held-out prompts (with their
latency and usage when the proxy captured them), topped up with fresh ones from the upstream within
``evaluation.upstream_budget``; the gate then asks for non-inferiority (``gate.teacher_margin``).
Each side's latency p50/p95 and cost per 1,000 requests (the upstream's price, ``serving``'s own
price for the candidate) are reported beside its quality.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from learnloop.config import GatePolicy, Settings
from learnloop.errors import Conflict, NotFound, ValidationFailed
from learnloop.evaluation import stats
from learnloop.evaluation.gate import REJECT, GateVerdict, gate, policy_for
from learnloop.evaluation.judge import JudgeClient, judge_pair, judge_summary
from learnloop.registry import files as fs
from learnloop.registry.aliases import serving_ids, state_of
from learnloop.scoring.combine import HEURISTIC, CombineRule, combine
from learnloop.scoring.view import TrajectoryView, message_text
from learnloop.serving.backend import BASE, ChatRequest, ServingBackend
from learnloop.store.aliases import DEFAULT_ALIAS, get_alias, is_upstream, upstream_name
from learnloop.store.db import Database
from learnloop.store.events import record_event
from learnloop.store.models import Evaluation, ModelVersion, Source, Trajectory

TEACHER = "teacher"
SERVING = "serving"
_ANSWER_CHARS = 4000  # stored per answer in the report


@dataclass
class Item:
    id: str
    scenario: str | None
    prompt: list[dict[str, Any]]
    reference: list[dict[str, Any]]  # the stored answer (the teacher's, for a teacher baseline)
    view_fields: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # a teacher baseline with no stored answer here: the upstream answers it now


@dataclass
class Side:
    name: str  # a version id, "base", "teacher" or "upstream:<name>"
    model: str | None  # backend model name; None: the stored answers
    upstream: str | None = None  # the [[upstreams]] name a teacher side stands for

    @property
    def teacher(self) -> bool:
        return self.name == TEACHER or self.upstream is not None


def _sort_key(item_id: str) -> str:
    # A fixed pseudo-random order: a limit takes a spread of the split, not its oldest ids.
    return hashlib.sha256(item_id.encode()).hexdigest()


def holdout_items(
    db: Database, settings: Settings, *, scenario: str | None, teacher: bool, limit: int | None
) -> tuple[int, list[Item]]:
    """(dataset id, items) of the frozen held-out split, recorded as a ``holdout`` dataset."""
    from learnloop.datasets import build_dataset, read_records

    filters: dict[str, Any] = {"scenario": scenario} if scenario else {}
    if teacher:
        filters["sources"] = [Source.teacher.value]
    info = build_dataset(db, "holdout", filters, settings=settings)
    records = [r for r in read_records(info.path) if r.get("prompt")]
    records.sort(key=lambda r: _sort_key(str(r["id"])))
    if teacher:
        records = [r for r in records if r.get("completion")]
    if limit:
        records = records[:limit]
    if not records:
        raise ValidationFailed(
            f"The held-out split{' of ' + scenario if scenario else ''} has no usable examples"
            f"{' with teacher answers' if teacher else ''}."
        )
    ids = [str(r["id"]) for r in records]
    extra: dict[str, dict[str, Any]] = {}
    with db.read_session() as session:
        for i in range(0, len(ids), 500):
            for t in session.scalars(select(Trajectory).where(Trajectory.id.in_(ids[i : i + 500]))):
                extra[t.id] = {
                    "tools": t.tools,
                    "metadata": t.meta or {},
                    "tags": t.tags or [],
                    "group_id": t.group_id,
                }
    items = [
        Item(
            str(r["id"]),
            r.get("scenario"),
            r["prompt"],
            r.get("completion") or [],
            extra.get(str(r["id"]), {}),
        )
        for r in records
    ]
    return info.id, items


def _items_for(
    db: Database, settings: Settings, side: Side, *, scenario: str | None, limit: int | None
) -> tuple[int, list[Item], ServingBackend | None]:
    """(dataset id, items, the upstream that answers fresh items) for a baseline side.

    A teacher side uses the stored teacher answers of the held-out split; against an upstream, up to
    ``evaluation.upstream_budget`` further held-out prompts (with no stored teacher answer) are sent
    to it fresh, when the stored answers are fewer than ``limit``.
    """
    budget = settings.evaluation.upstream_budget if side.upstream is not None else 0
    try:
        dataset_id, items = holdout_items(db, settings, scenario=scenario, teacher=side.teacher, limit=limit)
    except ValidationFailed:
        if not budget:
            raise
        dataset_id, items = 0, []
    want = budget if limit is None else min(budget, max(0, limit - len(items)))
    if not want:
        return dataset_id, items, None
    cfg = settings.upstream(side.upstream or "")
    if cfg is None:
        raise ValidationFailed(
            f"The baseline is upstream {side.upstream!r}, which is not in [[upstreams]]; "
            "add it, or set evaluation.upstream_budget = 0 to use the stored teacher answers only.",
            [("baseline", "unknown upstream")],
        )
    from learnloop.serving.upstream import UpstreamBackend

    all_id, every = holdout_items(db, settings, scenario=scenario, teacher=False, limit=None)
    have = {i.id for i in items}
    prompts = {orjson_key(i.prompt) for i in items}
    fresh = []
    for item in every:
        key = orjson_key(item.prompt)
        if item.id in have or key in prompts:
            continue
        prompts.add(key)
        item.fresh = True
        fresh.append(item)
        if len(fresh) >= want:
            break
    return (dataset_id or all_id), items + fresh, UpstreamBackend.from_settings(cfg)


def orjson_key(prompt: list[dict[str, Any]]) -> str:
    import orjson

    return hashlib.sha256(orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)).hexdigest()


def serving_alias(settings: Settings, loop: str | None) -> str:
    """The alias a version of ``loop`` would replace: that loop's ``alias`` in
    ``[[loops]]``, else ``learnloop``."""
    for entry in getattr(settings, "loops", None) or []:
        if getattr(entry, "name", None) == loop and getattr(entry, "alias", None):
            return entry.alias
    return DEFAULT_ALIAS


def _resolve_side(db: Database, spec: str, candidate: str, alias_name: str = DEFAULT_ALIAS) -> Side:
    if spec == TEACHER:
        return Side(TEACHER, None)
    if spec == SERVING:
        alias = get_alias(db, alias_name)
        spec = alias.version_id if alias is not None and alias.version_id else BASE
    if is_upstream(spec):  # the teacher the alias serves: its stored answers (and fresh ones in budget)
        return Side(spec, None, upstream=upstream_name(spec))
    if spec == candidate:
        raise ValidationFailed(
            f"The baseline is the candidate itself ({candidate}); choose --baseline "
            "base, teacher or another version.",
            [("baseline", "same as candidate")],
        )
    return Side(spec, spec)


def _checked_version(db: Database, version_id: str) -> ModelVersion:
    with db.read_session() as session:
        row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFound(f"No model version {version_id!r}; `learnloop versions list` shows them.")
    if not row.artifact_path:
        raise Conflict(f"{version_id}'s adapter files were pruned; it cannot be evaluated.")
    problems = fs.verify(Path(row.artifact_path), row.files or {})
    if problems:
        raise Conflict(f"{version_id}'s files do not match their recorded hashes: {'; '.join(problems[:3])}.")
    return row


def _score(settings: Settings, item: Item, answer: str) -> tuple[float, dict[str, float]]:
    from learnloop.scoring.apply import score_views
    from learnloop.scoring.registry import registered

    f = item.view_fields
    view = TrajectoryView(
        id=item.id,
        messages=[*item.prompt, {"role": "assistant", "content": answer}],
        scenario=item.scenario,
        group_id=f.get("group_id"),
        tools=f.get("tools"),
        metadata=f.get("metadata") or {},
        tags=f.get("tags") or [],
        config=settings.scoring,
    )
    rows, _, _ = score_views(registered(), [view])
    aspects = {r["name"]: r["value"] for r in rows}
    # Every aspect here comes from a registered function: the rule classes each by that source
    # (a user's verifier explicit, the built-ins by their class), exactly as for stored scores.
    value = combine(aspects, settings.scoring, dict.fromkeys(aspects, HEURISTIC))
    # No reward function applied: the answer was empty, which serves the user worst.
    return (0.0 if value is None else value), aspects


def rescore(example: Mapping[str, Any], rule: CombineRule) -> dict[str, Any]:
    """``example`` with each side's reward (and the difference) recomputed from its stored aspects
    under ``rule``: how evaluations stored under another rule are compared with today's."""
    out = dict(example)
    for key in ("candidate", "baseline"):
        side = dict(example[key])
        aspects = side.get("aspects") or {}
        value = combine(aspects, rule, dict.fromkeys(aspects, HEURISTIC))
        side["reward"] = 0.0 if value is None else value
        out[key] = side
    out["diff"] = out["candidate"]["reward"] - out["baseline"]["reward"]
    return out


def _refused(aspects: Mapping[str, float]) -> float | None:
    return None if "no_refusal" not in aspects else 1.0 - aspects["no_refusal"]


def _json_ok(aspects: Mapping[str, float]) -> float | None:
    return None if "json_valid" not in aspects else float(aspects["json_valid"] >= 1.0)


def aspect_summary(
    examples: Sequence[Mapping[str, Any]],
    *,
    intervals: bool = True,
    confidence: float = stats.CONFIDENCE,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every aspect (reward function) seen on either side: its mean per side, and the paired
    difference over the examples where both answers have it (with its interval when ``intervals``).

    A function that does not apply to an answer (None) leaves it out of that aspect's numbers.
    """
    names = sorted({n for e in examples for key in ("candidate", "baseline") for n in e[key]["aspects"]})
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        cand = [e["candidate"]["aspects"].get(name) for e in examples]
        base = [e["baseline"]["aspects"].get(name) for e in examples]
        diffs = np.array([c - b for c, b in zip(cand, base, strict=True) if c is not None and b is not None])
        entry: dict[str, Any] = {
            "candidate": stats.mean_or_none(cand),
            "baseline": stats.mean_or_none(base),
            "n_candidate": sum(v is not None for v in cand),
            "n_baseline": sum(v is not None for v in base),
            "n": len(diffs),
            "diff": float(diffs.mean()) if len(diffs) else None,
        }
        if intervals:
            low, high = (
                stats.paired_ci(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed)
                if len(diffs)
                else (np.nan, np.nan)
            )
            entry["diff_ci"] = [
                None if np.isnan(low) else float(low),
                None if np.isnan(high) else float(high),
            ]
        out[name] = entry
    return out


def summarize(
    examples: Sequence[Mapping[str, Any]],
    *,
    confidence: float = stats.CONFIDENCE,
    n_resamples: int = 9999,
    seed: int = 0,
    intervals: bool = True,
) -> dict[str, Any]:
    """The per-side numbers of a set of scored example pairs (all examples, or one scenario's);
    ``intervals``: also each aspect's paired interval (the overall summary's, which a gate on an
    aspect reads)."""
    cand = np.array([e["candidate"]["reward"] for e in examples], dtype=float)
    base = np.array([e["baseline"]["reward"] for e in examples], dtype=float)
    diffs = cand - base
    low, high = (
        stats.paired_ci(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed)
        if len(diffs)
        else (np.nan, np.nan)
    )
    wins, ties, losses = stats.win_tie_loss(diffs)

    def side(key: str, fn: Callable[[Mapping[str, Any]], float | None]) -> float | None:
        return stats.mean_or_none([fn(e[key]) for e in examples])

    out: dict[str, Any] = {
        "n": len(examples),
        "reward_candidate": float(cand.mean()) if len(cand) else None,
        "reward_baseline": float(base.mean()) if len(base) else None,
        "reward_diff": float(diffs.mean()) if len(diffs) else None,
        "reward_diff_ci": [None if np.isnan(low) else float(low), None if np.isnan(high) else float(high)],
        "wins": wins,
        "ties": ties,
        "losses": losses,
    }
    for key, label in (("candidate", "candidate"), ("baseline", "baseline")):
        out[f"json_valid_{label}"] = side(key, lambda s: _json_ok(s["aspects"]))
        out[f"refusal_rate_{label}"] = side(key, lambda s: _refused(s["aspects"]))
        out[f"length_chars_{label}"] = side(key, lambda s: s["chars"])
        out[f"completion_tokens_{label}"] = side(key, lambda s: s.get("tokens"))
        lat = [e[key]["latency_ms"] for e in examples if e[key].get("latency_ms") is not None]
        out[f"latency_p50_{label}_ms"] = stats.percentile(lat, 50)
        out[f"latency_p95_{label}_ms"] = stats.percentile(lat, 95)
        costs = [e[key]["cost"] for e in examples if e[key].get("cost") is not None]
        out[f"cost_per_1k_requests_{label}"] = 1000 * float(np.mean(costs)) if costs else None
    judged = [e["judge"] for e in examples if e.get("judge")]
    if judged:
        j = judge_summary(judged)
        outcomes = [r["outcome"] for r in judged if r.get("outcome") is not None]
        if len(outcomes) >= 2:
            jl, jh = stats.paired_ci(outcomes, confidence=confidence, n_resamples=n_resamples, seed=seed)
            j["win_rate_ci"] = [float(jl), float(jh)]
        out["judge"] = j
    out["aspects"] = aspect_summary(
        examples, intervals=intervals, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return out


def build_metrics(
    examples: Sequence[Mapping[str, Any]],
    *,
    n_resamples: int = 9999,
    seed: int = 0,
    rule: CombineRule | None = None,
) -> dict[str, Any]:
    """Overall and per-scenario summaries; ``rule`` (the one the rewards were computed with) is
    recorded beside them."""
    by_scenario: dict[str, list[Mapping[str, Any]]] = {}
    for e in examples:
        by_scenario.setdefault(e.get("scenario") or "(none)", []).append(e)
    overall = summarize(examples, n_resamples=n_resamples, seed=seed)
    low, high = overall["reward_diff_ci"]
    judge = overall.get("judge") or {}
    return {
        # Headline numbers at the top level, for tables and charts that show flat metrics (the dashboard's).
        "n": overall["n"],
        "reward_candidate": overall["reward_candidate"],
        "reward_baseline": overall["reward_baseline"],
        "reward_diff": overall["reward_diff"],
        "reward_diff_low": low,
        "reward_diff_high": high,
        **({"judge_win_rate": judge["win_rate"]} if judge.get("win_rate") is not None else {}),
        "overall": {**overall, "confidence": stats.CONFIDENCE},
        "scenarios": {
            k: summarize(v, n_resamples=n_resamples, seed=seed, intervals=False)
            for k, v in sorted(by_scenario.items())
        },
        **({"reward_rule": rule.describe()} if rule is not None else {}),
    }


def _generate(backend: ServingBackend, model: str, item: Item, settings: Settings) -> dict[str, Any]:
    request = ChatRequest(
        messages=item.prompt,
        tools=item.view_fields.get("tools"),
        max_tokens=settings.evaluation.max_new_tokens,
        temperature=0.0,
        seed=settings.evaluation.seed,
    )
    t0 = time.perf_counter()
    result = backend.chat(model, request)[0]
    latency = (time.perf_counter() - t0) * 1000
    return {
        "text": result.text,
        "latency_ms": latency,
        "tokens": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
        "finish": result.finish_reason,
    }


def _stored(item: Item) -> dict[str, Any]:
    """The stored teacher answer of an item, with the latency and usage the proxy captured with it."""
    meta = item.view_fields.get("metadata") or {}
    usage = meta.get("usage") if isinstance(meta.get("usage"), dict) else {}
    latency = meta.get("latency_ms")
    return {
        "text": "".join(message_text(m) for m in item.reference[-1:]),
        "latency_ms": float(latency) if isinstance(latency, (int, float)) else None,
        "tokens": usage.get("completion_tokens"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "finish": "stored",
    }


def _side_cost(settings: Settings, answer: dict[str, Any], side: str | Side) -> float | None:
    """What one answer cost: an upstream's at its price (None when it has none), a model of our own
    at ``serving.price_per_1k_tokens`` (0 when unset); None when its tokens are unknown."""
    if answer.get("tokens") is None or answer.get("prompt_tokens") is None:
        return None
    if isinstance(side, Side) and side.teacher:
        cfg = settings.upstream(side.upstream) if side.upstream else None
        price = cfg.price_per_1k_tokens if cfg is not None else None
        if price is None:
            return None
    else:
        price = settings.serving.price_per_1k_tokens
        if price is None:
            return 0.0
    return price.cost(int(answer["prompt_tokens"]), int(answer["tokens"]))


def evaluate(
    db: Database,
    settings: Settings,
    *,
    candidate: str,
    baseline: str = SERVING,
    scenario: str | None = None,
    backend: ServingBackend | None = None,
    limit: int | None = None,
    judge: JudgeClient | bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    policy: GatePolicy | None = None,
) -> int:
    """Evaluate ``candidate`` against ``baseline`` (serving | base | a version id | teacher);
    return the evaluation id.

    ``judge``: a JudgeClient, True (the configured ``[scoring] judge_*`` endpoint), or None for
    ``[evaluation] judge``. The gate verdict is stored with the evaluation and the candidate;
    ``policy`` defaults to ``[gate]`` overridden by the candidate's loop's ``gate`` (``policy_for``).
    """
    cand_row = _checked_version(db, candidate)
    side = _resolve_side(db, baseline, candidate, serving_alias(settings, cand_row.loop))
    base_row = _checked_version(db, side.model) if side.model not in (None, BASE) else None
    if base_row is not None and base_row.base_model_hash != cand_row.base_model_hash:
        raise ValidationFailed(
            f"{candidate} and {side.name} were trained on different base models; "
            "compare each with --baseline base.",
            [("baseline", "different base model")],
        )
    dataset_id, items, teacher_backend = _items_for(
        db, settings, side, scenario=scenario, limit=limit or settings.evaluation.limit
    )

    from learnloop.scoring.registry import load_modules

    load_modules(settings.scoring.reward_modules)
    client: JudgeClient | None = None
    own_client = False
    use_judge = settings.evaluation.judge if judge is None else bool(judge)
    if use_judge:
        if isinstance(judge, bool) or judge is None:
            from learnloop.scoring.judge import OpenAICompatibleClient

            client = OpenAICompatibleClient.from_settings(settings.scoring)
            own_client = True
        else:
            client = judge

    created = backend is None
    if backend is None:
        from learnloop.evaluation.backend import default_backend

        backend = default_backend(
            cand_row.base_model, device=settings.evaluation.device, data_dir=settings.data_dir
        )
    elif getattr(backend, "base_path", None) is not None and cand_row.base_model_hash:
        # A server's backend answers with its own base: measuring an adapter on another base means nothing.
        if fs.model_folder_hash(Path(backend.base_path)) != cand_row.base_model_hash:
            raise ValidationFailed(
                f"{candidate} was trained on {cand_row.base_model}, not on the base this backend serves "
                f"({backend.base_path}).",
                [("candidate", "different base model")],
            )
    try:
        backend.load_adapter(candidate, Path(cand_row.artifact_path))
        if base_row is not None:
            backend.load_adapter(base_row.id, Path(base_row.artifact_path))
        examples = _answer_all(backend, settings, items, candidate, side, client, progress, teacher_backend)
    finally:
        if teacher_backend is not None:
            teacher_backend.close()
        if own_client and hasattr(client, "close"):
            client.close()
        # One made here is closed. A shared (server's) backend keeps the adapters: names never change
        # meaning, and its alias watcher may have started serving one of them meanwhile.
        if created and hasattr(backend, "close"):
            backend.close()

    metrics = build_metrics(
        examples,
        n_resamples=settings.evaluation.bootstrap_resamples,
        seed=settings.evaluation.seed,
        rule=CombineRule.of(settings.scoring),
    )
    if side.teacher:
        # The gate asks a student to be no worse than its teacher by more than gate.teacher_margin.
        metrics["against"] = TEACHER
        metrics["teacher"] = {
            "upstream": side.upstream,
            "stored_answers": sum(1 for i in items if not i.fresh),
            "fresh_answers": sum(1 for i in items if i.fresh),
        }
    policy = policy or policy_for(settings, cand_row.loop)
    verdict = gate(metrics, policy)
    return _store(db, cand_row, side, dataset_id, scenario, metrics, examples, verdict, policy)


def _answer_one(
    backend: ServingBackend,
    settings: Settings,
    item: Item,
    candidate: str,
    side: Side,
    client: JudgeClient | None,
    index: int = 0,
    teacher_backend: ServingBackend | None = None,
) -> dict[str, Any]:
    answers: dict[str, dict[str, Any]] = {}
    if side.model is None:
        fresh = item.fresh and teacher_backend is not None
        answers["baseline"] = (
            _generate(teacher_backend, side.name, item, settings) if fresh else _stored(item)
        )
    # Alternate which side answers first, so neither always meets a warm (or cold) cache.
    order = [("candidate", candidate), ("baseline", side.model)]
    for key, model in order if index % 2 == 0 else order[::-1]:
        if model is not None:
            answers[key] = _generate(backend, model, item, settings)
    example: dict[str, Any] = {
        "id": item.id,
        "scenario": item.scenario,
        "prompt": message_text(item.prompt[-1])[:1000] if item.prompt else "",
    }
    for key, ans in answers.items():
        reward, aspects = _score(settings, item, ans["text"])
        example[key] = {
            **ans,
            "text": ans["text"][:_ANSWER_CHARS],
            "chars": len(ans["text"]),
            "reward": reward,
            "aspects": aspects,
            "cost": _side_cost(settings, ans, candidate if key == "candidate" else side),
        }
    example["diff"] = example["candidate"]["reward"] - example["baseline"]["reward"]
    if client is not None:
        example["judge"] = judge_pair(
            client,
            item.prompt,
            answers["candidate"]["text"],
            answers["baseline"]["text"],
            max_chars=settings.scoring.judge_max_candidate_chars,
        )
    return example


def _answer_all(
    backend: ServingBackend,
    settings: Settings,
    items: Sequence[Item],
    candidate: str,
    side: Side,
    client: JudgeClient | None,
    progress: Callable[[int, int], None] | None,
    teacher_backend: ServingBackend | None = None,
) -> list[dict[str, Any]]:
    """Both sides' answers for every item, in item order.

    With ``[evaluation] concurrency`` > 1 several items are in flight at once (the local backend
    batches them): more throughput, and latencies measured under that load for both sides alike.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, settings.evaluation.concurrency)
    if items:  # one unmeasured answer per side first: the first call of a model pays its warm-up
        for model in {candidate, side.model} - {None}:
            _generate(backend, model, items[0], settings)
    if workers == 1:
        examples = []
        for i, item in enumerate(items):
            examples.append(_answer_one(backend, settings, item, candidate, side, client, i, teacher_backend))
            if progress is not None:
                progress(i + 1, len(items))
        return examples
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="learnloop-eval") as pool:
        futures = [
            pool.submit(_answer_one, backend, settings, item, candidate, side, client, i, teacher_backend)
            for i, item in enumerate(items)
        ]
        results = []
        for f in futures:
            results.append(f.result())
            done += 1
            if progress is not None:
                progress(done, len(items))
    return results


def _store(
    db: Database,
    cand_row: ModelVersion,
    side: Side,
    dataset_id: int,
    scenario: str | None,
    metrics: dict[str, Any],
    examples: list[dict[str, Any]],
    verdict: GateVerdict,
    policy: GatePolicy,
) -> int:
    gate_record = {**verdict.as_dict(), "policy": policy.model_dump(mode="json")}
    with db.session() as session:
        ev = Evaluation(
            candidate_id=cand_row.id,
            baseline_id=side.name,
            dataset_id=dataset_id,
            scenario=scenario,
            metrics=metrics,
            report={"examples": examples},
            gate=gate_record,
            verdict=verdict.verdict,
        )
        session.add(ev)
        session.flush()
        row = session.get(ModelVersion, cand_row.id, with_for_update=True)
        if row is not None:
            row.gate = {**gate_record, "evaluation_id": ev.id, "baseline": side.name}
            # The registry's one rule for states: a verdict moves only a version that never served
            # between candidate and rejected (a later evaluation with more evidence can clear it).
            row.state = state_of(row, row.id in serving_ids(session))
        o = metrics["overall"]
        record_event(
            session,
            "evaluation.finished",
            f"{cand_row.id} vs {side.name}: reward {o['reward_candidate']:.4f} vs {o['reward_baseline']:.4f} "
            f"over {o['n']} examples; gate: {verdict.verdict}",
            version_id=cand_row.id,
            loop=cand_row.loop,
            data={"evaluation_id": ev.id, "verdict": verdict.verdict},
        )
        if verdict.verdict == REJECT:
            record_event(
                session,
                "version.rejected",
                f"{cand_row.id} rejected by the gate: {verdict.reasons[0]}",
                level="warning",
                version_id=cand_row.id,
                loop=cand_row.loop,
                data={"evaluation_id": ev.id, "reasons": verdict.reasons},
            )
        return ev.id
