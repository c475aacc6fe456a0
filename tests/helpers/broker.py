"""Where a job's Celery message is in the Redis broker, for tests that must prove that
nothing can run a job any more (instead of sleeping and hoping nothing happens).

A message is either in a queue's list (waiting), or in kombu's ``unacked`` hash (delivered
to a worker, not acknowledged: the worker may still run it, and kombu restores it once older
than the visibility timeout). Once it is in neither, no worker can deliver it again (only
predq's reaper could, and it republishes only jobs still ``queued`` or ``running``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson
import redis


def _task_id(raw: bytes) -> str | None:
    try:
        msg = orjson.loads(raw)
        if isinstance(msg, list):  # the unacked hash stores [message, exchange, routing key]
            msg = msg[0]
        return str(msg["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def message_places(redis_url: str, queues: Iterable[str], job_ids: Iterable[str]
                   ) -> dict[str, list[str]]:
    """For each job, where its messages are: ``queue <name>`` and/or ``unacked``."""
    wanted = set(job_ids)
    out: dict[str, list[str]] = {j: [] for j in wanted}
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        for queue in queues:
            for raw in client.lrange(queue, 0, -1):
                task_id = _task_id(raw)
                if task_id in wanted:
                    out[task_id].append(f"queue {queue}")
        for _, raw in client.hscan_iter("unacked", count=1000):
            task_id = _task_id(raw)
            if task_id in wanted:
                out[task_id].append("unacked")
    finally:
        client.close()
    return out


def wait_no_message(redis_url: str, queues: Iterable[str], job_ids: Iterable[str],
                    timeout: float) -> dict[str, list[str]]:
    """Poll (bounded) until no message of ``job_ids`` is left in the broker; returns the
    last places seen (all empty on success), for the caller's assertion."""
    queues, job_ids = list(queues), list(job_ids)
    deadline = time.monotonic() + timeout
    places = message_places(redis_url, queues, job_ids)
    for _ in range(int(timeout / 0.1) + 2):
        if not any(places.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
        places = message_places(redis_url, queues, job_ids)
    return places
