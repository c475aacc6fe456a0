"""Graceful shutdown with real processes: SIGTERM never loses a job or leaves one ``running``.

A slow model (tests.helpers.faulty, mode "slow") keeps a batch in the pool while more jobs
wait in the worker's micro-batch buffer; then the worker gets SIGTERM.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import redis

from predq.push import push_model
from predq.shared.jobstore.keys import Keys
from predq.shared.registry.store import Registry
from tests.helpers.faulty import train

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

ROW = {"x1": 1.0, "x2": 0.0}


def push_slow(registry: Registry, tmp_path: Path, delay: float) -> None:
    path = tmp_path / "slow.joblib"
    joblib.dump(train("slow", delay), path)
    push_model(registry, path, "slow")


def submit(c: httpx.Client, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = c.post("/v1/models/slow/jobs", json={"inputs": [ROW]})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def statuses(client: redis.Redis, keys: Keys, ids: list[str]) -> list[str]:
    return [(client.hget(keys.job(i), "status") or b"?").decode() for i in ids]


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def slow_stack(registry_with_models: Registry, tmp_path: Path, start_api: Callable[..., str],
               settings_env: dict[str, str]) -> Callable[[float], dict[str, Any]]:
    def make(delay: float) -> dict[str, Any]:
        push_slow(registry_with_models, tmp_path, delay)
        base = start_api(extra_env={"PREDQ_AUTH_ENABLED": "false"})
        client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
        return {"base": base, "redis": client, "keys": Keys(settings_env["PREDQ_KEY_PREFIX"]),
                "queue": settings_env["PREDQ_DEFAULT_QUEUE"]}

    return make


def test_sigterm_finishes_the_running_batch_and_returns_the_buffer(
        slow_stack: Callable[[float], dict[str, Any]], start_worker: Callable[..., Any]) -> None:
    s = slow_stack(1.5)  # two predict_proba calls per batch: 3 s
    r, keys, queue = s["redis"], s["keys"], s["queue"]
    env = {"PREDQ_WORKER_SHUTDOWN_GRACE_S": "60", "PREDQ_AUTH_ENABLED": "false"}
    first = start_worker(1, extra_env=env)
    with httpx.Client(base_url=s["base"], timeout=30) as c:
        head = submit(c, 1)
        wait_until(lambda: statuses(r, keys, head) == ["running"], 30, "the first job to run")
        rest = submit(c, 20)
        # Every message has reached the worker's buffer: none waits in Redis, none runs.
        wait_until(lambda: r.llen(queue) == 0, 10, "the worker to prefetch the jobs")
        assert set(statuses(r, keys, rest)) == {"queued"}

        first.child.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=30) == 0, first.tail()

        # The running batch finished before the exit; the buffer went back to the queue.
        assert statuses(r, keys, head) == ["succeeded"]
        assert set(statuses(r, keys, rest)) == {"queued"}
        assert r.llen(queue) == len(rest)
        # (Jobs still in the consumer's buffer are requeued by predq.worker.lifecycle; batches
        # handed
        # to the busy pool but not started are dropped by Celery and restored by kombu.)
        assert r.zcard(keys.workers_alive()) == 0  # the heartbeat went with it

        start_worker(1, extra_env=env)
        ids = head + rest
        wait_until(lambda: set(statuses(r, keys, ids)) == {"succeeded"}, 60,
                   "every job to succeed on the second worker")
        deliveries = [int(r.hget(keys.job(i), "deliveries")) for i in ids]
        assert deliveries == [1] * len(ids)  # buffered jobs had not been claimed


def test_grace_period_bounds_the_shutdown_and_requeues_the_batch(
        slow_stack: Callable[[float], dict[str, Any]], start_worker: Callable[..., Any]) -> None:
    s = slow_stack(3.0)  # 6 s per batch
    r, keys, queue = s["redis"], s["keys"], s["queue"]
    first = start_worker(1, extra_env={"PREDQ_WORKER_SHUTDOWN_GRACE_S": "1"})
    with httpx.Client(base_url=s["base"], timeout=30) as c:
        ids = submit(c, 1)
        wait_until(lambda: statuses(r, keys, ids) == ["running"], 30, "the job to run")
        t0 = time.monotonic()
        first.child.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=20)
        took = time.monotonic() - t0
        assert took < 5.0, f"the worker took {took:.1f}s to stop with a 1s grace period"
        assert "shutdown grace period (1s) is over" in first.tail(200)
        # The killed batch's message is back in the queue; the job will run again.
        wait_until(lambda: r.llen(queue) == 1, 10, "the job's message to be requeued")

        start_worker(1)
        wait_until(lambda: statuses(r, keys, ids) == ["succeeded"], 60, "the job to succeed")
        assert int(r.hget(keys.job(ids[0]), "deliveries")) == 2
