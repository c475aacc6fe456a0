"""All of predq's knobs, read from ``PREDQ_*`` environment variables or a ``.env`` file.

Build them with :func:`get_settings` (cached) and pass them in; nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: The .env file settings are read from (relative to the current directory).
ENV_FILE = ".env"


def default_home() -> Path:
    """predq's own directory when ``PREDQ_HOME`` is unset: ``$XDG_DATA_HOME/predq``, else
    ``~/.local/share/predq``. The same whatever the current directory."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "predq"


def _default_registry() -> Path:
    return default_home() / "registry"


Scope = Literal["jobs:write", "jobs:read", "models:read", "admin"]
ALL_SCOPES: tuple[Scope, ...] = ("jobs:write", "jobs:read", "models:read", "admin")


class ApiKeySpec(BaseModel):
    """One API key: its owner name, the sha256 hex digest of the key, and its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[Scope, ...] = ("jobs:write", "jobs:read", "models:read")


class Settings(BaseSettings):
    """Every ``PREDQ_`` setting, with a default that works out of the box on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="PREDQ_", env_file=ENV_FILE, extra="ignore", frozen=True
    )

    # -- where things are ----------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL (redis://, rediss:// or sentinel://)."
    )
    home: Path = Field(
        default_factory=default_home,
        description="predq's own directory: the default registry, and `predq up`'s Redis data, "
        "state file (`up.json`) and development key (`dev-key`).",
    )
    registry_root: Path = Field(
        default_factory=_default_registry,
        description="Directory of the model registry.",
    )
    key_prefix: str = Field(
        "predq", pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="Prefix of predq's own Redis keys (not of Celery's queues or kombu's "
        "keys: one deployment per Redis database).",
    )

    # -- queues and routing --------------------------------------------------------
    default_queue: str = Field("predq", pattern=_NAME_RE, description="Queue of predict jobs.")
    webhook_queue: str = Field(
        "predq.webhooks", pattern=_NAME_RE, description="Queue of webhook deliveries."
    )
    model_queues: dict[str, str] = Field(
        default_factory=dict,
        description='JSON map of model name to queue, e.g. {"churn": "predq.churn"}.',
    )

    # -- micro-batching ------------------------------------------------------------
    max_batch_jobs: PositiveInt = Field(256, description="Flush a batch at this many jobs.")
    max_batch_rows: PositiveInt = Field(
        20_000, description="Flush at this many rows; also the chunk size of one predict call."
    )
    max_wait_ms: float = Field(
        10.0, ge=0, description="Longest a buffered job waits for a batch while the pool is busy."
    )
    worker_concurrency: PositiveInt = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Prefork pool processes per worker (default: CPU count).",
    )
    worker_fetch_max: PositiveInt = Field(
        256, description="Most messages a worker takes from Redis in one round trip (within its "
        "prefetch window; 1: kombu's one BRPOP per message). See predq.worker.batching.transport."
    )
    model_cache_size: PositiveInt = Field(8, description="Models kept loaded per process.")
    preload_models: bool = Field(
        True, description="Load each served model's default version when a worker starts."
    )

    # -- limits ----------------------------------------------------------------------
    max_rows_per_job: PositiveInt = Field(100_000, description="Most rows in one job.")
    max_body_bytes: PositiveInt = Field(
        32 * 1024 * 1024, description="Largest request body accepted (413 above it)."
    )
    max_string_length: PositiveInt = Field(1024, description="Longest string feature value.")
    max_metadata_bytes: PositiveInt = Field(16 * 1024, description="Largest job metadata.")
    limit_concurrency: PositiveInt = Field(
        1000, description="Most concurrent connections per API process (uvicorn answers 503 "
        "text/plain beyond it)."
    )
    max_json_depth: PositiveInt = Field(
        32, le=200, description="Deepest nesting of arrays/objects in a request body (422 "
        "beyond it, checked before parsing)."
    )

    # -- results -----------------------------------------------------------------------
    result_ttl_s: PositiveInt = Field(
        86_400, description="Seconds a finished job and its result are kept."
    )
    max_job_age_s: PositiveInt = Field(
        7 * 86_400,
        description="Safety net: an unfinished job's record is dropped after this long.",
    )
    sync_wait_s: PositiveFloat = Field(
        10.0, description="Default wait of POST /predict before it answers 202."
    )
    max_wait_s: PositiveFloat = Field(60.0, description="Cap on ?wait= of GET and /predict.")

    # -- reliability -----------------------------------------------------------------
    job_time_limit_s: PositiveFloat = Field(
        300.0,
        description="Time limit of predicting one job; a job slower than this fails alone.",
    )
    max_deliveries: PositiveInt = Field(
        5, description="A job delivered this many times without finishing is failed (poison)."
    )
    visibility_timeout_s: PositiveInt = Field(
        900, description="Unacked messages of a dead worker are redelivered after this "
        "(must exceed the batch hard time limit: 2 x PREDQ_JOB_TIME_LIMIT_S plus the smaller "
        "of 10 s and PREDQ_JOB_TIME_LIMIT_S)."
    )
    reaper_interval_s: PositiveFloat = Field(
        30.0, description="How often a worker looks for jobs stuck in 'running'."
    )
    stuck_after_s: PositiveFloat = Field(
        1200.0,
        description="A job running this long is redelivered by the reaper (must exceed the "
        "batch hard time limit).",
    )
    durable_submit: bool = Field(
        False, description="Answer 202 only once the job is fsynced to Redis's AOF (WAITAOF on "
        "Redis >= 7.2; older Redis must run appendfsync always, else submits get 503).",
    )
    queue_max_rows: PositiveInt = Field(
        2_000_000, description="Rows queued per model before new jobs get 429."
    )

    # -- batch files (see README "Batch files") ---------------------------------------
    files_root: Path = Field(
        Path(".predq/files"), description="Directory of uploaded files, batch chunks and "
        "outputs; API and workers must share it."
    )
    file_ttl_s: PositiveInt = Field(
        7 * 86_400, description="Seconds an uploaded file, a batch and its output and error "
        "files are kept; then their records and disk space are freed."
    )
    max_file_bytes: PositiveInt = Field(
        2 * 1024**3, description="Largest uploaded file (after gzip decoding); 413 above it."
    )
    batch_chunk_rows: PositiveInt = Field(
        50_000, description="Rows per chunk of a batch (one Celery task each)."
    )
    batch_processes: int = Field(
        0, ge=0, description="Batch chunks a worker runs at once, each in a lane process "
        "of lower CPU priority beside the predict pool (0: as many as the pool has)."
    )

    # -- webhooks ----------------------------------------------------------------------
    webhook_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated whsec_ secrets; every one signs (rotation).",
    )
    webhook_timeout_s: PositiveFloat = Field(10.0, description="Timeout of one delivery.")
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list[float]([0, 5, 300, 1800, 7200, 18000, 36000]),
        description="Comma-separated delays of the attempts, in seconds: entry i is the "
        "delay before attempt i (the first counted from the job's end).",
    )
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or CIDRs exempt from the SSRF guard (e.g. 127.0.0.1 for dev).",
    )
    webhook_max_response_bytes: PositiveInt = Field(
        4096, description="Most bytes read of a receiver's response."
    )
    webhook_concurrency: PositiveInt = Field(
        16, description="Deliveries in flight per worker (threads beside the predict pool)."
    )

    # -- API -----------------------------------------------------------------------------
    api_keys: list[ApiKeySpec] = Field(
        default_factory=list,
        description='JSON list of {"name", "sha256", "scopes"}: keys are stored only as hashes.',
    )
    auth_enabled: bool = Field(True, description="Require Authorization: Bearer keys.")
    rate_limit: str = Field(
        "100000/minute", description="Requests per API key (per client IP without auth), in the "
        "limits library's syntax ('100/second;6000/minute'); empty: no limit. 429 beyond it."
    )
    log_json: bool = Field(False, description="Log one JSON object per line.")
    log_level: str = Field("INFO", description="Log level of api and worker.")
    log_inputs: bool = Field(False, description="Let input values (quoted by an estimator's "
                             "error message) reach the logs and Flower's task events.")

    # -- Flower ------------------------------------------------------------------------
    flower_basic_auth: str | None = Field(
        None, description="user:password for Flower; required when it listens beyond loopback."
    )

    # -- operations (see README.md § Operations) -----------------------------------------
    redis_sentinel_master: str | None = Field(
        None, description="Sentinel master name; required when redis_url is sentinel://."
    )
    redis_sentinel_password: str | None = Field(
        None, description="Password of the Sentinel nodes themselves (if they require one)."
    )
    worker_heartbeat_s: PositiveFloat = Field(
        5.0, description="Seconds between worker heartbeats; /readyz wants one within 3 of them."
    )
    worker_shutdown_grace_s: PositiveFloat = Field(
        30.0, description="After SIGTERM, seconds a worker may finish its batches before it "
        "requeues them and exits."
    )
    api_shutdown_grace_s: PositiveFloat = Field(
        10.0, description="After SIGTERM, seconds the API lets open requests finish."
    )

    @property
    def batch_time_limit_s(self) -> float:
        """The hard time limit of one batch (the soft per-call limit is
        ``job_time_limit_s``): past it, the pool process running the batch is replaced.
        Twice the soft limit plus a margin for the batch's Redis round trips (10 s, or the
        soft limit itself when that is shorter)."""
        return 2 * self.job_time_limit_s + min(10.0, self.job_time_limit_s)

    @model_validator(mode="after")
    def _check_consistent(self) -> Settings:
        """Settings that would contradict each other: refused at start-up, naming both."""
        hard = self.batch_time_limit_s
        what = (f"the batch hard time limit ({hard:g} s, from PREDQ_JOB_TIME_LIMIT_S "
                f"{self.job_time_limit_s:g} s: twice it plus min(10 s, it))")
        if self.visibility_timeout_s <= hard:
            raise ValueError(
                f"PREDQ_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s} s) must exceed {what}: "
                "Redis would redeliver a batch's messages while it still runs. Raise "
                "PREDQ_VISIBILITY_TIMEOUT_S or lower PREDQ_JOB_TIME_LIMIT_S.")
        if self.stuck_after_s <= hard:
            raise ValueError(
                f"PREDQ_STUCK_AFTER_S ({self.stuck_after_s:g} s) must exceed {what}: the "
                "reaper would redeliver jobs that are still running. Raise "
                "PREDQ_STUCK_AFTER_S or lower PREDQ_JOB_TIME_LIMIT_S.")
        return self

    @model_validator(mode="before")
    @classmethod
    def _registry_under_home(cls, data: object) -> object:
        """An explicit PREDQ_HOME moves the default registry along with it."""
        if isinstance(data, dict) and data.get("home") and not data.get("registry_root"):
            data = {**data, "registry_root": Path(data["home"]).expanduser() / "registry"}
        return data

    @field_validator("home", "registry_root")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        """Absolute, so that every message names the same directory from any cwd."""
        return v.expanduser().absolute()

    @field_validator("webhook_secrets", "webhook_allow_hosts", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _split_floats(cls, v: object) -> object:
        if isinstance(v, str):
            return [float(part) for part in v.split(",") if part.strip()]
        return v

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _check_schedule(cls, v: list[float]) -> list[float]:
        if not 1 <= len(v) <= 50 or any(not 0 <= d <= 30 * 86_400 for d in v):
            raise ValueError("the retry schedule needs 1 to 50 delays, each 0 to 30 days")
        return v

    @field_validator("webhook_secrets")
    @classmethod
    def _check_secrets(cls, v: list[str]) -> list[str]:
        import base64
        import binascii

        for secret in v:
            if not secret.startswith("whsec_"):
                raise ValueError("webhook secrets must look like whsec_<base64>")
            try:
                raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except binascii.Error as e:
                raise ValueError("webhook secret is not valid base64") from e
            if not 24 <= len(raw) <= 64:
                raise ValueError("webhook secret must hold 24 to 64 random bytes")
            if len(set(raw)) < 8:
                raise ValueError("webhook secret looks like a placeholder, not random bytes")
        return v

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, v: str) -> str:
        from limits import parse_many

        v = v.strip()
        if v:
            try:
                items = parse_many(v)
            except ValueError as e:
                raise ValueError(f"{e}: use e.g. '6000/minute' or '100/second;6000/minute'") from e
            if any(item.amount < 1 for item in items):
                raise ValueError("a rate limit must allow at least 1 request per window")
        return v

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    def queue_for(self, model: str) -> str:
        """The Celery queue that serves ``model``."""
        return self.model_queues.get(model, self.default_queue)

    def all_predict_queues(self) -> list[str]:
        return sorted({self.default_queue, *self.model_queues.values()})

    def batch_queue_for(self, model: str) -> str:
        """The lower-priority lane of ``model``'s batch chunks (its queue + ``.batch``)."""
        return self.queue_for(model) + ".batch"

    def all_batch_queues(self) -> list[str]:
        return [q + ".batch" for q in self.all_predict_queues()]



@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()


def setting_sources(env_file: str | Path | None = ENV_FILE) -> dict[str, str]:
    """Where each explicitly set setting comes from: field name -> ``"env"`` or ``".env"``.

    Settings absent from the result have their default. The environment wins over ``.env``,
    as in :class:`Settings`; names are matched case-insensitively, as pydantic-settings does.
    """
    fields = {f"PREDQ_{name}".upper(): name for name in Settings.model_fields}
    sources: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        for var, value in dotenv_values(env_file).items():
            if value is not None and var.upper() in fields:
                sources[fields[var.upper()]] = ".env"
    for var in os.environ:
        if var.upper() in fields:
            sources[fields[var.upper()]] = "env"
    return sources
