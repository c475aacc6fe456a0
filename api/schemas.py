"""Response shapes of the API, for the OpenAPI document (routes answer pre-rendered JSON)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from predq.shared.registry.runtimes import RuntimeRecord


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
    runtime: RuntimeRecord = Field(
        description="What computes the outputs (sklearn or an accelerated runtime such as "
                    "treelite), chosen at push, with its verification against scikit-learn "
                    "and the speed-up measured then.")


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


class WebhookAttempt(BaseModel):
    """One delivery attempt: the receiver's HTTP status, or the class of error that kept it
    from getting one (Timeout, ConnectError, BlockedAddress, ...)."""

    at: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class WebhookView(BaseModel):
    """A job's webhook and its delivery log. No secret or signature is ever shown."""

    url: str
    events: list[str]
    state: Literal["pending", "delivering", "delivered", "failed", "skipped"] = Field(
        description="pending | delivering | delivered | failed; skipped when the job ended "
                    "without an event the webhook asks for (cancelled, expired, ...)")
    attempts: list[WebhookAttempt] = []
    webhook_id: str | None = Field(
        None, description="The webhook-id header: the same on every retry and redelivery.")
    next_attempt_at: str | None = Field(None, description="When a retry is due.")
    detail: str | None = Field(None, description="Why the delivery failed for good.")


class JobError(BaseModel):
    type: str
    message: str


class JobAccepted(BaseModel):
    """The 202 answer to a submitted job."""

    id: str
    status: JobStatus
    model: str
    version: str
    n_inputs: int
    created_at: str
    links: dict[str, str]


class Job(JobAccepted):
    """A job as GET /v1/jobs/{id} returns it (and webhooks carry in ``data``)."""

    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    error: JobError | None
    metadata: dict[str, Any] | None
    outputs: list[dict[str, Any]] | None = Field(
        None, description="One entry per input row, in input order (when succeeded).")
    webhook: WebhookView | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None


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


class WebhookEvent(BaseModel):
    """The body of every webhook request (signed as the Standard Webhooks spec says)."""

    type: Literal["job.completed", "job.failed"]
    timestamp: str = Field(description="When this attempt was sent (ISO 8601, UTC).")
    data: Job = Field(description="The job exactly as GET /v1/jobs/{id} returns it.")


class DeadLetter(BaseModel):
    job_id: str
    event: str | None
    url: str | None
    webhook_id: str | None
    state: str | None
    failed_at: str
    n_attempts: int
    detail: str | None
    last_attempt: WebhookAttempt | None


class DeadLetters(BaseModel):
    total: int = Field(description="Dead letters kept (for the result TTL).")
    items: list[DeadLetter] = Field(description="Newest first.")
