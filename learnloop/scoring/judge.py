"""An LLM judge that scores a group of trajectories of one scenario relative to each other.

Any OpenAI-compatible chat-completions endpoint serves (OpenAI, vLLM, Ollama, or
learnloop's own server: it is only a base URL). The shared context of the group (the
common system prompt / task) is sent once, then each candidate numbered; the judge must
answer strict JSON with one score in [0, 1] and a rationale per candidate.

Every group outcome is recorded in the `judgments` table under a cache key (judge model +
prompt version + the group's trajectory ids and contents): a successful key is never sent
again, a failed one is retried on the next run. A group's scores are stored together with
its judgment in one transaction, or not at all.

The store is imported only by the functions that store: a training process asks the judge about
the samples of one prompt (``judge_group``) and never loads the store.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from learnloop.config import ScoringSettings
from learnloop.errors import ConfigError, LearnloopError, NotFound
from learnloop.scoring.view import TrajectoryView, message_text

if TYPE_CHECKING:
    from learnloop.store.db import Database

JUDGE_SCORE_NAME = "judge"
PROMPT_VERSION = "1"

DEFAULT_CRITERIA = (
    "How well does each candidate accomplish the task? Consider correctness, helpfulness, "
    "whether it follows the instructions, and sensible use of tools. Compare the candidates "
    "with each other: the best gets the highest score."
)

SYSTEM_PROMPT = """You are an impartial judge comparing several candidate responses to the same task.

Criteria: {criteria}

