"""Duplicate messages of a running job: predicted once, counted once, shown once in Flower.

Issue 13, "Every job predicted by at most one worker at a time". Duplicate messages do
happen: kombu restores a live worker's unacknowledged message once it is older than the
visibility timeout, and the reaper republishes a job whose queue looks empty while its
message sits prefetched in a worker's buffer. Here the duplicates are pushed onto the queue
as the reaper pushes them, while the job runs in a real worker (two pool processes):

- one copy lands in the same micro-batch as the job itself (both wait in the buffer while
  the pool is busy, and are handed over together);
- another is handed to the second, idle pool process while the first one predicts the job.

The job must be predicted exactly once (the model's trace file), its delivery count must
stay 1 and its ``predictions`` counter 1, every message must be acknowledged, and the task
events (which Flower's state is built from) must end in SUCCESS with no revoked or failed
event for the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from shared.messages import predict_message
from tests.helpers.events import EventLog
from tests.helpers.killer import traced
from tests.reliability.conftest import broker_state, diagnose, job_hash, wait_until, xrows

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

DELAY_S = 4.0
ENV = {
    "PREDQ_MAX_WAIT_MS": "2000",  # jobs buffered behind a busy pool are handed over together
    "PREDQ_VISIBILITY_TIMEOUT_S": "60",  # no restore of our own messages during the test
    "PREDQ_JOB_TIME_LIMIT_S": "30",
}
FINAL_EVENTS = ("task-succeeded", "task-failed", "task-revoked")
MARK = 500.0  # the x1 value of the job's rows, to find its predict calls in the trace


def _push_duplicate(redis_url: str, prefix: str, job_id: str) -> None:
    h = job_hash(redis_url, prefix, job_id)
    client = redis.Redis.from_url(redis_url)
    try:
        client.lpush(h["queue"], predict_message(job_id, h["model"], h["version"],
                                                 int(h["n_inputs"]), h["queue"]))
    finally:
        client.close()


def test_duplicate_messages_of_a_running_job_are_skipped(
        rstack: Any, push: Any, redis_url: str, settings_env: dict[str, str],
        tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    push("slow", "killer", delay=DELAY_S, trace=str(trace))
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    with EventLog(redis_url) as events:
        s = rstack(concurrency=2, **ENV)
        api = s.api
        # both pool processes busy
        blockers = [api.submit("slow", xrows(1)), api.submit("slow", xrows(1))]
        for b in blockers:
            assert api.wait_status(b, {"running"}, 30)["status"] == "running"
        # the job and a copy of its message wait in the buffer, then share one batch
        job = api.submit("slow", xrows(2, x1=MARK))
        _push_duplicate(redis_url, prefix, job)
        assert api.wait_status(job, {"running"}, 3 * DELAY_S + 20)["status"] == "running"
        # a second pool process frees up while the job runs: another copy goes there
        for b in blockers:
            assert api.wait_all([b], 30)[b]["status"] == "succeeded"
        _push_duplicate(redis_url, prefix, job)
        events.wait_for(lambda: len(events.of(job, "task-started")) == 3, 30,
                        "the three deliveries of the job to start")

        view = api.wait_all([job], 3 * DELAY_S + 20)[job]
        assert view["status"] == "succeeded", diagnose(redis_url, prefix, {job: view})
        assert len(view["outputs"]) == 2
        events.wait_for(lambda: any(events.of(job, k) for k in FINAL_EVENTS), 30,
                        "a final task event of the job")
        # each message acknowledged, none left in the queue
        assert wait_until(lambda: broker_state(redis_url, [job])[job] == "no unacked message",
                          30), broker_state(redis_url, [job])
        assert redis.Redis.from_url(redis_url).llen(settings_env["PREDQ_DEFAULT_QUEUE"]) == 0
        # late events (if any) have had the time the first ones took to arrive
        events.wait_for(lambda: len(events.of(job, "task-received")) == 3, 30,
                        "the three deliveries to be received")

        # predicted once: one call saw the job's rows, once each
        calls = [c for c in traced(str(trace)) if MARK in c]
        assert len(calls) == 1 and calls[0].count(MARK) == 2, calls
        h = job_hash(redis_url, prefix, job)
        assert int(h["deliveries"]) == 1, h
        assert int(h["predictions"]) == 1, h
        # Flower's state: SUCCESS, and no event that says otherwise
        assert events.of(job, "task-revoked") == []
        assert events.of(job, "task-failed") == []
        assert events.state_of(job) == "SUCCESS"
        # the copy handed to the idle process was skipped while the job still ran
        started = sorted(e["timestamp"] for e in events.of(job, "task-started"))
        (succeeded,) = events.of(job, "task-succeeded")
        assert started[-1] < succeeded["timestamp"]
        api.reread([job])
        api.assert_no_double_results()
