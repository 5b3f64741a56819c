"""The one typed place for configuration: ``Settings`` here, the ``[[loops]]`` and ``[daemon]``
sections in ``loops``, a training run's config in ``training``, the strict base all of them share in
``base``. It imports no stage.

Precedence (lowest to highest): the defaults below < ``learnloop.toml`` (in the
working directory, or the file named by ``LEARNLOOP_CONFIG``) < ``LEARNLOOP_*``
environment variables. Nested sections use ``__`` in env var names, e.g.
``LEARNLOOP_CAPTURE__SAMPLE_RATE=0.5``; a few top-level settings
(``LEARNLOOP_DATABASE_URL``, ``LEARNLOOP_DATA_DIR``, ``LEARNLOOP_API_TOKEN``)
are flat.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from learnloop.config.base import DEFAULT_MAX_LENGTH, ConfigModel
from learnloop.config.loops import DaemonSettings, LoopConfig
from learnloop.config.origin import DEFAULT_CONFIG_FILE, ConfigOrigin, config_origin  # noqa: F401 (re-exported)
from learnloop.config.scoring import CombineSettings as CombineSettings  # re-exported
from learnloop.config.scoring import FeedbackWeights as FeedbackWeights  # re-exported
from learnloop.config.scoring import ScoringSettings
from learnloop.errors import ConfigError, problems_text
from learnloop.masking import DatabaseUrl, SecretEnvName, SecretUrl, mask_database_url, plain, remember
from learnloop.paths import data_dir


class ServerSettings(ConfigModel):
    host: str = Field("127.0.0.1", description="Interface the server binds to.")
    port: int = Field(8377, ge=1, le=65535, description="TCP port of the server.")
    ingest_queue_size: int = Field(
        64,
        ge=1,
        description="Ingest requests allowed in flight at once; beyond this the API "
        "answers 429 with Retry-After.",
    )
    max_batch_size: int = Field(5000, ge=1, description="Most records accepted in one ingest request.")
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes; larger ones get 413."
    )
    inbox_poll_seconds: float = Field(
        2.0, gt=0, description="How often the server scans the inbox folder for JSONL files."
    )
    watch_inbox: bool = Field(
        True, description="Whether `learnloop serve` imports files dropped into the inbox folder."
    )
    otlp_run_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long LLM call spans received on /otlp/v1/traces wait for their trace's root span "
        "before they are stored without it (the root is in another service, or never ended).",
    )
    max_inbox_file_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest inbox file imported, in bytes (unset: "
        "server.max_request_bytes); larger ones go to failed/.",
    )
    read_token: SecretStr | None = Field(
        None,
        description="When set, read routes (/v1/trajectories, /v1/stats, /v1/status) need 'Authorization: "
        "Bearer <token>' with this token or the write token; /healthz stays open but says only what is up.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web origins besides the server's own (e.g. 'https://learnloop.example.com' of a "
        "proxy in front) whose pages may write, and whose host names the server answers to; other "
        "cross-site writes get 403.",
    )
    feedback_wait_seconds: float = Field(
        5.0,
        ge=0,
        description="How long feedback or scores naming an answer this server just served wait for "
        "its trajectory when its write was delayed (it is written before the answer ends otherwise).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="The server's log on stderr: 'text' (one line a person reads) or 'json' (one JSON "
        "object a line, for a log collector). `learnloop serve --log-format` overrides it.",
    )
    access_log_polls: bool = Field(
        False,
        description="Also log every request of the dashboard's polls and streams, /v1/status, /healthz, "
        "/metrics and the static assets (off: only other requests are access-logged).",
    )
    shutdown_grace_seconds: float = Field(
        3.0,
        ge=0,
        le=60,
        description="On Ctrl-C or SIGTERM, how long requests in flight may finish before they are cut "
        "(a streamed answer ends with an error event saying the server is shutting down).",
    )


class CaptureSettings(ConfigModel):
    sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of trajectories kept (always-keep rules override)."
    )
    batch_size: int = Field(256, ge=1, description="Records the background writer sends in one batch.")
    flush_interval: float = Field(
        0.5, gt=0, description="Seconds the writer waits to fill a batch before sending it anyway."
    )
    queue_size: int = Field(
        100_000, ge=1, description="Records held in memory before new ones go straight to the spool."
    )
    shutdown_timeout: float = Field(
        5.0, ge=0, description="Seconds allowed at interpreter exit to flush pending records."
    )
    unknown_trajectory_wait: float = Field(
        5.0,
        ge=0,
        description="Seconds the writer keeps retrying feedback or scores that name a trajectory the "
        "store does not have yet (one just served, still being written) before setting them aside.",
    )
    server_url: str | None = Field(
        None,
        description="When set, the SDK sends records over HTTP to this learnloop server "
        "instead of writing the database.",
    )
    window: str = Field(
        "1h",
        pattern=r"^\s*\d+\s*[mhd]\s*$",
        description="Length of the time window a trajectory is assigned to when none is given: Nm, "
        "Nh or Nd (ids like 2026-12-02T14).",
    )
    source_sample_rates: dict[
        Literal["production", "teacher", "synthetic", "served"], Annotated[float, Field(ge=0.0, le=1.0)]
    ] = Field(
        default_factory=dict,
        description="Sample rate per trajectory source (production, teacher, synthetic, served); "
        "sources not named use sample_rate.",
    )
    keep_confident: float | None = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Keep every trajectory whose metadata 'confidence' is at least this, "
        "whatever the sample rate (unset: no such rule).",
    )


class DatasetSettings(ConfigModel):
    holdout_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of prompts frozen into the held-out split at capture time."
    )
    max_length: int = Field(
        DEFAULT_MAX_LENGTH,
        ge=16,
        description="Token length training truncates to; datasets report against it.",
    )
    tokenizer: str | None = Field(
        None,
        description="HF model or tokenizer folder used to count tokens; unset: approximate count "
        "(4 characters a token + 4 a message).",
    )
    sft_min_reward: float | None = Field(
        None, description="Default least combined reward for SFT examples (unset: no reward bar)."
    )
    sft_top_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Default share of best-rewarded trajectories SFT keeps (unset: no ranking cut).",
    )
    dpo_min_margin: float = Field(
        0.1, ge=0.0, description="Least reward gap between the chosen and the rejected answer of a DPO pair."
    )
    dpo_max_pairs_per_group: int = Field(
        4, ge=1, description="Most DPO pairs taken from one prompt or group (each trajectory used once)."
    )
    grpo_min_group_size: int = Field(2, ge=2, description="Least scored trajectories a GRPO group needs.")
    dedup: bool = Field(True, description="Drop exact and near-duplicate examples.")
    near_duplicate_threshold: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard similarity (word 3-grams) at which two "
        "examples count as near duplicates.",
    )
    replay_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each new training dataset drawn from earlier datasets' "
        "examples, against forgetting.",
    )
    chunk_size: int = Field(
        1000, ge=10, description="Rows fetched from the database at a time while building."
    )


class TrainingSettings(ConfigModel):
    base_model: str = Field(
        "smollm2", description="Base model: a prepared model name, an HF folder or a GGUF file."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    max_truncated_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="`train run` refuses to start when more than this share of examples would be truncated "
        "(--allow-truncation overrides).",
    )


class WatchSettings(ConfigModel):
    disk_floor_gb: float = Field(
        1.0,
        ge=0,
        description="Free space the data dir needs; below it /readyz answers 503 and `disk_low` alerts fire.",
    )
    alert_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often the server evaluates the [[alerts]] rules and sends pending alerts.",
    )
    alert_max_attempts: int = Field(
        6, ge=1, le=50, description="Tries per alert delivery before it is marked failed."
    )
    alert_backoff_s: float = Field(
        5.0, ge=0, description="Seconds before the first retry of a failed delivery; doubles after each."
    )
    alert_timeout_s: float = Field(10.0, gt=0, description="Seconds a webhook has to answer.")
    metrics_window_hours: float = Field(
        168.0, gt=0, description="Window of the reward means /metrics reports per scenario."
    )


class AlertRule(ConfigModel):
    """One `[[alerts]]` entry: when it fires and the webhook it goes to."""

    name: str = Field(description="Unique name of the rule (part of each alert's dedup key).")
    when: Literal[
        "job_failed",
        "loss_spike",
        "loss_nan",
        "disk_low",
        "no_trajectories",
        "gate_rejected",
        "promotion",
        "rollback",
        "canary_fallback",
    ] = Field(description="The condition the rule watches.")
    url: SecretUrl = Field(description="Webhook the alert is POSTed to (secret: shown as its host only).")
    format: Literal["json", "slack"] = Field(
        "json", description="'json': the full alert; 'slack': only {'text': ...}."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra HTTP headers (e.g. an Authorization); values are secret."
    )
    spike_factor: float = Field(
        3.0, gt=1, description="loss_spike: the newest loss exceeds this many times the median of the window."
    )
    window: int = Field(20, ge=3, description="loss_spike: how many recent steps make the baseline.")
    min_free_gb: float | None = Field(
        None, ge=0, description="disk_low: floor in GB (default: watch.disk_floor_gb)."
    )
    hours: float = Field(
        24.0, gt=0, description="no_trajectories: hours without a new trajectory before it fires."
    )
    repeat_hours: float = Field(
        24.0,
        gt=0,
        description="disk_low/no_trajectories: while the condition lasts, alert again after this long.",
    )


class RegistrySettings(ConfigModel):
    keep_versions: int = Field(
        20,
        ge=0,
        description="Versions whose adapter files are kept (newest first) besides every version that ever "
        "served, the loop heads and the alias targets; older ones keep their record, "
        "their files are pruned. 0 keeps all.",
    )


class EvaluationSettings(ConfigModel):
    max_new_tokens: int = Field(256, ge=1, description="Most tokens generated per held-out answer.")
    limit: int | None = Field(
        None, ge=1, description="Most held-out examples an evaluation uses (unset: all)."
    )
    judge: bool = Field(
        False,
        description="Also ask the LLM judge ([scoring] judge_*) which answer is better, in both orders.",
    )
    bootstrap_resamples: int = Field(
        9999, ge=100, description="Bootstrap resamples for the paired 95% intervals."
    )
    seed: int = Field(0, description="Seed of generation and of the bootstrap.")
    device: str = Field(
        "auto", description="Device of the evaluation's local backend: 'auto', 'cpu', 'cuda'."
    )
    concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Held-out examples answered at once: the local backend decodes them as one batch "
        "(in a server's process, in its background slots beside live requests); 1 keeps latencies unloaded.",
    )
    upstream_budget: int = Field(
        0,
        ge=0,
        description="Against an upstream teacher: most fresh requests an evaluation may send it for "
        "held-out prompts that have no stored teacher answer (0: the stored teacher answers only).",
    )


class GatePolicy(ConfigModel):
    """When a candidate may replace the baseline. The gate is a pure function of an evaluation and this."""

    min_examples: int = Field(
        30, ge=1, description="Fewest held-out examples a verdict may rest on (fewer: inconclusive)."
    )
    metric: str = Field(
        "reward",
        min_length=1,
        max_length=128,
        description="What must improve: 'reward' (the paired difference of the combined reward, "
        "scoring's explicit-first rule), 'judge_win_rate' (the judge's win rate over 0.5), or the name "
        "of one aspect (a reward function, e.g. your verifier 'order_json'): its paired difference.",
    )
    margin: float = Field(
        0.0, description="The lower bound of the 95% interval of the improvement must exceed this."
    )
    teacher_margin: float = Field(
        0.05,
        ge=0,
        description="Against a teacher (an upstream the alias serves, or --baseline teacher) the gate asks "
        "for non-inferiority: the lower bound of the candidate's difference must clear -teacher_margin "
        "(margin is for beating a model of your own). The canary's live check uses it too.",
    )
    max_json_validity_drop: float = Field(
        0.02, ge=0, description="Largest drop in the share of valid JSON answers allowed."
    )
    max_refusal_increase: float = Field(0.02, ge=0, description="Largest rise in the refusal rate allowed.")
    max_p95_latency_ratio: float = Field(
        1.5, gt=0, description="Candidate p95 latency may be at most this times the baseline's."
    )
    latency_slack_ms: float = Field(
        20.0,
        ge=0,
        description="p95 latency rises smaller than this many ms never fail the gate (timer noise).",
    )
    max_scenario_regression: float = Field(
        0.05,
        ge=0,
        description="Largest drop in mean reward allowed on any one scenario "
        "(of at least min_scenario_examples).",
    )
    min_scenario_examples: int = Field(
        10, ge=1, description="Scenarios with fewer examples are not checked for regression."
    )


class Price(ConfigModel):
    """What 1,000 tokens cost (in any one currency, used for every figure)."""

    input: float = Field(0.0, ge=0, description="Price of 1,000 prompt tokens.")
    output: float = Field(0.0, ge=0, description="Price of 1,000 completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1000.0


UPSTREAM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,54}$"


class UpstreamSettings(ConfigModel):
    """One `[[upstreams]]` entry: an OpenAI-compatible endpoint an alias can serve (`upstream:<name>`)."""

    name: str = Field(
        pattern=UPSTREAM_NAME,
        description="Unique name; an alias serves it as the target 'upstream:<name>'.",
    )
    base_url: str = Field(
        description="The endpoint up to /v1, as OpenAI clients take it: https://api.openai.com/v1, a vLLM, "
        "Ollama or llama.cpp server's http://host:port/v1, or another learnloop's /v1."
    )
    model: str = Field(min_length=1, description="Model name sent upstream (e.g. gpt-4o-mini).")
    api_key_env: SecretEnvName | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (sent as a Bearer token). "
        "The key itself never appears in config, status, the dashboard, logs, errors or metrics.",
    )
    timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds an upstream answer may take (a stream: between two chunks); 504 after.",
    )
    max_concurrency: int = Field(
        32,
        ge=1,
        description="Requests in flight to this upstream at once; more wait for a slot up to `timeout`, "
        "then get 429.",
    )
    price_per_1k_tokens: Price | None = Field(
        None, description="{input = ..., output = ...}: its price, for cost figures (unset: not priced)."
    )
    confidence_from_logprobs: bool = Field(
        False,
        description="Ask it for logprobs and store exp(mean token logprob) as each answer's confidence "
        "(what capture.keep_confident keeps); a client that did not ask gets no logprobs.",
    )

    @model_validator(mode="after")
    def _url(self) -> UpstreamSettings:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/")
        return self


class CanarySettings(ConfigModel):
    """How a version that passed the gate against a teacher (an upstream its alias serves) takes the
    traffic: in steps, its live reward checked against the teacher's at each."""

    enabled: bool = Field(
        True,
        description="Move traffic in steps, watching live rewards (off: a pass serves the version at once).",
    )
    steps: list[float] = Field(
        default_factory=lambda: [0.1, 0.5, 1.0],
        description="The version's share of users at each step, rising, ending at 1.0 (users stay on "
        "their side as the share grows).",
    )
    min_step_seconds: float = Field(300.0, ge=0, description="Least time at each step before it may move on.")
    min_answers: int = Field(
        30,
        ge=2,
        description="Least scored answers of the version at a step (and of the teacher) before the step "
        "is judged.",
    )
    teacher_window: int = Field(
        500,
        ge=2,
        description="The teacher's live reward is the mean of its latest this many scored answers.",
    )
    margin: float | None = Field(
        None,
        ge=0,
        description="A live reward this far below the teacher's returns the traffic to the teacher "
        "(unset: the loop's gate teacher_margin).",
    )

    @model_validator(mode="after")
    def _steps(self) -> CanarySettings:
        s = self.steps
        if not s or any(not 0 < x <= 1 for x in s) or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != 1.0:
            raise ValueError(f"steps must rise within (0, 1] and end at 1.0, got {s}")
        return self


