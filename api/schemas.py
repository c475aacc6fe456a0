"""Response shapes of the API, for the OpenAPI document (routes answer pre-rendered JSON)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = Field(
        None, description="Each with loc (path into the request), msg and type.")


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    aliases: dict[str, str]
    default_version: str


class ModelDetail(BaseModel):
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


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


class WebhookAttempt(BaseModel):
    at: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class WebhookView(BaseModel):
    url: str
    events: list[str]
    state: str = Field(description="pending | delivering | delivered | failed")
    attempts: list[WebhookAttempt] = []


class JobError(BaseModel):
    type: str
    message: str


class Job(BaseModel):
    """A job as GET /v1/jobs/{id} returns it (and webhooks carry in ``data``)."""

    id: str
    status: JobStatus
    model: str
    version: str
    n_inputs: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    error: JobError | None
    metadata: dict[str, Any] | None
    links: dict[str, str]
    outputs: list[dict[str, Any]] | None = Field(
        None, description="One entry per input row, in input order (when succeeded).")
    webhook: WebhookView | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    model: str
    version: str
    n_inputs: int
    created_at: str
    links: dict[str, str]


class PredictResult(BaseModel):
    outputs: list[dict[str, Any]]
    model: str
    version: str
    job_id: str


class BatchStats(BaseModel):
    batches: int
    predict_calls: int
    jobs: int
    rows: int
    jobs_per_batch: dict[str, int] = Field(description="Histogram: batch size in jobs -> count.")
    recent: list[dict[str, int]] = Field(description="Newest first: jobs and rows per batch.")
