"""Webhook messages: Standard Webhooks signing, the payload, and the retry policy.

Plain functions with no I/O, shared by the worker (which delivers) and the API (which
documents and redelivers). The wire format follows https://www.standardwebhooks.com:

- ``webhook-id``: stable per (job, event), so a retried or redelivered message carries the
  same id and a receiver can drop duplicates;
- ``webhook-timestamp``: integer Unix seconds of this attempt;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
  configured secret, space-separated (so a secret can be rotated without downtime).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import orjson

from predq.shared.jobstore.status import JobStatus, WebhookEvent

COMPLETED, JOB_FAILED = WebhookEvent.JOB_COMPLETED.value, WebhookEvent.JOB_FAILED.value
#: The events a job can send, by the terminal status that triggers them.
EVENT_FOR_STATUS: dict[str, str] = {JobStatus.SUCCEEDED: COMPLETED, JobStatus.FAILED: JOB_FAILED}
#: Each delay of the schedule is multiplied by a uniform factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: A receiver's Retry-After is honoured up to this many seconds.
RETRY_AFTER_CAP_S = 86_400.0
#: Longest error text kept in an attempt's log entry.
MAX_ERROR_CHARS = 300

Verdict = Literal["delivered", "retry", "gone", "final"]


def event_for(status: str) -> str | None:
    """The event a job's terminal ``status`` sends (None: cancelled, expired, not ended)."""
    return EVENT_FOR_STATUS.get(status)


def webhook_id(job_id: str, event: str) -> str:
    """The message id of (job, event): the same on every attempt and every redelivery."""
    return f"msg_{job_id.replace('-', '')}_{event.rsplit('.', 1)[-1]}"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (validated by the settings)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<sig>`` per secret, space-separated.

    Raises ValueError when no secret is given: predq never sends unsigned webhooks.
    """
    if not secrets:
        raise ValueError("no webhook secret configured (PREDQ_WEBHOOK_SECRETS)")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    sigs = []
    for secret in secrets:
        digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
        sigs.append("v1," + base64.b64encode(digest).decode("ascii"))
    return " ".join(sigs)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
            ) -> dict[str, str]:
    """Every header of one delivery attempt."""
    return {
        "content-type": "application/json",
        "user-agent": "predq-webhooks/1",
        "accept-encoding": "identity",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }


def iso(ts: float) -> str:
    """Unix time as ISO 8601 UTC with microseconds and a Z (as job timestamps are)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def payload(event: str, timestamp: float, job_json: bytes) -> bytes:
    """``{"type", "timestamp", "data": <job>}``; ``job_json`` is spliced in unparsed."""
    head = orjson.dumps({"type": event, "timestamp": iso(timestamp)})
    return b"".join([head[:-1], b',"data":', job_json, b"}"])


def next_delay(attempts: int, schedule: Sequence[float], retry_after: float | None = None,
               rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None when exhausted.

    ``schedule[i]`` is the delay before attempt ``i`` (``schedule[0]``, usually 0, is the
    first attempt's), so at most ``len(schedule)`` attempts are made. The delay is jittered
    by +-JITTER and is never shorter than the receiver's ``Retry-After`` (capped at
    RETRY_AFTER_CAP_S).
    """
    if attempts >= len(schedule):
        return None
    base = max(0.0, float(schedule[attempts]))
    delay = base * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A Retry-After header (delta-seconds or HTTP-date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt: an HTTP status, or the class of error that kept it from getting one."""

    status_code: int | None = None
    error: str | None = None
    retryable_error: bool = False
    retry_after: float | None = None
    duration_ms: float = 0.0

    @property
    def verdict(self) -> Verdict:
        """delivered (2xx); retry (timeout, connection error, 408, 429, 5xx); gone (410:
        stop for this job); final (any other 4xx, a 3xx, a refused address)."""
        code = self.status_code
        if code is None:
            return "retry" if self.retryable_error else "final"
        if 200 <= code < 300:
            return "delivered"
        if code == 410:
            return "gone"
        if code in (408, 429) or code >= 500:
            return "retry"
        return "final"

    def log_entry(self, at: float) -> dict[str, object]:
        """The attempt as the job's delivery log shows it (no secret, no signature)."""
        return {"at": iso(at), "status_code": self.status_code,
                "error": self.error[:MAX_ERROR_CHARS] if self.error else None,
                "duration_ms": round(self.duration_ms, 1)}
