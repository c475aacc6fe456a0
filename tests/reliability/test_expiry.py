"""Expiry: job records, results and idempotency keys leave Redis after the result TTL.

Issue 5, FAULTS: "Expiry". With ``PREDQ_RESULT_TTL_S`` small, every job shows ``expires_at``;
after the TTL a job answers 404 saying it expired; and after a run of jobs of every outcome
(succeeded, failed, cancelled, expired), each submitted with an Idempotency-Key, a SCAN of the
test's key prefix finds no job or idempotency key left: what remains is a fixed set of
per-model counters and statistics, whose number does not grow with the number of jobs, so
Redis memory stays bounded.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
import redis

from tests.reliability.conftest import broker_state, irows, wait_until, xrows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TTL_S = 8


def _wait_past(api: Any, job_ids: list[str], seconds: float) -> None:
    """Wait (bounded) until ``seconds`` have passed since the latest ``created_at`` of the
    jobs, as the API recorded it: the deadline is the jobs' own, not a guessed sleep."""
    created = max(datetime.fromisoformat(api.get(j)["created_at"].replace("Z", "+00:00"))
                  .timestamp() for j in job_ids)
    assert wait_until(lambda: time.time() > created + seconds, seconds + 30, poll=0.05)


def _scan(redis_url: str, pattern: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


@pytest.mark.slow
def test_records_and_keys_expire_after_the_result_ttl(
        rstack: Any, push: Any, redis_url: str, settings_env: dict[str, str]) -> None:
    push("boom", "raise")
    s = rstack(concurrency=1, PREDQ_RESULT_TTL_S=str(TTL_S), PREDQ_MAX_WAIT_MS="5")
    api = s.api
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    n = 0

    def post(model: str, rows: Any, **body: Any) -> str:
        nonlocal n
        n += 1
        r = api.post_job(model, rows, headers={"Idempotency-Key": f"exp-{n}"}, **body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def check_expires_at(views: dict[str, dict[str, Any]], since: float) -> None:
        """Each job shows when it expires, as read the moment it ended: not before it was
        read, and no later than the TTL from now. (Checked per group as each ends: an
        earlier group may be gone by the time a worker restart on a loaded machine ends.)"""
        for v in views.values():
            assert v["expires_at"] is not None, v
            at = datetime.fromisoformat(v["expires_at"].replace("Z", "+00:00")).timestamp()
            assert since - 1 <= at <= time.time() + TTL_S + 1.5, (v["expires_at"], v["status"])

    # warm the worker up (model loads), so that every job below ends well inside the TTL
    t0 = time.time()
    warm = [api.submit("iris", irows(1)), api.submit("boom", xrows(1))]
    warm_views = api.wait_all(warm, 30)
    assert {v["status"] for v in warm_views.values()} == {"succeeded"}
    check_expires_at(warm_views, t0)
    t0 = time.time()
    ids = [post("iris", irows(3, seed=i)) for i in range(30)]
    ids += [post("boom", [{"x1": -1.0, "x2": 0.0}]) for _ in range(3)]  # failed
    ids += [post("boom", xrows(2)) for _ in range(3)]
    views = api.wait_all(ids, 60)
    assert {v["status"] for v in views.values()} == {"succeeded", "failed"}
    check_expires_at(views, t0)
    # cancelled and expired jobs: submitted while no worker runs
    s.workers[0].stop()
    t0 = time.time()
    cancelled = [post("iris", irows(2)) for _ in range(3)]
    for j in cancelled:
        r = api.delete(j)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    # they ended now, at their cancellation (their TTL may run out before a worker is back)
    check_expires_at({j: api.get(j) for j in cancelled}, t0)
    expired = [post("iris", irows(2), cancel_after=0.2) for _ in range(3)]
    _wait_past(api, expired, 0.3)  # their deadline passed while no worker ran
    s.add_worker(1)
    t0 = time.time()
    late_views = api.wait_all(expired, 30)
    views.update(late_views)
    assert {views[j]["status"] for j in expired} == {"expired"}, [views[j] for j in expired]
    check_expires_at(late_views, t0)
    all_ids = warm + ids + cancelled + expired
    assert _scan(redis_url, f"{prefix}:job:*") and _scan(redis_url, f"{prefix}:idem:*")
    # after the TTL: gone, with a clear 404, and nothing per job is left in Redis
    deadline = time.monotonic() + TTL_S + 10
    while _scan(redis_url, f"{prefix}:job:*") and time.monotonic() < deadline:
        time.sleep(0.5)
    for j in all_ids[::5]:
        r = api.c.get(f"/v1/jobs/{j}")
        assert r.status_code == 404 and "expired" in r.json()["detail"], r.text
    assert _scan(redis_url, f"{prefix}:job:*") == []
    assert _scan(redis_url, f"{prefix}:idem:*") == []
    left = _scan(redis_url, f"{prefix}:*")
    assert not [k for k in left if any(j in k for j in all_ids)], left
    assert len(left) < 40, left  # per-model counters and stats only, not per job
    # and no broker message of these jobs lingers unacknowledged
    lingering = {j: st for j, st in broker_state(redis_url, all_ids).items()
                 if st != "no unacked message"}
    assert not lingering, lingering
    # an Idempotency-Key may be reused once its job expired: it makes a new job
    r = api.post_job("iris", irows(3, seed=0), headers={"Idempotency-Key": "exp-1"})
    assert r.status_code == 202 and r.json()["id"] != ids[0]
    assert "idempotent-replayed" not in r.headers


def test_a_job_queued_longer_than_the_ttl_is_not_lost(
        rstack: Any, start_api: Any, keys: dict[str, str], redis_url: str,
        settings_env: dict[str, str]) -> None:
    """The TTL keeps *results*: an accepted job must not vanish while it waits or runs, and
    its rows must not stay counted against the queue limit (backpressure) forever."""
    from tests.reliability.conftest import Api

    env = {"PREDQ_RESULT_TTL_S": "4", "PREDQ_QUEUE_MAX_ROWS": "10"}
    api = Api(start_api(extra_env=env), {"Authorization": f"Bearer {keys['user']}"})
    try:
        waiting = [api.submit("iris", irows(5, seed=i)) for i in range(2)]  # queue now full
        assert api.post_job("iris", irows(1)).status_code == 429
        _wait_past(api, waiting, 4.5)  # no worker for longer than the TTL
        s = rstack(concurrency=1, **env)
        # read each result as it ends (the result TTL counts from the end of the job)
        seen = {j: s.api.c.get(f"/v1/jobs/{j}", params={"wait": 10}, timeout=20)
                for j in waiting}
        prefix = settings_env["PREDQ_KEY_PREFIX"]
        client = redis.Redis.from_url(redis_url)
        try:
            qrows = int(client.get(f"{prefix}:qrows:iris") or 0)
        finally:
            client.close()
        after = api.post_job("iris", irows(1))
        # every accepted job still ends, with its result (not a 404 for a job that never ran)
        lost = {j: r.text for j, r in seen.items()
                if r.status_code != 200 or r.json()["status"] != "succeeded"}
        # and the rows of a job that is gone are not counted as queued forever (backpressure)
        assert not lost and qrows == 0 and after.status_code == 202, (
            f"lost jobs: {lost}; {qrows} rows still counted as queued for iris; "
            f"a new 1-row job now gets {after.status_code} {after.text}")
    finally:
        api.close()
