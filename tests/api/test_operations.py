"""/metrics, /healthz, /readyz and the request log, over the real app in-process.

(The same endpoints with real worker processes: tests/e2e/test_operations.py.)
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from predq.demo import iris_sample_rows
from predq.shared.jobstore.keys import Keys

pytestmark = pytest.mark.integration


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_requests_are_counted_by_route_template_and_logged(
        api: Any, settings_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="predq.access")
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(2)},
                         headers={"X-Request-ID": "req-123"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert r.headers["x-request-id"] == "req-123"
        missing = str(uuid.uuid4())
        assert (await c.get(f"/v1/jobs/{missing}")).status_code == 404
        assert (await c.get("/no/such/path")).status_code == 404
        generated = (await c.get("/healthz")).headers["x-request-id"]
        assert len(generated) == 32
        got = scrape((await c.get("/metrics", params={"scope": "process"})).text)
    key = ("predq_http_requests_total",
           (("method", "POST"), ("route", "/v1/models/{name}/jobs"), ("status", "202")))
    assert got[key] == 1
    assert got[("predq_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}"),
                                              ("status", "404")))] == 1
    assert got[("predq_http_requests_total", (("method", "GET"), ("route", "unmatched"),
                                              ("status", "404")))] == 1
    assert got[("predq_http_request_duration_seconds_count",
                (("method", "POST"), ("route", "/v1/models/{name}/jobs")))] == 1
    assert not any(name.startswith("predq_queue") for name, _ in got)  # process scope only
    lines = [r for r in caplog.records if r.name == "predq.access"]
    submit = next(r for r in lines if r.route == "/v1/models/{name}/jobs")
    assert submit.job_id == job_id and submit.status == 202
    assert submit.request_id == "req-123" and submit.duration_ms > 0
    read = next(r for r in lines if r.route == "/v1/jobs/{job_id}")
    assert read.job_id == missing
    assert "sepal" not in caplog.text  # no input rows in logs


async def test_cluster_metrics_show_queue_depth_and_cancellations(
        api: Any, settings_env: dict[str, str]) -> None:
    queue = settings_env["PREDQ_DEFAULT_QUEUE"]
    async with api() as c:
        ids = []
        for _ in range(3):  # no worker runs: the jobs wait in the queue
            r = await c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)})
            ids.append(r.json()["id"])
        assert (await c.delete(f"/v1/jobs/{ids[0]}")).status_code == 200
        text = (await c.get("/metrics", params={"scope": "cluster"})).text
    got = scrape(text)
    assert got[("predq_queue_depth", (("queue", queue),))] == 3  # the message stays queued
    assert got[("predq_queue_depth", (("queue", settings_env["PREDQ_WEBHOOK_QUEUE"]),))] == 0
    assert got[("predq_jobs_finished_total", (("status", "cancelled"),))] == 1
    assert got[("predq_workers_alive", ())] == 0
    assert got[("predq_redis_up", ())] == 1
    assert "predq_http_requests_total" not in text  # cluster scope only


async def test_readyz_wants_a_recent_worker_heartbeat(api: Any, settings_env: dict[str, str]
                                                      ) -> None:
    keys = Keys(settings_env["PREDQ_KEY_PREFIX"])
    queue = settings_env["PREDQ_DEFAULT_QUEUE"]
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    async with api(worker_heartbeat_s=1.0) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "no worker has sent a heartbeat in the last 3 s"
        assert r.json()["workers"] == [] and queue in r.json()["unserved_queues"]

        client.zadd(keys.workers_alive(), {"w1@host": time.time()})
        client.set(keys.worker_info("w1@host"), orjson.dumps({"queues": [queue]}))
        r = await c.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["redis"] == "ok"
        assert [w["hostname"] for w in body["workers"]] == ["w1@host"]
        assert body["queues"][queue] == ["w1@host"]
        assert body["unserved_queues"] == [settings_env["PREDQ_WEBHOOK_QUEUE"]]

        client.zadd(keys.workers_alive(), {"w1@host": time.time() - 10})  # a stale beat
        assert (await c.get("/readyz")).status_code == 503
    client.close()


async def test_readyz_and_metrics_when_redis_is_down(api: Any, start_redis: Any) -> None:
    server = start_redis()
    url = server.url
    server.stop()
    async with api(redis_url=url) as c:
        assert (await c.get("/healthz")).status_code == 200  # alive all the same
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["detail"].startswith("Redis does not answer")
        got = scrape((await c.get("/metrics")).text)
        assert got[("predq_redis_up", ())] == 0
