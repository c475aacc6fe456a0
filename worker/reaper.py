"""The reaper: redelivers jobs stuck in ``running`` whose message is gone.

A worker that dies mid-batch leaves its jobs ``running``. Normally kombu's Redis transport
restores the unacknowledged messages after ``visibility_timeout`` and another worker claims
them again. The reaper covers what that cannot: a message lost with its worker's broker state.
Every ``reaper_interval_s`` one worker (a Redis lock) re-publishes the predict message of each
job that has been ``running`` for longer than ``stuck_after_s``. The job store counts
deliveries, so a job that keeps dying is failed as a poison job, never looped forever; and a
finish only counts while the job is ``running``, so a redelivery can never give a job two
results.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.keys import Keys
from shared.messages import predict_message
from shared.settings import Settings

log = logging.getLogger("predq.worker.reaper")

#: Most jobs redelivered per pass (the next pass takes the rest).
BATCH = 500


def reap(client: Any, keys: Keys, settings: Settings, now: float | None = None) -> list[str]:
    """Redeliver stuck running jobs; returns their ids. Errors are logged, never raised."""
    now = time.time() if now is None else now
    try:
        if not client.set(keys.reaper_lock(), "1", nx=True,
                          ex=max(1, int(settings.reaper_interval_s))):
            return []
        ids = [i.decode() for i in client.zrangebyscore(
            keys.running(), "-inf", now - settings.stuck_after_s, start=0, num=BATCH)]
        if not ids:
            return []
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "status", "model", "version", "n_inputs", "queue")
            rows = pipe.execute()
        redelivered: list[str] = []
        with client.pipeline(transaction=False) as pipe:
            for job_id, (status, model, version, n, queue) in zip(ids, rows, strict=True):
                if status != b"running" or not model:
                    pipe.zrem(keys.running(), job_id)
                    continue
                q = (queue or settings.queue_for(model.decode()).encode()).decode()
                pipe.lpush(q, predict_message(job_id, model.decode(), version.decode(),
                                              int(n), q))
                pipe.zadd(keys.running(), {job_id: now})
                redelivered.append(job_id)
            pipe.execute()
        if redelivered:
            log.warning("reaper redelivered %d jobs stuck in running: %s", len(redelivered),
                        redelivered[:20])
        return redelivered
    except Exception as e:
        log.warning("reaper pass failed: %r", e)
        return []