class ServingSettings(ConfigModel):
    base_model: str | None = Field(
        None,
        description="Base model `learnloop serve` answers with: a prepared name, an HF folder or a GGUF file "
        "(unset: the prepared `smollm2` if there is one, else OpenAI routes are off).",
    )
    backend: Literal["local", "vllm"] = Field(
        "local", description="'local' (transformers + peft in-process) or 'vllm'."
    )
    vllm_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of the vLLM server (backend = 'vllm')."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' (local backend).")
    dtype: str = Field("auto", description="'auto', 'float32', 'bfloat16' or 'float16' (local backend).")
    max_batch_size: int = Field(
        8, ge=1, description="Sequences decoded together in one batch (local backend)."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch may use (process-wide; unset: torch's default). 1 is often fastest "
        "for small models on a busy CPU.",
    )
    max_queued: int = Field(
        64, ge=0, description="Requests allowed to wait for a batch slot; beyond this: 429 with Retry-After."
    )
    default_max_tokens: int = Field(
        512, ge=1, description="Completion tokens when a request names no max_tokens."
    )
    max_adapters: int = Field(
        16,
        ge=1,
        description="Versions kept loaded; past this the least recently used one no alias names is unloaded.",
    )
    alias_poll_seconds: float = Field(
        0.25, gt=0, description="How often the server re-reads the alias rows to converge on them."
    )
    capture: bool = Field(
        True, description="Record every served request and answer as a trajectory (source = served)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, the OpenAI routes need 'Authorization: Bearer "
        "<key>' (else api_token, when set).",
    )
    price_per_1k_tokens: Price | None = Field(
        None,
        description="{input = ..., output = ...}: what your own model's tokens cost you (hardware), "
        "set against an upstream's price in the cost saved (unset: 0).",
    )


class Settings(BaseSettings):
    """All of learnloop's settings. `learnloop config` prints them."""

    model_config = SettingsConfigDict(
        env_prefix="LEARNLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".learnloop",
        description="Where the SQLite database, adapters, checkpoints, datasets, spool and inbox live.",
    )
    database_url: DatabaseUrl | None = Field(
        None,
        description="SQLAlchemy URL; default is a SQLite file in the data dir. PostgreSQL in production "
        "(its password is secret: shown hidden).",
    )
    api_token: SecretStr | None = Field(
        None, description="When set, write requests must carry 'Authorization: Bearer <token>'."
    )
    project: str = Field("default", description="Project name stamped on captured trajectories.")

    server: ServerSettings = Field(default_factory=ServerSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    datasets: DatasetSettings = Field(default_factory=DatasetSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    loops: list[LoopConfig] = Field(
        default_factory=list, description="[[loops]]: what the daemon learns from, how and when."
    )
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    upstreams: list[UpstreamSettings] = Field(
        default_factory=list,
        description="[[upstreams]]: OpenAI-compatible providers an alias can serve (`upstream:<name>`), "
        "their answers captured as teacher data.",
    )
    canary: CanarySettings = Field(default_factory=CanarySettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    alerts: list[AlertRule] = Field(
        default_factory=list, description="[[alerts]] rules: conditions and the webhooks they notify."
    )

    @model_validator(mode="after")
    def _remember_secrets(self) -> Settings:
        # Declared secret by their types (learnloop.masking): scrubbed from logs and errors from now on.
        remember(self)
        return self

    @model_validator(mode="after")
    def _unique_loop_names(self) -> Settings:
        names = [loop.name for loop in self.loops]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"loops: the name {dup[0]!r} is used twice; each [[loops]] needs its own name")
        ups = [u.name for u in self.upstreams]
        dup = sorted({n for n in ups if ups.count(n) > 1})
        if dup:
            raise ValueError(
                f"upstreams: the name {dup[0]!r} is used twice; each [[upstreams]] needs its own"
            )
        for loop in self.loops:
            if loop.canary:
                CanarySettings(**{**self.canary.model_dump(), **loop.canary})
        return self

    @model_validator(mode="after")
    def _loop_gates(self) -> Settings:
        # A loop's gate overrides [gate] key by key: check the result now, not when the loop's
        # first candidate reaches the gate after hours of training.
        for i, loop in enumerate(self.loops):
            if loop.gate:
                try:
                    GatePolicy.model_validate({**self.gate.model_dump(), **loop.gate})
                except ValidationError as exc:
                    raise ValueError(
                        f"loops[{i}] ({loop.name}): gate: {problems_text(exc)} "
                        f"(the keys of [gate]: {', '.join(GatePolicy.model_fields)})"
                    ) from None
        return self

    def upstream(self, name: str) -> UpstreamSettings | None:
        """The ``[[upstreams]]`` entry called ``name`` (None when there is none)."""
        return next((u for u in self.upstreams if u.name == name), None)

    def canary_for(self, loop: str | None) -> CanarySettings:
        """``[canary]``, overridden by that loop's ``canary = {...}``."""
        for entry in self.loops:
            if entry.name == loop and entry.canary:
                return CanarySettings(**{**self.canary.model_dump(), **entry.canary})
        return self.canary

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("LEARNLOOP_CONFIG", DEFAULT_CONFIG_FILE))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return plain(self.database_url)
        return f"sqlite:///{data_dir(self.data_dir).database}"

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain data with every secret masked (for `learnloop config` and the API): the
        secret types mask themselves in a JSON dump (see learnloop.masking)."""
        data = self.model_dump(mode="json")
        data["database_url"] = mask_database_url(self.resolved_database_url)
        return data


def load_settings(**overrides: Any) -> Settings:
    """Build settings from defaults, the TOML file and the environment; report every problem at once."""
    config_file = os.environ.get("LEARNLOOP_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"LEARNLOOP_CONFIG points at {config_file!r}, which is not a file.")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = problems_text(exc, limit=50)
        raise ConfigError(
            f"Invalid configuration ({problems}). Check learnloop.toml and LEARNLOOP_* environment variables."
        ) from None
    except Exception as exc:  # a malformed TOML file raises before validation
        raise ConfigError(f"Could not read configuration: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. Tests and embedders pass Settings explicitly instead."""
    return load_settings()
