"""Queue routing with two real workers: a model mapped to its own queue runs on its own worker.

``PREDQ_MODEL_QUEUES`` sends ``mixed`` to a queue that only the second worker consumes
(``predq worker --queues ...``). Each batch's log line names its worker and its job ids, so
the logs show which worker ran which job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from predq.demo import iris_sample_rows, mixed_sample_rows
from predq.shared.jobstore.keys import Keys
from predq.shared.registry.store import Registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_each_model_runs_on_the_worker_of_its_queue(
        registry_with_models: Registry, env: dict[str, str], start_worker: Callable[..., Any],
        start_api: Callable[..., str]) -> None:
    default_q, webhook_q = env["PREDQ_DEFAULT_QUEUE"], env["PREDQ_WEBHOOK_QUEUE"]
    mixed_q = f"{default_q}-mixed"
    extra = {"PREDQ_AUTH_ENABLED": "false", "PREDQ_WORKER_HEARTBEAT_S": "0.5",
             "PREDQ_MODEL_QUEUES": json.dumps({"mixed": mixed_q})}
    general = start_worker(1, queues=[default_q, webhook_q], extra_env=extra)
    base = start_api(extra_env=extra)
    r = redis.Redis.from_url(env["PREDQ_REDIS_URL"])
    keys = Keys(env["PREDQ_KEY_PREFIX"])

    with httpx.Client(base_url=base, timeout=30) as c:
        def submit(model: str, rows: list[dict[str, Any]]) -> str:
            resp = c.post(f"/v1/models/{model}/jobs", json={"inputs": rows})
            assert resp.status_code == 202, resp.text
            return str(resp.json()["id"])

        mixed = [submit("mixed", mixed_sample_rows(2, seed=i)) for i in range(3)]
        # jobs sent after them to the general worker's queue end: that worker consumes, and
        # still has not taken the mixed jobs (it does not serve their queue)
        iris = [submit("iris", iris_sample_rows(2, seed=i)) for i in range(3)]
        for job_id in iris:
            got = c.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
            assert got["status"] == "succeeded", got
        assert r.llen(mixed_q) == 3
        assert {r.hget(keys.job(j), "status") for j in mixed} == {b"queued"}

        special = start_worker(1, queues=[mixed_q], extra_env=extra)
        for job_id in mixed:
            got = c.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
            assert got["status"] == "succeeded", got

        ready = c.get("/readyz").json()
    assert ready["queues"] == {default_q: [general.hostname], webhook_q: [general.hostname],
                               mixed_q: [special.hostname]}
    general_log, special_log = general.tail(400), special.tail(400)
    assert f"worker={general.hostname}" in general_log
    assert f"worker={special.hostname}" in special_log
    for job_id in iris:
        assert job_id in general_log and job_id not in special_log
    for job_id in mixed:
        assert job_id in special_log and job_id not in general_log
    r.close()
