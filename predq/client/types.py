"""Typed results: pydantic models of what the API answers (the OpenAPI document's shapes).

They mirror the server's response schemas field for field (a test compares them with the
OpenAPI document), and allow extra fields, so a newer server never breaks an older client.
Only pydantic is needed: nothing here imports the server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
BatchStatus = Literal["validating", "queued", "running", "succeeded", "failed", "cancelled",
                      "expired"]
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelSummary(_Model):
    """One entry of ``GET /v1/models``."""

    name: str
    versions: list[str]
    aliases: dict[str, str]
    default_version: str


class ModelDetail(_Model):
    """``GET /v1/models/{name}``: the model version's schema, task and provenance."""

    name: str
    version: str
    versions: list[str]
    aliases: dict[str, str]
    default_version: str
    task: Literal["classification", "regression"]
    estimator: str
    features: list[dict[str, Any]]
    classes: list[Any] | None
    accepts_missing: bool
    outputs: list[str]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    sha256: str
    format: str
    created_at: str
    library_versions: dict[str, str]
    runtime: dict[str, Any] | None = None
    """What computes the outputs: the runtime chosen and verified at push."""


class JobError(_Model):
    type: str
    message: str


class WebhookAttempt(_Model):
    at: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class WebhookView(_Model):
    url: str
    events: list[str]
    state: str
    attempts: list[WebhookAttempt] = []
    webhook_id: str | None = None
    next_attempt_at: str | None = None
    detail: str | None = None


class JobAccepted(_Model):
    """The 202 answer to a submitted job."""

    id: str
    status: JobStatus
    model: str
    version: str
    n_inputs: int
    created_at: str
    links: dict[str, str]


class JobInfo(JobAccepted):
    """A job as ``GET /v1/jobs/{id}`` returns it."""

    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = None
    error: JobError | None = None
    metadata: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None
    webhook: WebhookView | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None


class PredictResult(_Model):
    """The 200 answer of ``POST /v1/models/{name}/predict``."""

    outputs: list[dict[str, Any]]
    model: str
    version: str
    job_id: str


class FileInfo(_Model):
    """An uploaded file (``POST /v1/files``, ``GET /v1/files/{id}``)."""

    id: str
    object: str = "file"
    bytes: int | None = None
    """Size of an upload (None for a batch's output, rendered when downloaded)."""
    format: str
    sha256: str | None = None
    created_at: str
    expires_at: str | None = None
    purpose: str = "upload"
    """``upload``, or what a batch wrote (``output``, ``errors``)."""
    filename: str | None = None
    n_rows: int | None = None
    columns: list[str] | None = None
    batch_id: str | None = None
    links: dict[str, str] = {}


class BatchCounts(_Model):
    total: int | None = None
    done: int = 0
    failed: int = 0


class BatchChunks(_Model):
    total: int | None = None
    done: int = 0


class BatchInfo(_Model):
    """A batch as ``GET /v1/batches/{id}`` returns it."""

    id: str
    object: str = "batch"
    status: BatchStatus
    model: str
    version: str
    sha256: str | None = None
    id_column: str | None = None
    on_error: Literal["skip", "fail"] = "skip"
    output_format: str | None = None
    counts: BatchCounts = BatchCounts()
    chunks: BatchChunks = BatchChunks()
    rows_per_second: float | None = None
    eta_seconds: float | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: Any = None
    metadata: dict[str, Any] | None = None
    webhook: Any = None
    links: dict[str, str] = {}
