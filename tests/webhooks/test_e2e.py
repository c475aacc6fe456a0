"""Webhooks end to end: real uvicorn, real Celery workers, real Redis, a real receiver that
verifies every request with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis

from predq.api.schemas import Job, WebhookEvent
from predq.demo import iris_sample_rows
from tests.webhooks.conftest import ReceiverProc

pytestmark = pytest.mark.integration


def up(start_worker: Callable[..., Any], start_api: Callable[..., str], *,
       concurrency: int = 2, worker_env: dict[str, str] | None = None) -> str:
    start_worker(concurrency, extra_env=worker_env)
    return start_api()


def client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def submit(c: httpx.Client, url: str, n: int = 2, seed: int = 0) -> str:
    r = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(n, seed=seed),
                                             "webhook": {"url": url}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_webhook(c: httpx.Client, job_id: str, states: set[str], timeout: float = 30
                 ) -> dict[str, Any]:
    """The job once its webhook reached one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["webhook"]["state"] in states:
            return dict(job)
        assert time.monotonic() < deadline, job["webhook"]
        time.sleep(0.05)


@pytest.mark.slow
def test_100_concurrent_jobs_each_get_one_verified_completed(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        webhook_env: dict[str, str],
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    base = up(start_worker, start_api)
    hook = receiver.hook("ok")

    async def submit_all() -> list[str]:
        async with httpx.AsyncClient(base_url=base, timeout=60, headers={
                "Authorization": f"Bearer {keys['user']}"}) as ac:
            replies = await asyncio.gather(*(ac.post("/v1/models/iris/jobs", json={
                "inputs": iris_sample_rows(1 + i % 5, seed=i),
                "webhook": {"url": hook, "events": ["job.completed"]}}) for i in range(100)))
        assert all(r.status_code == 202 for r in replies)
        return [str(r.json()["id"]) for r in replies]

    ids = asyncio.run(submit_all())
    with client(base, keys["user"]) as c:
        jobs = {i: wait_webhook(c, i, {"delivered", "failed"}) for i in ids}
    log = receiver.log()
    assert all(h["verified"] for h in log), [h["verify_error"] for h in log]
    per_job = Counter(h["body"]["data"]["id"] for h in log)
    assert set(per_job) == set(ids) and set(per_job.values()) == {1}
    with client(base, keys["user"]) as c:
        for hit in log:
            body = hit["body"]
            assert body["type"] == "job.completed"
            WebhookEvent.model_validate(body)  # the schema the OpenAPI document publishes
            data = body["data"]
            got = c.get(f"/v1/jobs/{data['id']}").json()
            Job.model_validate(got)
            assert data["status"] == got["status"] == "succeeded"
            assert data["outputs"] == got["outputs"]
            for key in ("model", "version", "n_inputs", "created_at", "finished_at", "error"):
                assert data[key] == got[key]
            assert hit["headers"]["webhook-id"] == got["webhook"]["webhook_id"]
            assert jobs[data["id"]]["webhook"]["state"] == "delivered"
            assert [a["status_code"] for a in got["webhook"]["attempts"]] == [200]
    # every webhook message was acknowledged (kombu's hash of unacked messages)
    deadline = time.monotonic() + 10
    while unacked_webhook_messages(webhook_env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unacked_webhook_messages(webhook_env) == 0


def unacked_webhook_messages(env: dict[str, str]) -> int:
    r = redis.Redis.from_url(env["PREDQ_REDIS_URL"])
    try:
        queue = env["PREDQ_WEBHOOK_QUEUE"]
        return sum(1 for _, raw in r.hscan_iter("unacked", count=1000)
                   if orjson.loads(raw)[2] == queue)
    finally:
        r.close()


def test_503_twice_then_200_gives_three_logged_attempts(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    base = up(start_worker, start_api)
    with client(base, keys["user"]) as c:
        job_id = submit(c, receiver.hook("fail/503/2"))
        job = wait_webhook(c, job_id, {"delivered", "failed"})
    hook = job["webhook"]
    assert hook["state"] == "delivered" and job["status"] == "succeeded"
    assert [a["status_code"] for a in hook["attempts"]] == [503, 503, 200]
    for a in hook["attempts"]:
        assert a["at"] and a["duration_ms"] >= 0 and a["error"] is None
    log = receiver.log()
    assert [h["answered"] for h in log] == [503, 503, 200]
    assert len({h["headers"]["webhook-id"] for h in log}) == 1  # stable across retries
    assert all(h["verified"] for h in log)
    shown = str(job)
    assert "whsec_" not in shown and "v1," not in shown  # no secret, no signature
    metrics = httpx.get(f"{base}/metrics", params={"scope": "cluster"}).text
    assert 'predq_webhook_deliveries_total{outcome="retry"} 2' in metrics
    assert 'predq_webhook_deliveries_total{outcome="delivered"} 1' in metrics


def test_410_stops_after_one_attempt(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    base = up(start_worker, start_api)
    with client(base, keys["user"]) as c:
        job_id = submit(c, receiver.hook("status/410"))
        job = wait_webhook(c, job_id, {"failed"})
        time.sleep(1.5)  # five times the retry delay: a retry would have come by now
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [410]
    assert "410" in job["webhook"]["detail"]
    assert len(receiver.log()) == 1


def test_retry_after_is_honoured(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    base = up(start_worker, start_api)
    with client(base, keys["user"]) as c:
        job_id = submit(c, receiver.hook("retry-after/2"))
        job = wait_webhook(c, job_id, {"delivered", "failed"})
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [429, 200]
    first, second = receiver.log()
    assert second["t"] - first["t"] >= 2.0


@pytest.mark.slow
def test_a_hanging_receiver_delays_no_prediction(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        webhook_env: dict[str, str], start_worker: Callable[..., Any],
        start_api: Callable[..., str]) -> None:
    """One pool process; its webhook hangs until the timeout, and jobs still flow."""
    webhook_env.update(PREDQ_WEBHOOK_TIMEOUT_S="8", PREDQ_WEBHOOK_RETRY_SCHEDULE_S="0")
    base = up(start_worker, start_api, concurrency=1)
    with client(base, keys["user"]) as c:
        job_id = submit(c, receiver.hook("hang"))
        assert c.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
        receiver.wait_for(lambda log: len(log) == 1)
        for seed in range(5):
            r = c.post("/v1/models/iris/predict", json={"inputs": iris_sample_rows(2, seed)})
            assert r.status_code == 200, r.text
        r = c.delete(f"/v1/jobs/{submit(c, receiver.hook('ok'))}")  # cancel is not held up
        assert r.status_code in (200, 409)
        # all of that happened while the hanging delivery was still in flight
        assert c.get(f"/v1/jobs/{job_id}").json()["webhook"]["state"] == "delivering"
        job = wait_webhook(c, job_id, {"failed"})
    assert job["status"] == "succeeded"
    [attempt] = job["webhook"]["attempts"]
    assert attempt["error"].startswith("Timeout") and attempt["status_code"] is None


def test_dead_letters_are_listed_and_redelivered_by_an_admin(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        webhook_env: dict[str, str], start_worker: Callable[..., Any],
        start_api: Callable[..., str]) -> None:
    webhook_env["PREDQ_WEBHOOK_RETRY_SCHEDULE_S"] = "0,0.2"
    base = up(start_worker, start_api)
    with client(base, keys["user"]) as c, client(base, keys["admin"]) as admin:
        job_id = submit(c, receiver.hook("fail/503/2"))
        job = wait_webhook(c, job_id, {"failed"})
        assert job["webhook"]["detail"] == "gave up after 2 attempts"
        assert c.get("/v1/webhooks/dead").status_code == 403
        dead = admin.get("/v1/webhooks/dead").json()
        assert dead["total"] == 1 and dead["items"][0]["job_id"] == job_id
        assert dead["items"][0]["last_attempt"]["status_code"] == 503
        assert c.post(f"/v1/jobs/{job_id}/webhook/redeliver").status_code == 403
        r = admin.post(f"/v1/jobs/{job_id}/webhook/redeliver")
        assert r.status_code == 202, r.text
        job = wait_webhook(c, job_id, {"delivered"})
        assert [a["status_code"] for a in job["webhook"]["attempts"]] == [503, 503, 200]
        assert admin.get("/v1/webhooks/dead").json()["total"] == 0
        again = admin.post(f"/v1/jobs/{job_id}/webhook/redeliver")  # delivered: may resend
        assert again.status_code == 202
        wait_webhook(c, job_id, {"delivered"})
        missing = admin.post("/v1/jobs/00000000-0000-0000-0000-000000000000/webhook/redeliver")
        assert missing.status_code == 404
    log = receiver.log()
    assert len({h["headers"]["webhook-id"] for h in log}) == 1
    assert [h["answered"] for h in log] == [503, 503, 200, 200]


def _loopback_only_name() -> str | None:
    """A host name (not 'localhost') that resolves to loopback addresses only, or None."""
    for name in ("vm", "runsc", socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addrs = {info[4][0] for info in infos}
        if addrs and all(a.startswith("127.") or a == "::1" for a in addrs) \
                and not name.endswith("localhost"):
            return name
    return None


def test_the_guard_refuses_at_submit_and_at_delivery_with_the_allow_list_off(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        webhook_env: dict[str, str], start_worker: Callable[..., Any],
        start_api: Callable[..., str]) -> None:
    name = _loopback_only_name()
    if name is None:
        pytest.skip("no host name here resolves to loopback only")
    webhook_env["PREDQ_WEBHOOK_ALLOW_HOSTS"] = ""
    base = up(start_worker, start_api)
    with client(base, keys["user"]) as c:
        r = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1),
                                                 "webhook": {"url": receiver.hook("ok")}})
        assert r.status_code == 422
        assert r.json()["errors"][0]["loc"] == ["body", "webhook", "url"]
        # a name that is not plainly bad passes submit, and is refused once resolved
        job_id = submit(c, receiver.hook("ok").replace("127.0.0.1", name))
        job = wait_webhook(c, job_id, {"failed"})
    assert job["status"] == "succeeded"
    [attempt] = job["webhook"]["attempts"]
    assert attempt["error"].startswith(f"BlockedAddress: {name} resolves to 127.")
    assert receiver.log() == []


@pytest.mark.slow
def test_a_backlog_of_dead_receivers_never_takes_the_predict_prefetch(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        webhook_env: dict[str, str], start_worker: Callable[..., Any],
        start_api: Callable[..., str]) -> None:
    """Prefetch of 2 messages and one delivery thread: 8 hanging webhooks are held (4) or
    parked in Redis (4), predictions keep flowing, and each webhook is attempted once."""
    webhook_env.update(PREDQ_WEBHOOK_TIMEOUT_S="1.5", PREDQ_WEBHOOK_RETRY_SCHEDULE_S="0",
                       PREDQ_WEBHOOK_CONCURRENCY="1", PREDQ_MAX_BATCH_JOBS="1")
    base = up(start_worker, start_api, concurrency=1)
    with client(base, keys["user"]) as c:
        ids = [submit(c, receiver.hook("hang"), seed=i) for i in range(8)]
        for job_id in ids:
            assert c.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == \
                "succeeded"
        receiver.wait_for(lambda log: len(log) >= 1)
        for seed in range(5):
            r = c.post("/v1/models/iris/predict", json={"inputs": iris_sample_rows(2, seed)})
            assert r.status_code == 200, r.text
        assert len(receiver.log()) < 8  # the predictions did not wait for the backlog
        jobs = [wait_webhook(c, j, {"failed"}, timeout=60) for j in ids]
    for job in jobs:
        [attempt] = job["webhook"]["attempts"]
        assert attempt["error"].startswith("Timeout")
    log = receiver.log()
    assert len(log) == 8 and len({h["headers"]["webhook-id"] for h in log}) == 8
