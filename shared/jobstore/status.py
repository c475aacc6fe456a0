"""The status vocabulary: every state a job, a batch or a webhook delivery can be in, once.

StrEnums, so each member is the very string stored in Redis, sent in JSON and compared in the
Lua scripts (``JobStatus.FAILED == "failed"``): the names say which thing's state they are.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job: ``queued -> running -> succeeded | failed``, ``queued|running -> cancelled``,
    ``queued -> expired`` (``cancel_after`` passed while it waited)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


#: The states a job never leaves.
TERMINAL: frozenset[str] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class BatchStatus(StrEnum):
    """A batch file being scored (API.md "Files and batches")."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


BATCH_TERMINAL: frozenset[str] = frozenset(
    {BatchStatus.SUCCEEDED, BatchStatus.FAILED, BatchStatus.CANCELLED})


class DeliveryState(StrEnum):
    """A job's (or batch's) webhook delivery (``webhook_state`` in its record)."""

    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


class WebhookEvent(StrEnum):
    """The event types a webhook is sent for."""

    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
