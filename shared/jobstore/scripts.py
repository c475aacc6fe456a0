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
from predq.shared.redis_conn import AsyncScript, RedisClient, Script

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = (
    "queued", "running", "succeeded", "failed", "cancelled", "expired",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED)

# KEYS: job, idempotency ("" for none), queue list, queued-rows counter, model seq, drain,
#       queued index
# ARGV: job_id, pending ttl, message, n_rows, fingerprint, max_queued_rows, oldest drain
#       bucket, now_unix, field1, value1, ...
# An unfinished job lives for the pending ttl (a safety net, PREDQ_MAX_JOB_AGE_S); the result
# TTL starts when it ends. The idempotency key lives as long as its job.
# Returns {job_id, fingerprint}: the new job's, or the one already created for that key; or
# {'', 'full', queued_rows, rows_drained_in_window} when the model's queue is full.
_SUBMIT = """
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
local queued = tonumber(redis.call('GET', KEYS[4]) or '0')
if queued > 0 and queued + tonumber(ARGV[4]) > tonumber(ARGV[6]) then
  local drained = 0
  local buckets = redis.call('HGETALL', KEYS[6])
  for i = 1, #buckets, 2 do
    if tonumber(buckets[i]) >= tonumber(ARGV[7]) then
      drained = drained + tonumber(buckets[i + 1])
    end
  end
  return {'', 'full', tostring(queued), tostring(drained)}
end
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[2])
end
local fields = {'seq', redis.call('INCR', KEYS[5])}
if KEYS[2] ~= '' then fields[3] = 'idem'; fields[4] = KEYS[2] end
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('INCRBY', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[1])
return {ARGV[1], ARGV[5]}
"""

# KEYS: the batch's job hashes, then (in the same order) their lease keys.
# ARGV: now_iso, now_unix, max_deliveries, channel, running set, result ttl, queued index,
#       lease ms, then per job its model's queued-rows counter, claimed-seq key, row count
#       and the delivery's lease token.
# For each job returns {code, inputs, webhook[, created_at]}: code is 'ok' (claimed; now
# running, its lease held by this token; created_at gives the worker the queue wait for
# predq_queue_wait_seconds), or the reason it is skipped: 'missing', a terminal status,
# 'expired' (deadline passed), 'poison', or 'leased' (a duplicate: another delivery holds
# the job's live lease and is predicting it; not predicted, not counted as a delivery).
# A running job whose lease is gone (its worker died) or is held by this same token (the
# consumer re-runs a batch whose pool process died) is a real redelivery: counted.
_CLAIM = """
local out = {}
local n = #KEYS / 2
local function ended(i, status, err)
  local key = KEYS[i]
  local id = string.sub(key, string.find(key, ':job:', 1, true) + 5)
  redis.call('HSET', key, 'status', status, 'finished_at', ARGV[1], 'error', err)
  redis.call('HDEL', key, 'inputs')
  redis.call('DEL', KEYS[n + i])
  redis.call('ZREM', ARGV[5], id)
  redis.call('EXPIRE', key, ARGV[6])
  local ik = redis.call('HGET', key, 'idem')
  if ik then redis.call('EXPIRE', ik, ARGV[6]) end
  redis.call('PUBLISH', ARGV[4], id)
end
-- Why a job is failed after too many deliveries: its worker died each time, or (counted by
-- predq.worker.store_failures) Redis failed after the claim, so the result could not be stored.
local function poison_error(key, tries)
  local sf = tonumber(redis.call('HGET', key, 'store_failures') or '0')
  if sf == 0 then
    return '{"type":"PoisonJob","message":"delivered ' .. tries ..
      ' times without finishing (its worker died each time); not retried again"}'
  end
  local msg = 'the result could not be stored: Redis failed ' .. sf ..
    ' time(s) after the job was claimed (last: ' ..
    (redis.call('HGET', key, 'store_error') or '?') .. ')'
  if tries > sf then
    msg = msg .. '; ' .. (tries - sf) ..
      ' other delivery(ies) ended without a result (a worker died)'
  end
  return cjson.encode({type = 'ResultNotStored',
                       message = msg .. '; delivered ' .. tries .. ' times, not retried again'})
end
for i = 1, n do
  local key = KEYS[i]
  local b = 8 + 4 * (i - 1)
  local qrows, claimed, token = ARGV[b + 1], ARGV[b + 2], ARGV[b + 4]
  local st = redis.call('HGET', key, 'status')
  -- a job cancelled while queued had its rows taken off then (see _CANCEL's mark)
  local unqueued = string.sub(key, 1, string.find(key, ':job:', 1, true)) .. 'unqueued:' ..
    string.sub(key, string.find(key, ':job:', 1, true) + 5)
  if not st then
    -- gone before it ran (past PREDQ_MAX_JOB_AGE_S, or cancelled and past the result TTL):
    -- its rows no longer wait, unless the cancel already took them off
    if redis.call('DEL', unqueued) == 0 and
        tonumber(redis.call('DECRBY', qrows, ARGV[b + 3])) < 0 then
      redis.call('SET', qrows, 0)
    end
    out[i] = {'missing', '', ''}
  elseif st ~= 'queued' and st ~= 'running' then
    if st == 'cancelled' then redis.call('DEL', unqueued) end
    out[i] = {st, '', ''}
  elseif st == 'running' and (redis.call('GET', KEYS[n + i]) or token) ~= token then
    out[i] = {'leased', '', ''}
  else
    if st == 'queued' then
      redis.call('DECRBY', qrows, redis.call('HGET', key, 'n_inputs'))
      redis.call('ZREM', ARGV[7], string.sub(key, string.find(key, ':job:', 1, true) + 5))
      local seq = tonumber(redis.call('HGET', key, 'seq') or '0')
      if seq > tonumber(redis.call('GET', claimed) or '0') then redis.call('SET', claimed, seq) end
    end
    local deadline = redis.call('HGET', key, 'cancel_after')
    local d = redis.call('HINCRBY', key, 'deliveries', 1)
    if st == 'queued' and deadline and tonumber(ARGV[2]) > tonumber(deadline) then
      ended(i, 'expired', '{"type":"Expired","message":"cancel_after passed while queued"}')
      out[i] = {'expired', '', ''}
    elseif d > tonumber(ARGV[3]) then
      ended(i, 'failed', poison_error(key, d - 1))
      out[i] = {'poison', '', ''}
    else
      if st == 'queued' then
        redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[1])
      end
      redis.call('SET', KEYS[n + i], token, 'PX', ARGV[8])
      redis.call('ZADD', ARGV[5], ARGV[2], string.sub(key, string.find(key, ':job:', 1, true) + 5))
      local f = redis.call('HMGET', key, 'inputs', 'webhook', 'created_at')
      out[i] = {'ok', f[1] or '', f[2] or '', f[3] or ''}
    end
  end
end
return out
"""

