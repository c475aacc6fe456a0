"""Backpressure does not drift: a cancelled job's rows leave the queued-rows counter once.

Issue 13, "Idempotency and metrics that tell the truth": a job cancelled while queued has its
rows taken off ``Keys.queued_rows`` by the cancel. Its message stays in the queue; when the
record expires (the result TTL) before a worker takes the message, the claim found no record
and took the rows off again, so the counter ended below the real backlog (negative), and the
queue limit let that many extra rows in for good.

Real API, real worker, real Redis; the result TTL is shortened so the record expires while the
message waits (no worker runs yet).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from predq.shared.jobstore.keys import Keys
from tests.reliability.conftest import Api, broker_state, irows, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENV = {"PREDQ_RESULT_TTL_S": "3", "PREDQ_MAX_WAIT_MS": "200"}


def test_a_cancelled_job_whose_record_expired_is_not_counted_off_twice(
        registry_with_models: Any, start_worker: Any, start_api: Any, keys: dict[str, str],
        settings_env: dict[str, str]) -> None:
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    k = Keys(settings_env["PREDQ_KEY_PREFIX"])
    queue = settings_env["PREDQ_DEFAULT_QUEUE"]

    def qrows() -> int:
        return int(client.get(k.queued_rows("iris")) or 0)

    api = Api(start_api(extra_env=ENV), {"Authorization": f"Bearer {keys['user']}"})
    try:
        victim = api.submit("iris", irows(3))
        assert qrows() == 3
        r = api.delete(victim)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert qrows() == 0
        # the record expires (result TTL) while its message still waits in the queue
        assert wait_until(lambda: not client.exists(k.job(victim)), 30), "record kept"
        assert client.llen(queue) == 1
        keep = api.submit("iris", irows(5, seed=1))
        assert qrows() == 5
        worker = start_worker(1, extra_env=ENV)  # it takes both messages, victim first
        assert wait_until(lambda: client.llen(queue) == 0 and broker_state(
            settings_env["PREDQ_REDIS_URL"], [victim, keep]) == dict.fromkeys(
            [victim, keep], "no unacked message"), 60), "messages not consumed"
        # (keep's own record may be gone already: the result TTL is short)
        finished = client.hget(k.metrics(), 'predq_jobs_finished_total{status="succeeded"}')
        assert int(finished or 0) == 1
        assert qrows() == 0  # was -3: the victim's 3 rows were counted off twice
        assert not client.exists(k.unqueued(victim))  # PRE  # the mark went with the message
        # and the queue limit still holds exactly: 10 rows fit, the 11th does not
        limited = Api(start_api(extra_env={**ENV, "PREDQ_QUEUE_MAX_ROWS": "10"}),
                      {"Authorization": f"Bearer {keys['user']}"})
        try:
            worker.stop()
            ids = [limited.submit("iris", irows(5, seed=i)) for i in range(2)]
            assert qrows() == 10, ids
            r = limited.post_job("iris", irows(1))
            assert r.status_code == 429, r.text
        finally:
            limited.close()
    finally:
        api.close()
        client.close()


def test_the_unqueued_mark_lives_until_the_message_is_claimed(settings_env: dict[str, str]
                                                               ) -> None:
    """The store's scripts alone (a real Redis): the mark a cancel leaves is removed by the
    claim of the job's message, whether the record is still there or expired, so nothing
    per job stays behind; and the rows are counted off exactly once either way."""
    from predq.shared.jobstore.scripts import Scripts

    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    k = Keys(settings_env["PREDQ_KEY_PREFIX"])
    scripts = Scripts(client, k)
    queue = settings_env["PREDQ_DEFAULT_QUEUE"]
    try:
        for job_id, expire_first in (("00000000-0000-4000-8000-00000000000a", False),
                                     ("00000000-0000-4000-8000-00000000000b", True)):
            scripts.submit(job_id=job_id, fields={"status": "queued", "model": "iris",
                                                  "n_inputs": 2, "inputs": b""},
                           message=b"{}", queue=queue, model="iris", n_rows=2, ttl=600)
            scripts.submit(job_id=job_id + "-other", fields={"status": "queued",
                                                             "model": "iris", "n_inputs": 5},
                           message=b"{}", queue=queue, model="iris", n_rows=5, ttl=600)
            assert int(client.get(k.queued_rows("iris"))) == 7
            assert scripts.cancel(job_id, "iris", 60, 600) == b"cancelled"
            assert int(client.get(k.queued_rows("iris"))) == 5
            assert 60 < client.ttl(k.unqueued(job_id)) <= 600
            if expire_first:
                client.delete(k.job(job_id))  # the result TTL ran out before the claim
            [(code, *_)] = scripts.claim([job_id], ["iris"], 5, [2], 60)
            assert code == (b"missing" if expire_first else b"cancelled")
            assert int(client.get(k.queued_rows("iris"))) == 5  # still the other job's rows
            assert not client.exists(k.unqueued(job_id))
            scripts.claim([job_id + "-other"], ["iris"], 5, [5], 60)
            assert int(client.get(k.queued_rows("iris"))) == 0
    finally:
        client.close()