Give every candidate a score between 0.0 (worst possible) and 1.0 (perfect), relative to the
others, and a one or two sentence rationale. Answer with strict JSON only, no prose, exactly:
{{"scores": [{{"index": 1, "score": 0.0, "rationale": "..."}}, ...]}}
with one entry per candidate, indexes 1 to {n}."""


class JudgeError(LearnloopError):
    """One attempt at judging a group failed (HTTP error, timeout, or unusable output)."""


class JudgeClient(Protocol):
    """What the judge needs from an endpoint: chat messages in, the reply's text out.

    ``complete`` is called from several threads when ``judge_concurrency`` > 1.
    """

    model: str

    def complete(self, messages: list[dict[str, str]]) -> str: ...


class OpenAICompatibleClient:
    """Chat completions over HTTP (httpx) against any OpenAI-compatible base URL."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        temperature: float = 0.0,
        json_mode: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.json_mode = json_mode
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_settings(cls, config: ScoringSettings) -> OpenAICompatibleClient:
        check_judge_configured(config)
        key = config.judge_api_key.get_secret_value() if config.judge_api_key else None
        return cls(
            config.judge_base_url,  # type: ignore[arg-type]
            config.judge_model,  # type: ignore[arg-type]
            key,
            timeout=config.judge_timeout,
            temperature=config.judge_temperature,
            json_mode=config.judge_json_mode,
        )

    def complete(self, messages: list[dict[str, str]]) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        try:
            r = self._http.post("/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise JudgeError(f"judge request timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise JudgeError(f"judge request failed: {type(exc).__name__}: {exc}") from exc
        if r.status_code >= 400:
            raise JudgeError(f"judge endpoint answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError(
                f"judge endpoint answered something that is not a chat completion: {r.text[:300]}"
            ) from exc
        if not isinstance(content, str):
            raise JudgeError("judge reply has no text content")
        return content

    def close(self) -> None:
        self._http.close()


def check_judge_configured(config: ScoringSettings) -> None:
    missing = [k for k in ("judge_base_url", "judge_model") if not getattr(config, k)]
    if missing:
        raise ConfigError(
            f"No LLM judge is configured ({', '.join('scoring.' + m for m in missing)} not set). Set them in "
            "learnloop.toml under [scoring] or as LEARNLOOP_SCORING__JUDGE_BASE_URL / "
            "LEARNLOOP_SCORING__JUDGE_MODEL (any OpenAI-compatible endpoint, e.g. "
            "http://127.0.0.1:8377/v1 for learnloop's own server)."
        )


# --------------------------------------------------------------------------- prompt


def prompt_version(config: ScoringSettings) -> str:
    """PROMPT_VERSION, plus a hash of custom criteria: changing the rubric re-judges everything."""
    if not config.judge_criteria:
        return PROMPT_VERSION
    return f"{PROMPT_VERSION}+{hashlib.sha256(config.judge_criteria.encode()).hexdigest()[:8]}"


def _render(messages: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for m in messages:
        role = m.get("role", "?")
        text = message_text(m)
        if text:
            lines.append(f"[{role}] {text}")
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            args = fn.get("arguments")
            args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            lines.append(f"[{role} → tool call] {fn.get('name')}({args})")
    return "\n".join(lines)


def _shared_prefix(views: Sequence[TrajectoryView]) -> int:
    """How many leading prompt messages all candidates share (the common system prompt / task)."""
    n = min(len(v.prompt) for v in views)
    for i in range(n):
        first = views[0].prompt[i]
        if any(
            v.prompt[i].get("role") != first.get("role") or v.prompt[i].get("content") != first.get("content")
            for v in views
        ):
            return i
    return n


def build_messages(views: Sequence[TrajectoryView], config: ScoringSettings) -> list[dict[str, str]]:
    """The judge request: rubric as system message; shared context once, then numbered candidates."""
    shared = _shared_prefix(views)
    limit = config.judge_max_candidate_chars
    parts = [
        "## Shared context (identical for every candidate)",
        _render(views[0].messages[:shared]) or "(none)",
        "",
    ]
    for i, v in enumerate(views, start=1):
        body = _render(v.messages[shared:])
        if len(body) > limit:
            body = body[:limit] + f"\n…[cut: {len(body) - limit} more characters]"
        parts += [f"## Candidate {i}", body, ""]
    parts.append(f"Score all {len(views)} candidates as strict JSON.")
    system = SYSTEM_PROMPT.format(criteria=config.judge_criteria or DEFAULT_CRITERIA, n=len(views))
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(parts)}]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_judgment(text: str, n: int) -> list[tuple[float, str]]:
    """(score, rationale) per candidate, in candidate order; JudgeError says what was wrong."""
    data: Any = None
    candidates = [text.strip()]
    m = _FENCE.search(text)
    if m:
        candidates.append(m.group(1).strip())
    if "{" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for c in candidates:
        try:
            data = json.loads(c)
            break
        except ValueError:
            continue
    else:
        raise JudgeError(f"judge output is not JSON: {text[:200]!r}")
    items = data.get("scores") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise JudgeError('judge output has no "scores" list')
    if len(items) != n:
        raise JudgeError(f"judge returned {len(items)} scores for {n} candidates")
    out: dict[int, tuple[float, str]] = {}
    for pos, item in enumerate(items, start=1):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = {"score": item}
        if not isinstance(item, dict):
            raise JudgeError(f"score entry {pos} is not an object: {item!r}")
        index = item.get("index", pos)
        score = item.get("score")
        if not isinstance(index, int) or not 1 <= index <= n or index in out:
            raise JudgeError(
                f"score entry {pos} has a bad or repeated index {index!r} (want 1..{n}, each once)"
            )
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise JudgeError(f"candidate {index}: score {score!r} is not a number in [0, 1]")
        out[index] = (float(score), str(item.get("rationale") or "").strip())
    return [out[i] for i in range(1, n + 1)]


def cache_key(model: str, version: str, views: Sequence[TrajectoryView]) -> str:
    content = [
        [v.id, hashlib.sha256(json.dumps(list(v.messages), sort_keys=True, default=str).encode()).hexdigest()]
        for v in views
    ]
    payload = json.dumps({"model": model, "prompt": version, "group": content}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def judge_group(
    client: JudgeClient,
    views: Sequence[TrajectoryView],
    config: ScoringSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[tuple[float, str]], int]:
    """Ask the judge about one group, retrying HTTP errors, timeouts and bad output a bounded number of times.

    Returns (scores in candidate order, attempts used); raises JudgeError after the last attempt.
    """
    messages = build_messages(views, config)
    errors = []
    for attempt in range(1, config.judge_max_attempts + 1):
        try:
            return parse_judgment(client.complete(messages), len(views)), attempt
        except JudgeError as exc:
            errors.append(f"attempt {attempt}: {exc}")
            if attempt < config.judge_max_attempts:
                sleep(config.judge_retry_backoff * 2 ** (attempt - 1))
    raise JudgeError("; ".join(errors))


# --------------------------------------------------------------------------- runner


@dataclass
class GroupFailure:
    trajectory_ids: list[str]
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"trajectory_ids": self.trajectory_ids, "error": self.error}


