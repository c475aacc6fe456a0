"""The API's side of the job store: submit, read, cancel (asyncio Redis).

One submit is one Lua call (job record + Celery message + counters): one round trip, no model
code, no Celery client. A read is one pipeline (HMGET + PTTL).
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError

from predq.shared.errors import JobConflict, JobNotFound, QueueFull
from predq.shared.jobstore.durability import Durability
from predq.shared.jobstore.keys import DRAIN_WINDOW_S, Keys
from predq.shared.jobstore.messages import predict_message
from predq.shared.jobstore.scripts import (
    TERMINAL,
    VIEW_FIELDS,
    Scripts,
    decode_fields,
    drain_bucket,
    now_iso,
)
from predq.shared.jobstore.status import JobStatus
from predq.shared.observability.metrics import JOBS_FINISHED
from predq.shared.redis_conn import AsyncRedis
from predq.shared.registry.schema import ParsedJob
from predq.shared.settings import Settings


class AsyncJobs:
    """Job operations over an asyncio Redis client."""

    def __init__(self, client: AsyncRedis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.scripts = Scripts(client, self.keys)
        self.durability = Durability(client) if settings.durable_submit else None

    async def submit(self, *, model: str, version: str, parsed: ParsedJob, owner: str,
                     idempotency_key: str | None, fingerprint_of: bytes,
                     job_id: str | None = None) -> tuple[str, bool, str]:
        """Create and enqueue a job; returns (job_id, created, created_at).

        With an Idempotency-Key seen before, returns the earlier job (created False), or
        raises JobConflict when the earlier request's model or body differed. Raises QueueFull when
        the model's queue holds more than ``queue_max_rows`` rows."""
        job_id = job_id or str(uuid.uuid4())
        created_at = now_iso()
        cancel_after = parsed.cancel_after
        # The model is part of the request: the same key and body on another model's URL
        # is a different request (409), never a replay of this model's job.
        fingerprint = hashlib.sha256(model.encode() + b"\0" + fingerprint_of).hexdigest()[:32]
        queue = self.settings.queue_for(model)
        fields: dict[str, Any] = {
            "status": JobStatus.QUEUED,
            "model": model,
            "version": version,
            "n_inputs": parsed.n_rows,
            "created_at": created_at,
            "owner": owner,
            "inputs": parsed.inputs,
            "queue": queue,
            "metadata": orjson.dumps(parsed.metadata) if parsed.metadata is not None else None,
            "webhook": parsed.webhook.model_dump_json() if parsed.webhook else None,
            "cancel_after": time.time() + cancel_after if cancel_after else None,
        }
        idem = self.keys.idempotency(owner, idempotency_key) if idempotency_key else None
        if self.durability is not None:  # PREDQ_DURABLE_SUBMIT: a 202 only once on disk
            await self.durability.before_submit()
        message = predict_message(job_id, model, version, parsed.n_rows, queue)
        ttl = max(self.settings.max_job_age_s, self.settings.result_ttl_s)

        async def send() -> Any:
            return await self.scripts.submit(
                job_id=job_id, fields=fields, message=message, queue=queue, model=model,
                n_rows=parsed.n_rows, ttl=ttl, idempotency_key=idem, fingerprint=fingerprint,
                max_queued_rows=self.settings.queue_max_rows)

        try:
            reply = await send()
        except RedisConnectionError:
            # A pooled connection that Redis closed (it restarted since): once more, on a
            # fresh one. The script is idempotent on the job id, so if the first call ran
            # and only its reply was lost, nothing is created or published twice.
            reply = await send()
        got_id, got_fp = reply[0], reply[1]
        if not got_id:
            queued, drained = int(reply[2]), int(reply[3])
            retry = retry_after(queued + parsed.n_rows - self.settings.queue_max_rows, drained)
            raise QueueFull(
                f"the queue of model {model!r} holds {queued} rows (limit "
                f"{self.settings.queue_max_rows}); it drains at about "
                f"{drained / DRAIN_WINDOW_S:.0f} rows/s", retry_after=retry)
        got_id = got_id.decode() if isinstance(got_id, bytes) else got_id
        got_fp = got_fp.decode() if isinstance(got_fp, bytes) else got_fp
        if got_id != job_id and got_fp != fingerprint:
            raise JobConflict(await self._conflict_detail(got_id, model, owner))
        if self.durability is not None:
            await self.durability.after_submit()
        return got_id, got_id == job_id, created_at

    async def _conflict_detail(self, prior_id: str, model: str, owner: str) -> str:
        """Why an Idempotency-Key seen before cannot be replayed for this request."""
        try:
            prior = await self.read(prior_id, owner)
        except JobNotFound:
            prior = None
        if prior is not None and prior["model"] != model:
            return (f"this Idempotency-Key was already used for a job of model "
                    f"{prior['model']!r} (job {prior_id}); use a new key for another model")
        return "this Idempotency-Key was already used with a different request body"

    async def read(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """The job's fields (``outputs`` as raw JSON bytes) plus ``expires_in`` seconds.

        Raises JobNotFound when it does not exist, has expired, or belongs to another owner
        (``owner=None`` skips that check: admin).
        """
        if not _valid_id(job_id):
            raise JobNotFound(f"no job {job_id!r}")
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.job(job_id), VIEW_FIELDS)
            pipe.pttl(self.keys.job(job_id))
            raw, pttl = await pipe.execute()
        # Another owner's job gets exactly this answer too: a 404 must not tell it exists.
        missing = (f"no job {job_id!r}: it does not exist, or it expired after the result TTL "
                   f"({self.settings.result_ttl_s} s)")
        if raw[0] is None:
            raise JobNotFound(missing)
        job = decode_fields(raw)
        if owner is not None and job["owner"] not in (owner, None):
            raise JobNotFound(missing)
        job["id"] = job_id
        job["expires_in"] = pttl / 1000 if pttl and pttl > 0 else None
        return job

    async def cancel(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """Cancel a queued or running job; JobConflict if it already ended."""
        job = await self.read(job_id, owner)
        status = await self.scripts.cancel(job_id, job["model"], self.settings.result_ttl_s,
                                           self.settings.max_job_age_s)
        status = status.decode() if isinstance(status, bytes) else status
        if status == "":
            raise JobNotFound(f"no job {job_id!r}")
        if status != "cancelled":
            ended = status.removeprefix("ended:")
            raise JobConflict(f"job {job_id} already ended with status {ended!r}")
        # A job cancelled while it ran was counted by its worker too; the worker takes its
        # count back when its finish finds the job cancelled (predq.worker.batch_metrics).
        await JOBS_FINISHED.inc(self.client, self.keys, status="cancelled")
        return await self.read(job_id, owner)


def retry_after(excess_rows: int, drained_rows: int) -> int:
    """Seconds until ``excess_rows`` will have drained at the measured rate (rows drained in
    the last DRAIN_WINDOW_S). With no measurement yet, one window: the time it takes to get
    one. Bounded to 1 s .. 1 h."""
    if drained_rows <= 0:
        return DRAIN_WINDOW_S
    rate = drained_rows / DRAIN_WINDOW_S
    return max(1, min(3600, math.ceil(max(excess_rows, 1) / rate)))


async def queue_position(jobs: AsyncJobs, job: dict[str, Any]) -> dict[str, Any]:
    """``queue_position`` (jobs of this model ahead, approximate) and ``eta_seconds`` of a
    queued job, from the model's sequence counters and its measured drain rate."""
    if job["status"] != JobStatus.QUEUED or job.get("seq") is None:
        return {}
    k = jobs.keys
    model = job["model"]
    async with jobs.client.pipeline(transaction=False) as pipe:
        pipe.get(k.claimed_seq(model))
        pipe.get(k.seq(model))
        pipe.get(k.queued_rows(model))
        pipe.hgetall(k.drain(model))
        claimed, last, qrows, buckets = await pipe.execute()
    claimed, last, qrows = int(claimed or 0), int(last or 0), int(qrows or 0)
    position = max(0, job["seq"] - claimed - 1)
    oldest = drain_bucket(time.time() - DRAIN_WINDOW_S)
    drained = sum(int(v) for b, v in buckets.items() if int(b) >= oldest)
    out: dict[str, Any] = {"queue_position": position}
    if drained > 0:
        ahead = qrows * (position + 1) / max(1, last - claimed)
        out["eta_seconds"] = round(ahead / (drained / DRAIN_WINDOW_S), 1)
    return out


def _valid_id(job_id: str) -> bool:
    try:
        return str(uuid.UUID(job_id)) == job_id
    except ValueError:
        return False


def is_terminal(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL
