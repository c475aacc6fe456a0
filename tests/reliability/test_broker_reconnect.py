"""After the broker connection is lost and comes back, a worker consumes at its former rate.

Issue 13, "After a Redis restart, the workers stall". The cause: when the consumer loses its
broker connection, Celery's consumer restart flushes the prefork pool (``AsynPool.flush``),
which *discards* every batch handed to the pool but not yet accepted by a process, without
calling its callback or its error callback. The micro-batching task counted those batches as
running, so after the reconnect it believed every pool slot busy and flushed only full
batches (``PREDQ_MAX_BATCH_JOBS``): a lone job, or a trickle of jobs from clients that wait for
their results, was never handed to the pool. And the dropped batches' messages stayed
unacknowledged until the visibility timeout.

The test makes that window wide on purpose: one pool process runs a slow batch while full
batches (``PREDQ_MAX_BATCH_JOBS=2``) wait in the pool; then Redis restarts. Everything is real:
redis-server with an AOF, ``predq worker`` and ``predq api`` processes. The visibility timeout
and ``stuck_after_s`` are far longer than the test's bounds, so neither kombu's restore nor the
reaper can hide a stall.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from tests.reliability.conftest import diagnose, irows, wait_until, xrows

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

#: Bound on one job's wait after the reconnect. A worker that consumes does it in well under a
#: second (iris, one job); the stall this guards against lasts until the visibility timeout.
JOB_BOUND_S = 45.0


def _worker_info(url: str, prefix: str, hostname: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        raw = client.get(f"{prefix}:worker:{hostname}")
    except redis.RedisError:
        return {}
    finally:
        client.close()
    return orjson.loads(raw) if raw else {}


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_worker_consumes_after_redis_restart(rstack: Any, push: Any, start_redis: Any,
                                             settings_env: dict[str, str], how: str) -> None:
    server = start_redis(appendonly=True)
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    env = {"PREDQ_REDIS_URL": server.url, "PREDQ_MAX_BATCH_JOBS": "2",
           "PREDQ_VISIBILITY_TIMEOUT_S": "900", "PREDQ_STUCK_AFTER_S": "1200",
           "PREDQ_REAPER_INTERVAL_S": "600", "PREDQ_JOB_TIME_LIMIT_S": "60",
           "PREDQ_WORKER_HEARTBEAT_S": "0.5"}
    push("slow", "slow", delay=1.5)
    if how == "kill":  # every write fsynced: a SIGKILL loses no accepted job
        client = server.client()
        client.config_set("appendfsync", "always")
        client.close()
    s = rstack(concurrency=1, **env)
    api, worker = s.api, s.workers[0]
    # one batch runs (3 s), a full batch of 2 waits in the pool (not yet accepted by a
    # process), more jobs wait in the buffer and in the queue (prefetch is 4 here)
    first = api.submit("slow", xrows(1))
    assert api.wait_status(first, {"running"}, 30)["status"] == "running"
    before = [first] + [api.submit("slow", xrows(1)) for _ in range(8)]
    assert wait_until(lambda: _worker_info(server.url, prefix, worker.hostname)
                      .get("inflight", 0) >= 2, 20, poll=0.1), \
        _worker_info(server.url, prefix, worker.hostname)
    server.restart(kill=how == "kill")
    # the worker reconnects (its heartbeat comes back)
    assert wait_until(lambda: bool(_worker_info(server.url, prefix, worker.hostname)), 60,
                      poll=0.2), worker.tail()
    # ... and consumes: each lone job is handed to the pool at once, one after another
    for i in range(5):
        job = api.submit("iris", irows(1, seed=i))
        view = api.wait_all([job], JOB_BOUND_S)[job]
        assert view["status"] == "succeeded", (
            f"job {i} after the Redis {how}: {view['status']} after {JOB_BOUND_S:g} s; worker "
            f"state {_worker_info(server.url, prefix, worker.hostname)}\n"
            + diagnose(server.url, prefix, {job: view}) + "\n" + worker.tail(30))
    # the jobs of the batches the pool dropped come back at once, not after the visibility
    # timeout (900 s here)
    views = api.wait_all(before, 90)
    stuck = {j: v for j, v in views.items() if v["status"] != "succeeded"}
    assert not stuck, "jobs accepted before the restart that did not succeed:\n" + \
        diagnose(server.url, prefix, stuck) + "\n" + worker.tail(40)
    assert worker.alive()
    api.reread(views)
    api.assert_no_double_results()
