"""Duplicate messages of a running job: predicted once, counted once, shown once in Flower.

Issue 13, "Every job predicted by at most one worker at a time". Duplicate messages do
happen: kombu restores a live worker's unacknowledged message once it is older than the
visibility timeout, and the reaper republishes a job whose queue looks empty while its
message sits prefetched in a worker's buffer. Here the duplicates are pushed onto the queue
as the reaper pushes them, while the job runs in a real worker (two pool processes):

- one copy lands in the same micro-batch as the job itself (both wait in the buffer while
  the pool is busy, and are handed over together);
- another is handed to the second, idle pool process while the first one predicts the job
  (the model waits for a gate file, so the job runs until the test has seen everything).

The job must be predicted exactly once (the model's trace file), its delivery count must
stay 1 and its ``predictions`` counter 1, every message must be acknowledged, and the task
events (which Flower's state is built from) must end in SUCCESS with no revoked or failed
event for the job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from predq.shared.jobstore.messages import predict_message
from tests.helpers.events import EventLog
from tests.helpers.killer import traced
from tests.reliability.conftest import broker_state, diagnose, job_hash, wait_until, xrows

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

ENV = {
    "PREDQ_MAX_WAIT_MS": "2000",  # jobs buffered behind a busy pool are handed over together
    # No restore of our own messages during the test; a claim's lease lives 20 s and is
    # renewed every 5 s.
    "PREDQ_VISIBILITY_TIMEOUT_S": "60",
    "PREDQ_JOB_TIME_LIMIT_S": "20",
}
FINAL_EVENTS = ("task-succeeded", "task-failed", "task-revoked")
MARK = 500.0  # the x1 value of the job's rows, to find its predict calls in the trace


def _push_duplicate(client: redis.Redis, prefix: str, job_id: str) -> None:
    h = {k.decode(): v.decode() for k, v in client.hgetall(f"{prefix}:job:{job_id}").items()
         if k != b"inputs"}
    client.lpush(h["queue"], predict_message(job_id, h["model"], h["version"],
                                             int(h["n_inputs"]), h["queue"]))


def _renewed(client: redis.Redis, key: str, timeout: float) -> bool:
    """Whether the lease's remaining time goes up (a renewal) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = client.pttl(key)
    for _ in range(int(timeout / 0.05) + 2):
        now = client.pttl(key)
        if last > 0 and now > last + 200:
            return True
        last = now
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


def test_duplicate_messages_of_a_running_job_are_skipped(
        rstack: Any, push: Any, redis_url: str, settings_env: dict[str, str],
        tmp_path: Path) -> None:
    trace, gate = tmp_path / "trace.jsonl", tmp_path / "gate"
    push("pause", "killer", delay=2.0)
    push("held", "killer", trace=str(trace), gate=str(gate))  # runs until the gate opens
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    client = redis.Redis.from_url(redis_url)
    with EventLog(redis_url) as events:
        s = rstack(concurrency=2, **ENV)
        api = s.api
        # both pool processes busy
        blockers = [api.submit("pause", xrows(1)), api.submit("pause", xrows(1))]
        for b in blockers:
            assert api.wait_status(b, {"running"}, 30)["status"] == "running"
        # the job and a copy of its message wait in the buffer, then share one batch
        job = api.submit("held", xrows(2, x1=MARK))
        _push_duplicate(client, prefix, job)
        assert api.wait_status(job, {"running"}, 30)["status"] == "running"
        # the second pool process frees up while the job runs: another copy goes there
        for b in blockers:
            assert api.wait_all([b], 30)[b]["status"] == "succeeded"
        _push_duplicate(client, prefix, job)
        events.wait_for(lambda: len(events.of(job, "task-started")) == 3, 30,
                        "the three deliveries of the job to start")
        # the worker keeps the running job's lease alive
        assert _renewed(client, f"{prefix}:lease:{job}", 30), client.pttl(f"{prefix}:lease:{job}")
        assert api.get(job)["status"] == "running"
        gate.touch()

        view = api.wait_all([job], 30)[job]
        assert view["status"] == "succeeded", diagnose(redis_url, prefix, {job: view})
        assert len(view["outputs"]) == 2
        events.wait_for(lambda: any(events.of(job, k) for k in FINAL_EVENTS), 30,
                        "a final task event of the job")
        # each message acknowledged, none left in the queue
        assert wait_until(lambda: broker_state(redis_url, [job])[job] == "no unacked message",
                          30), broker_state(redis_url, [job])
        assert client.llen(settings_env["PREDQ_DEFAULT_QUEUE"]) == 0
        events.wait_for(lambda: len(events.of(job, "task-received")) == 3, 30,
                        "the three deliveries to be received")

        # predicted once: one call saw the job's rows, once each
        calls = [c for c in traced(str(trace)) if MARK in c]
        assert len(calls) == 1 and calls[0].count(MARK) == 2, calls
        h = job_hash(redis_url, prefix, job)
        assert int(h["deliveries"]) == 1, h
        assert int(h["predictions"]) == 1, h
        assert not client.exists(f"{prefix}:lease:{job}")  # dropped with the finish
        # Flower's state: SUCCESS, and no event that says otherwise
        assert events.of(job, "task-revoked") == []
        assert events.of(job, "task-failed") == []
        assert events.state_of(job) == "SUCCESS"
        assert len(events.of(job, "task-succeeded")) == 1
        api.reread([job])
        api.assert_no_double_results()
    client.close()