@dataclass
class JudgeReport:
    scenario: str
    judge_model: str
    groups_judged: int = 0
    groups_cached: int = 0
    groups_skipped: int = 0  # smaller than judge_min_group_size
    scores_stored: int = 0
    failures: list[GroupFailure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "judge_model": self.judge_model,
            "groups_judged": self.groups_judged,
            "groups_cached": self.groups_cached,
            "groups_skipped": self.groups_skipped,
            "groups_failed": len(self.failures),
            "scores_stored": self.scores_stored,
            "failures": [f.as_dict() for f in self.failures],
        }


def plan_groups(
    views: Sequence[TrajectoryView], config: ScoringSettings
) -> tuple[list[list[TrajectoryView]], int]:
    """Candidates that answer the same task: same group id, else same prompt; cut to judge_group_size.

    Returns (groups to judge, number of groups too small to judge).
    """
    buckets: dict[str, list[TrajectoryView]] = {}
    for v in views:
        key = (
            f"g:{v.group_id}"
            if v.group_id
            else "p:"
            + json.dumps([[m.get("role"), m.get("content")] for m in v.prompt], sort_keys=True, default=str)
        )
        buckets.setdefault(key, []).append(v)
    groups, skipped = [], 0
    size = config.judge_group_size
    for members in buckets.values():
        members.sort(key=lambda v: v.id)
        # Even cuts (e.g. 9 with size 8 -> 5 + 4) so no candidate ends up alone.
        n_groups = -(-len(members) // size)
        per = -(-len(members) // n_groups)
        for i in range(0, len(members), per):
            g = members[i : i + per]
            if len(g) < config.judge_min_group_size:
                skipped += 1
            else:
                groups.append(g)
    return groups, skipped


def _score_rows(
    key: str, model: str, version: str, ids: Sequence[str], result: Mapping[str, Any]
) -> list[dict[str, Any]]:
    from learnloop.store.models import ScoreSource, utcnow

    now = utcnow()
    return [
        {
            "trajectory_id": tid,
            "name": JUDGE_SCORE_NAME,
            "value": float(s["score"]),
            "source": ScoreSource.judge,
            "version": version,
            "judge_model": model,
            "rationale": s.get("rationale") or None,
            "idempotency_key": f"judge:{key}:{tid}",
            "created_at": now,
        }
        for tid, s in zip(ids, result["scores"], strict=True)
    ]


def judge_scenario(
    db: Database,
    scenario: str,
    config: ScoringSettings,
    *,
    client: JudgeClient | None = None,
    max_groups: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JudgeReport:
    """Judge the not-yet-judged trajectories of ``scenario`` group by group.

    A trajectory counts as judged once it has a `judge` score from this judge model and
    prompt version. No database transaction is held while the judge is asked.
    """
    from sqlalchemy import and_, exists, not_, select

    from learnloop.store.models import Score, ScoreSource, Trajectory

    own_client = client is None
    if client is None:
        client = OpenAICompatibleClient.from_settings(config)
    model = client.model
    version = prompt_version(config)
    report = JudgeReport(scenario=scenario, judge_model=model)
    try:
        with db.read_session() as s:
            if s.scalar(select(Trajectory.id).where(Trajectory.scenario == scenario).limit(1)) is None:
                raise NotFound(
                    f"No trajectories in scenario {scenario!r}. `learnloop stats` lists the scenarios."
                )
            judged = exists().where(
                and_(
                    Score.trajectory_id == Trajectory.id,
                    Score.source == ScoreSource.judge,
                    Score.judge_model == model,
                    Score.version == version,
                )
            )
            rows = s.scalars(select(Trajectory).where(Trajectory.scenario == scenario, not_(judged))).all()
            views = [TrajectoryView.from_row(r, config) for r in rows]
        groups, report.groups_skipped = plan_groups(views, config)
        if max_groups is not None:
            groups = groups[:max_groups]
        # Requests to a remote judge take seconds each: several groups are in flight at once.
        # Each group still commits alone, so an interruption keeps every finished group.
        pool = ThreadPoolExecutor(max_workers=max(1, min(config.judge_concurrency, len(groups) or 1)))
        try:
            futures = [pool.submit(_judge_one, db, client, g, config, model, version, sleep) for g in groups]
            for fut in as_completed(futures):
                outcome, stored, failure = fut.result()
                report.scores_stored += stored
                if outcome == "judged":
                    report.groups_judged += 1
                elif outcome == "cached":
                    report.groups_cached += 1
                elif failure is not None:
                    report.failures.append(failure)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if own_client and isinstance(client, OpenAICompatibleClient):
            client.close()
    return report


def _judge_one(
    db: Database,
    client: JudgeClient,
    group: list[TrajectoryView],
    config: ScoringSettings,
    model: str,
    version: str,
    sleep: Callable[[float], None],
) -> tuple[str, int, GroupFailure | None]:
    """Judge one group: ('judged' | 'cached' | 'failed', scores stored, failure)."""
    from sqlalchemy import select

    from learnloop.store.models import Judgment

    key = cache_key(model, version, group)
    ids = [v.id for v in group]
    with db.read_session() as s:
        cached = s.scalar(select(Judgment).where(Judgment.cache_key == key))
        cached_result = dict(cached.result) if cached is not None else None
    if cached_result is not None and cached_result.get("status") == "ok":
        with db.session() as s:
            return "cached", _store_scores(s, key, model, version, ids, cached_result), None
    previous_attempts = int(cached_result.get("attempts", 0)) if cached_result else 0
    try:
        scores, attempts = judge_group(client, group, config, sleep=sleep)
    except JudgeError as exc:
        result = {
            "status": "failed",
            "error": str(exc)[:4000],
            "attempts": previous_attempts + config.judge_max_attempts,
        }
        with db.session() as s:
            _save_judgment(s, key, model, group, result)
        return "failed", 0, GroupFailure(ids, str(exc))
    result = {
        "status": "ok",
        "prompt_version": version,
        "attempts": previous_attempts + attempts,
        "scores": [{"score": sc, "rationale": why} for sc, why in scores],
    }
    with db.session() as s:  # the judgment and all of the group's scores, or none of them
        stored = _save_judgment(s, key, model, group, result)
        return "judged", _store_scores(s, key, model, version, ids, stored), None


def _save_judgment(
    s: Any, key: str, model: str, group: Sequence[TrajectoryView], result: dict[str, Any]
) -> dict[str, Any]:
    """Insert or update the judgment for ``key``; an ok one is never overwritten.
    Returns the stored result."""
    from sqlalchemy import select

    from learnloop.store.models import Judgment, utcnow
    from learnloop.store.query import insert_ignoring_duplicates

    s.execute(
        insert_ignoring_duplicates(s, Judgment),
        [
            {
                "cache_key": key,
                "judge_model": model,
                "scenario": group[0].scenario,
                "trajectory_ids": [v.id for v in group],
                "result": result,
                "created_at": utcnow(),
            }
        ],
    )
    row = s.scalar(select(Judgment).where(Judgment.cache_key == key).with_for_update())
    if row.result.get("status") != "ok":
        row.result = result
        row.created_at = utcnow()
    return dict(row.result)


def _store_scores(
    s: Any, key: str, model: str, version: str, ids: Sequence[str], result: Mapping[str, Any]
) -> int:
    from learnloop.store.models import Score
    from learnloop.store.query import insert_ignoring_duplicates

    rows = _score_rows(key, model, version, ids, result)
    return len(s.scalars(insert_ignoring_duplicates(s, Score).returning(Score.id), rows).all())
