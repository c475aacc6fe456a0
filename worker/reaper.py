"""The reaper: redelivers jobs stuck in ``running`` whose message is gone.

A worker that dies mid-batch leaves its jobs ``running``, and their claim leases lapse.
Normally kombu's Redis transport restores the unacknowledged messages after
``visibility_timeout`` and another worker claims them again. The reaper covers what that
cannot: a message lost with its worker's broker state, or acknowledged as a duplicate while
the dead worker's lease still lived. Every ``reaper_interval_s`` one worker (a Redis lock)
re-publishes the predict message of each job that has been ``running`` for longer than
``stuck_after_s`` and whose lease has lapsed (a live lease means a live worker predicts it,
however long that takes). The job store counts deliveries, so a job that keeps dying is
failed as a poison job, never looped forever; a copy that arrives while a lease lives is
skipped as a duplicate; and a finish only counts while the job is ``running``, so a
redelivery can never give a job two results.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import predict_message
from predq.shared.redis_conn import SyncRedis
from predq.shared.settings import Settings

log = logging.getLogger("predq.worker.reaper")

#: Most jobs redelivered per pass (the next pass takes the rest).
BATCH = 500


#: kombu's Redis transport keeps priority levels in sub-lists named ``<queue>\x06\x16<n>``.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def reap(client: SyncRedis, keys: Keys, settings: Settings, now: float | None = None) -> list[str]:
    """Redeliver stuck jobs; returns their ids. Errors are logged, never raised.

    - ``running`` for longer than ``stuck_after_s``: its worker died and the message did not
      come back (kombu restores unacked messages after ``visibility_timeout_s`` first).
    - ``queued`` for longer than ``stuck_after_s`` while its queue is empty: its message was
      lost (popped by a consumer just as Redis went away, before kombu recorded it as
      unacknowledged), so nothing would ever run it.
    """
    now = time.time() if now is None else now
    try:
        if not client.set(keys.reaper_lock(), "1", nx=True,
                          ex=max(1, int(settings.reaper_interval_s))):
            return []
        cutoff = now - settings.stuck_after_s
        stuck_running: list[Any] = client.zrangebyscore(
            keys.running(), "-inf", cutoff, start=0, num=BATCH)
        stuck_queued: list[Any] = client.zrangebyscore(
            keys.queued(), "-inf", cutoff, start=0, num=BATCH)
        running = [i.decode() for i in stuck_running]
        queued = [i.decode() for i in stuck_queued]
        redelivered = _redeliver(client, keys, settings, running, "running", now)
        redelivered += _redeliver(client, keys, settings, queued, "queued", now)
        if redelivered:
            log.warning("reaper redelivered %d stuck jobs: %s", len(redelivered),
                        redelivered[:20])
        return redelivered
    except Exception as e:
        log.warning("reaper pass failed: %r", e)
        return []


def _redeliver(client: SyncRedis, keys: Keys, settings: Settings, ids: list[str], status: str,
               now: float) -> list[str]:
    if not ids:
        return []
    index = keys.running() if status == "running" else keys.queued()
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "status", "model", "version", "n_inputs", "queue")
            pipe.exists(keys.lease(job_id))
        replies = pipe.execute()
    rows, leased = replies[0::2], replies[1::2]
    backlog: dict[str, int] = {}
    redelivered: list[str] = []
    with client.pipeline(transaction=False) as pipe:
        for job_id, (st, model, version, n, queue), held in zip(ids, rows, leased,
                                                                 strict=True):
            if st != status.encode() or not model:
                pipe.zrem(index, job_id)
                continue
            if held and status == "running":
                # a live worker is predicting it (its consumer renews the lease): not stuck;
                # looked at again in stuck_after_s
                pipe.zadd(index, {job_id: now})
                continue
            q = queue.decode() if queue else settings.queue_for(model.decode())
            if status == "queued":
                if q not in backlog:
                    backlog[q] = sum(client.llen(q + s) for s in _PRIORITY_SUFFIXES)
                if backlog[q]:  # it may still be waiting in line: not lost
                    continue
            pipe.lpush(q, predict_message(job_id, model.decode(), version.decode(), int(n), q))
            pipe.zadd(index, {job_id: now})
            redelivered.append(job_id)
        pipe.execute()
    return redelivered
