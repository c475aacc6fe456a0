"""Redis restarts while jobs are queued: 503 while it is down, nothing lost after.

Issue 5, FAULTS: "Redis restarts while jobs are queued". A private redis-server with an
append-only file (``start_redis(appendonly=True)``) serves the API and a slow worker. With jobs
queued in the broker, buffered in the worker and one running, Redis is stopped and started
again on the same port with the same AOF. While it is down, every API request that needs it
answers ``503 application/problem+json`` with ``Retry-After`` at once (never a hang, never a
500). Afterwards the worker and the API reconnect on their own, and every job that got a 202
before the restart reaches a terminal state (here: succeeds), each with one result.

The reaper path is part of it: a message can be lost in the outage (popped from the queue
just as Redis went away, before kombu recorded it as unacknowledged), leaving its job
``queued`` with no message anywhere. That window cannot be hit on purpose, so right after the
restart the test creates such a job (the job store's own submit, its message pushed to a list
nobody reads), and the reaper (``PREDQ_STUCK_AFTER_S``, ``PREDQ_REAPER_INTERVAL_S`` set low)
must redeliver it once the queue is empty. Every job must succeed: nothing is excused.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from tests.reliability.conftest import (
    diagnose,
    irows,
    wait_until,
    xrows,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

#: A request to the API while Redis is down must be answered within this many seconds.
FAST_S = 3.0


def _assert_503(r: httpx.Response, elapsed: float, what: str) -> None:
    assert r.status_code == 503, f"{what}: {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/problem+json"), what
    assert int(r.headers["retry-after"]) >= 1, what
    body = r.json()
    assert body["status"] == 503 and body["title"] and body["detail"], body
    assert elapsed < FAST_S, f"{what} took {elapsed:.1f} s while Redis was down"


def _lose_a_message(url: str, prefix: str, queue: str) -> str:
    """A queued iris job whose message is gone, as the outage's pop-then-record window leaves
    it: written by the job store's submit script, its message pushed to an unread list."""
    import uuid

    from predq.shared.jobstore import codec
    from predq.shared.jobstore.keys import Keys
    from predq.shared.jobstore.messages import predict_message
    from predq.shared.jobstore.scripts import Scripts, now_iso
    from predq.shared.jobstore.status import JobStatus

    rows = irows(3, seed=99)
    names = list(rows[0])
    inputs = codec.encode(len(rows), [(n, "number", [r[n] for r in rows]) for n in names])
    job_id = str(uuid.uuid4())
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        reply = Scripts(client, Keys(prefix)).submit(
            job_id=job_id, queue=f"{queue}.void", model="iris", n_rows=len(rows), ttl=3600,
            message=predict_message(job_id, "iris", "1", len(rows), queue),
            fields={"status": JobStatus.QUEUED, "model": "iris", "version": "1",
                    "n_inputs": len(rows),
                    "created_at": now_iso(), "owner": "user", "inputs": inputs,
                    "queue": queue})
        assert reply[0].decode() == job_id, reply
    finally:
        client.close()
    return job_id


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_redis_restart_with_jobs_queued(rstack: Any, push: Any, start_redis: Any,
                                        settings_env: dict[str, str], how: str) -> None:
    server = start_redis(appendonly=True)
    # the reaper runs every second and redelivers jobs stuck for 25 s; the batch hard time
    # limit (2 x 4 + 10 s) stays below the visibility timeout and stuck_after_s
    env = {"PREDQ_REDIS_URL": server.url, "PREDQ_VISIBILITY_TIMEOUT_S": "20",
           "PREDQ_JOB_TIME_LIMIT_S": "4", "PREDQ_STUCK_AFTER_S": "25",
           "PREDQ_REAPER_INTERVAL_S": "1",
           "PREDQ_WORKER_HEARTBEAT_S": "1", "PREDQ_MAX_WAIT_MS": "200"}
    push("pause", "killer", delay=1.5)
    s = rstack(concurrency=1, **env)
    api = s.api
    # a running job, jobs buffered in the worker, jobs still in the broker queue
    running = api.submit("pause", xrows(1))
    assert api.wait_status(running, {"running"}, 20)["status"] == "running"
    accepted = [running]
    for i in range(6):
        accepted.append(api.submit("pause", xrows(1 + i % 3)))
        accepted.append(api.submit("iris", irows(2, seed=i)))
    if how == "kill":
        time.sleep(1.2)  # AOF fsyncs every second: what got a 202 more than 1 s ago survives
    # -- Redis goes away --------------------------------------------------------------------
    server.kill() if how == "kill" else server.stop()
    probe = httpx.Client(base_url=s.base_url, headers=api.headers, timeout=5.0, trust_env=False)
    try:
        checks = {
            "POST job": lambda: probe.post("/v1/models/iris/jobs", json={"inputs": irows(1)}),
            "POST predict": lambda: probe.post("/v1/models/iris/predict",
                                               json={"inputs": irows(1)}),
            "GET job": lambda: probe.get(f"/v1/jobs/{accepted[1]}"),
            "GET job ?wait": lambda: probe.get(f"/v1/jobs/{accepted[1]}", params={"wait": 3}),
            "DELETE job": lambda: probe.delete(f"/v1/jobs/{accepted[2]}"),
        }
        for _ in range(2):  # twice: the first failure must not leave anything in a bad state
            for what, call in checks.items():
                t0 = time.monotonic()
                r = call()
                _assert_503(r, time.monotonic() - t0, what)
        t0 = time.monotonic()
        r = probe.get("/readyz")
        assert r.status_code == 503 and time.monotonic() - t0 < FAST_S, r.text
        assert probe.get("/healthz").status_code == 200  # the process itself is fine
        time.sleep(2.0)  # the worker notices too (its heartbeat and its broker connection)
        assert s.workers[0].alive(), "the worker exited while Redis was down"
        # -- Redis comes back on the same port with the same AOF ------------------------------
        server.restart()
        # the API reconnects on its own
        posted: list[httpx.Response] = []
        assert wait_until(lambda: posted.append(probe.post(
            "/v1/models/iris/jobs", json={"inputs": irows(2)})) or posted[-1].status_code == 202,
            20, poll=0.5), posted[-1].text
        after = [posted[-1].json()["id"]]
    finally:
        probe.close()
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    lost = _lose_a_message(server.url, prefix, settings_env["PREDQ_DEFAULT_QUEUE"])
    # the worker reconnects on its own: it is the same process, and it serves the new job
    views = api.wait_all([*accepted, *after, lost], 150)
    assert s.workers[0].alive()
    stuck = {j: v for j, v in views.items() if v["status"] not in
             ("succeeded", "failed", "cancelled", "expired")}
    assert not stuck, (f"accepted jobs not terminal after the Redis {how}:\n"
                       + diagnose(server.url, prefix, stuck))
    failed = {j: v for j, v in views.items() if v["status"] != "succeeded"}
    assert not failed, "jobs that did not succeed:\n" + diagnose(server.url, prefix, failed)
    assert "reaper redelivered" in s.workers[0].tail(400), "the lost job came back otherwise"
    time.sleep(1.0)
    api.reread(views)
    api.assert_no_double_results()
    assert wait_until(lambda: api.c.get("/readyz").status_code == 200, 15, poll=0.5)