# KEYS: job hashes, then (in the same order) their lease keys.
# ARGV: now_iso, ttl, channel, running set, then per job 6 values: status, field ('outputs'
# or 'error'), payload, webhook queue ('' for none), webhook message, predicted ('1' when
# the worker ran predict for the job: counted in its 'predictions' field, finished or not).
# A job is finished only while it is 'running'; returns 1 per job finished, 0 if discarded.
_FINISH = """
local out = {}
local n = #KEYS / 2
for i = 1, n do
  local key = KEYS[i]
  local b = 4 + (i - 1) * 6
  redis.call('ZREM', ARGV[4], string.sub(key, string.find(key, ':job:', 1, true) + 5))
  if ARGV[b + 6] == '1' and redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'predictions', 1)
  end
  if redis.call('HGET', key, 'status') == 'running' then
    redis.call('HSET', key, 'status', ARGV[b + 1], 'finished_at', ARGV[1], ARGV[b + 2], ARGV[b + 3])
    redis.call('HDEL', key, 'inputs')
    redis.call('DEL', KEYS[n + i])
    redis.call('EXPIRE', key, ARGV[2])
    local ik = redis.call('HGET', key, 'idem')
    if ik then redis.call('EXPIRE', ik, ARGV[2]) end
    if ARGV[b + 4] ~= '' then redis.call('LPUSH', ARGV[b + 4], ARGV[b + 5]) end
    redis.call('PUBLISH', ARGV[3], string.sub(key, string.find(key, ':job:', 1, true) + 5))
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lease keys.  ARGV: lease ms, then one token per key.
# Renews (PEXPIRE) each lease still held by its token; returns how many were renewed.
_RENEW = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    n = n + 1
  end
end
return n
"""

# KEYS: lease keys.  ARGV: one token per key.
# Deletes each lease still held by its token (its delivery gave the job back); returns how
# many were held.
_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""

# KEYS: job hash, queued-rows counter, running set, queued index, unqueued mark.
# ARGV: now_iso, channel, job_id, result ttl, pending ttl.
# Returns 'cancelled' when this call cancelled it, 'ended:<status>' when it had already ended
# (cancelled included), or '' when the job does not exist.
# A queued job's rows leave the backpressure counter here, at once. Its message is still in
# the queue, and the record may expire (result TTL) before a worker takes the message: the
# mark (Keys.unqueued, as long as an unfinished job may live) tells the claim not to take
# the rows off a second time.
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return '' end
if st ~= 'queued' and st ~= 'running' then return 'ended:' .. st end
if st == 'queued' then
  redis.call('DECRBY', KEYS[2], redis.call('HGET', KEYS[1], 'n_inputs'))
  redis.call('SET', KEYS[5], '1', 'EX', ARGV[5])
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'inputs')
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local ik = redis.call('HGET', KEYS[1], 'idem')
if ik then redis.call('EXPIRE', ik, ARGV[4]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 'cancelled'
"""

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
        for m, n, t in zip(models, n_rows, tokens, strict=True):
            per_job += [self.keys.queued_rows(m), self.keys.claimed_seq(m), n, t]
        return self._claim(
            keys=[self.keys.job(j) for j in job_ids] + [self.keys.lease(j) for j in job_ids],
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
        for (_, status, field, payload, wq, msg), ran in zip(results, predicted, strict=True):
            args += [status, field, payload, wq, msg, "1" if ran else "0"]
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
