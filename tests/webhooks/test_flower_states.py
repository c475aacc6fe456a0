"""Flower tells the truth about webhook deliveries: each attempt is a ``predq.webhook`` task
whose state is SUCCESS when delivered, RETRY when it failed and another attempt is scheduled,
and FAILURE when the delivery failed for good (a 410 here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_flower import AUTH, poll, start_flower
from tests.webhooks.conftest import ReceiverProc
from tests.webhooks.test_e2e import client, submit, wait_webhook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_flower_shows_failed_deliveries_as_failure_and_retries_as_retry(
        registry_with_models: Any, keys: dict[str, str], receiver: ReceiverProc,
        webhook_env: dict[str, str], tmp_path: Path, processes: Any,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    extra = {"PREDQ_FLOWER_BASIC_AUTH": ":".join(AUTH)}
    worker = start_worker(2, extra_env=extra)
    flower = start_flower(processes, webhook_env, tmp_path, extra)
    fl = httpx.Client(base_url=flower, auth=AUTH, timeout=10)
    poll(lambda: fl.get("/api/workers", params={"status": "true"}).json().get(worker.hostname),
         30, "Flower to see the worker")
    base = start_api(extra_env=extra)
    with client(base, keys["user"]) as c:
        gone = submit(c, receiver.hook("status/410"))
        flaky = submit(c, receiver.hook("fail/503/1"), seed=1)
        fine = submit(c, receiver.hook("ok"), seed=2)
        assert wait_webhook(c, gone, {"failed"})["webhook"]["state"] == "failed"
        assert wait_webhook(c, flaky, {"delivered"})["webhook"]["state"] == "delivered"
        assert wait_webhook(c, fine, {"delivered"})["webhook"]["state"] == "delivered"

    def states() -> dict[str, list[str]] | None:
        tasks = fl.get("/api/tasks", params={"taskname": "predq.webhook"}).json()
        by_job: dict[str, list[str]] = {gone: [], flaky: [], fine: []}
        for task in tasks.values():
            for job_id, found in by_job.items():
                if job_id in (task.get("args") or ""):
                    found.append(task["state"])
        done = (by_job[gone] == ["FAILURE"] and sorted(by_job[flaky]) == ["RETRY", "SUCCESS"]
                and by_job[fine] == ["SUCCESS"])
        return by_job if done else None

    try:
        poll(states, 30, "Flower to show FAILURE, RETRY then SUCCESS, and SUCCESS")
    except AssertionError:
        tasks = fl.get("/api/tasks", params={"taskname": "predq.webhook"}).json()
        raise AssertionError([(t.get("args"), t["state"]) for t in tasks.values()]) from None
    tasks = fl.get("/api/tasks", params={"taskname": "predq.webhook"}).json()
    failure = next(t for t in tasks.values() if gone in t["args"])
    assert "WebhookFailed" in failure["exception"] and "dead-lettered" in failure["exception"]
    fl.close()
