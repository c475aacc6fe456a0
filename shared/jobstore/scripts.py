"""Job records in Redis.

A job is one hash (see ``predq.shared.jobstore.keys.Keys.job``). Every status change is a Lua
script, so
that a cancel, a finish, a redelivery and an expiry are each atomic: exactly one of them
wins, and a job that is ``cancelled`` never turns ``succeeded`` behind the client's back.

The API uses an asyncio client and the worker a blocking one; both call the same scripts
through :class:`Scripts`, whose calls return whatever the client returns (a value, or an
awaitable of it).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic

import orjson

from predq.shared.jobstore.keys import DRAIN_BUCKET_S, DRAIN_WINDOW_S, Keys
from predq.shared.jobstore.status import TERMINAL as TERMINAL  # noqa: E402 (re-exported)
from predq.shared.lua import lua_script
from predq.shared.redis_conn import AsyncScript, RedisClient, Script

_SUBMIT = lua_script(__file__, "submit")  # lua/submit.lua: KEYS, ARGV, returns

_CLAIM = lua_script(__file__, "claim")  # lua/claim.lua: KEYS, ARGV, returns

_FINISH = lua_script(__file__, "finish")  # lua/finish.lua: KEYS, ARGV, returns

_RENEW = lua_script(__file__, "renew")  # lua/renew.lua: KEYS, ARGV, returns

_RELEASE = lua_script(__file__, "release")  # lua/release.lua: KEYS, ARGV, returns

_CANCEL = lua_script(__file__, "cancel")  # lua/cancel.lua: KEYS, ARGV, returns

#: Bounds of a claim's lease (see :func:`lease_seconds`).
MIN_LEASE_S, MAX_LEASE_S = 2.0, 30.0
DEFAULT_LEASE_S = MAX_LEASE_S


def lease_seconds(visibility_timeout_s: float) -> float:
    """How long a claim's lease lives without renewal (the worker renews it every quarter).

    A third of the visibility timeout (2 to 30 s): a dead worker's lease has lapsed by the
    time kombu restores its unacknowledged messages, so the restored copy is a real
    redelivery; a live worker's consumer renews it many times within that span.
    """
    return min(MAX_LEASE_S, max(MIN_LEASE_S, visibility_timeout_s / 3))


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


#: Fields of the job hash returned by GET (``inputs`` is never read back by the API).
VIEW_FIELDS = (
    "status", "model", "version", "n_inputs", "created_at", "started_at", "finished_at",
    "error", "metadata", "webhook", "owner", "cancel_after", "webhook_state", "outputs",
    "seq",
)


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Scripts(Generic[RedisClient]):
    """The job-store scripts bound to one Redis client (sync or asyncio)."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client: RedisClient = client
        self.keys = keys
        self._submit: Callable[..., Any] = client.register_script(_SUBMIT)
        self._claim: Callable[..., Any] = client.register_script(_CLAIM)
        self._finish: Script | AsyncScript = client.register_script(_FINISH)
        self._finish_loaded = False
        self._cancel: Callable[..., Any] = client.register_script(_CANCEL)
        self._renew: Callable[..., Any] = client.register_script(_RENEW)
        self._release: Callable[..., Any] = client.register_script(_RELEASE)

    def submit(self, *, job_id: str, fields: dict[str, Any], message: bytes, queue: str,
               model: str, n_rows: int, ttl: int, idempotency_key: str | None = None,
               fingerprint: str = "", max_queued_rows: int = 2**62) -> Any:
        """Write the job and publish its message, unless the model's queue is full.

        Returns ``[job_id, fingerprint]`` or ``['', 'full', queued_rows, drained_rows]``.
        Idempotent on ``job_id``: a second call with the id of a job that exists writes and
        publishes nothing and returns ``[job_id, fingerprint]``, so a submit whose reply was
        lost with its connection can be sent again.
        """
        flat: list[Any] = []
        for k, v in fields.items():
            if v is not None:
                flat += [k, v]
        return self._submit(
            keys=[self.keys.job(job_id), idempotency_key or "", queue,
                  self.keys.queued_rows(model), self.keys.seq(model), self.keys.drain(model),
                  self.keys.queued()],
            args=[job_id, ttl, message, n_rows, fingerprint, max_queued_rows,
                  drain_bucket(time.time() - DRAIN_WINDOW_S), time.time(), *flat],
        )

    def claim(self, job_ids: list[str], models: list[str], max_deliveries: int,
              n_rows: list[int], ttl: int, tokens: list[str] | None = None,
              lease_s: float = DEFAULT_LEASE_S) -> Any:
        """Claim a batch's jobs (``ttl``: the result TTL of jobs that end right here).

        ``tokens`` name each request's delivery (one per message the worker holds; fresh
        ones when omitted): a claimed job's lease holds its token for ``lease_s``.
        """
        if tokens is None:
            tokens = [uuid.uuid4().hex for _ in job_ids]
        per_job: list[Any] = []
        for j, m, n, t in zip(job_ids, models, n_rows, tokens, strict=True):
            per_job += [self.keys.queued_rows(m), self.keys.claimed_seq(m), n, t, j]
        return self._claim(
            keys=[self.keys.job(j) for j in job_ids] + [self.keys.lease(j) for j in job_ids]
            + [self.keys.unqueued(j) for j in job_ids],
            args=[now_iso(), time.time(), max_deliveries, self.keys.done_channel(),
                  self.keys.running(), ttl, self.keys.queued(), _ms(lease_s), *per_job],
        )

    def renew(self, leases: list[tuple[str, str]], lease_s: float) -> Any:
        """Extend the leases ``(job_id, token)`` still held by their tokens; how many were."""
        return self._renew(keys=[self.keys.lease(j) for j, _ in leases],
                           args=[_ms(lease_s), *(t for _, t in leases)])

    def release(self, leases: list[tuple[str, str]]) -> Any:
        """Drop the leases ``(job_id, token)`` still held by their tokens (the deliveries give
        their jobs back to the queue); returns how many were held."""
        return self._release(keys=[self.keys.lease(j) for j, _ in leases],
                             args=[t for _, t in leases])

    def finish(self, results: list[tuple[str, str, str, bytes, str, bytes]], ttl: int,
               client: RedisClient | None = None, predicted: list[bool] | None = None) -> Any:
        """Finish jobs given as (job_id, status, field, payload, webhook_queue, message).

        ``predicted`` says per job whether predict ran for it (counted in its
        ``predictions`` field; all when omitted). ``client`` may be a pipeline, to send this
        with other commands in one round trip.
        """
        if predicted is None:
            predicted = [True] * len(results)
        args: list[Any] = [now_iso(), ttl, self.keys.done_channel(), self.keys.running()]
        for (job_id, status, field, payload, wq, msg), ran in zip(results, predicted,
                                                                   strict=True):
            args += [status, field, payload, wq, msg, "1" if ran else "0", job_id]
        keys = [self.keys.job(r[0]) for r in results] + [self.keys.lease(r[0]) for r in results]
        if client is not None and client is not self.client:
            # In a pipeline, redis-py would first send SCRIPT EXISTS (one more round trip per
            # batch): send EVALSHA directly once the script is known to be loaded. After a
            # Redis restart it is not: the pipeline raises NoScriptError, and the caller
            # retries with ``client=None`` (a plain call, which loads it again).
            if not self._finish_loaded:
                self.client.script_load(_FINISH)
                self._finish_loaded = True
            return client.evalsha(self._finish.sha, len(keys), *keys, *args)
        return self._finish(keys=keys, args=args)

    def cancel(self, job_id: str, model: str, ttl: int, pending_ttl: int = 0) -> Any:
        """Cancel a job (``ttl``: the result TTL; ``pending_ttl``: how long an unfinished
        job may live, the life of the mark that its queued rows were already counted off)."""
        return self._cancel(
            keys=[self.keys.job(job_id), self.keys.queued_rows(model), self.keys.running(),
                  self.keys.queued(), self.keys.unqueued(job_id)],
            args=[now_iso(), self.keys.done_channel(), job_id, ttl, max(ttl, pending_ttl)],
        )


def drain_bucket(t: float) -> int:
    """The drain-rate bucket holding unix time ``t``."""
    return int(t // DRAIN_BUCKET_S)


def error_payload(kind: str, message: str) -> bytes:
    """The stored form of a job's error."""
    return orjson.dumps({"type": kind, "message": message})


def decode_fields(raw: list[bytes | None]) -> dict[str, Any]:
    """A job hash read with HMGET(VIEW_FIELDS), decoded; ``outputs`` stays raw JSON bytes."""
    out: dict[str, Any] = {}
    for name, value in zip(VIEW_FIELDS, raw, strict=True):
        if value is None:
            out[name] = None
        elif name == "outputs":
            out[name] = value
        elif name in ("error", "metadata", "webhook", "webhook_state"):
            out[name] = orjson.loads(value)
        elif name in ("n_inputs", "seq"):
            out[name] = int(value)
        elif name == "cancel_after":
            out[name] = float(value)
        else:
            out[name] = value.decode()
    return out
