"""Flower against a real worker: every job, batched or not, is a task with its state.

``predq flower`` runs with basic auth (as it must beyond loopback); the test reads Flower's
own HTTP API, as an operator's script would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from predq.demo import iris_sample_rows
from predq.procs import wait_for_url
from predq.push import push_model
from predq.redis_server import free_port
from predq.shared.registry.store import Registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AUTH = ("ops", "flower-test-password")


def start_flower(processes: Any, env: dict[str, str], tmp_path: Path, extra: dict[str, str]
                 ) -> str:
    port = free_port()
    child = processes.start("flower", ["flower", "--port", str(port)], {**env, **extra},
                            tmp_path)
    base = f"http://127.0.0.1:{port}"
    wait_for_url(f"{base}/healthcheck", timeout=60, children=[child])
    return base


def poll(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_flower_lists_every_job_with_its_state_runtime_and_worker(
        registry_with_models: Registry, env: dict[str, str], tmp_path: Path, processes: Any,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    extra = {"PREDQ_AUTH_ENABLED": "false", "PREDQ_FLOWER_BASIC_AUTH": ":".join(AUTH)}
    worker = start_worker(1, extra_env=extra)
    flower = start_flower(processes, env, tmp_path, extra)
    fl = httpx.Client(base_url=flower, auth=AUTH, timeout=10)

    assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401  # basic auth on
    # Flower's event receiver is up once it has seen the worker's heartbeat events.
    poll(lambda: fl.get("/api/workers", params={"status": "true"}).json().get(worker.hostname),
         30, "Flower to see the worker")

    base = start_api(extra_env=extra)
    with httpx.Client(base_url=base, timeout=30) as c:
        # A burst: most of these jobs share micro-batches (one pool process).
        ids = [c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(3, seed=i)}
                      ).json()["id"] for i in range(12)]
        for job_id in ids:
            assert c.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()["status"] \
                == "succeeded"

    def all_succeeded() -> dict[str, Any] | None:
        tasks = fl.get("/api/tasks", params={"taskname": "predq.predict"}).json()
        done = {i: tasks[i] for i in ids if tasks.get(i, {}).get("state") == "SUCCESS"}
        return tasks if len(done) == len(ids) else None

    tasks = poll(all_succeeded, 30, "Flower to show every job as SUCCESS")
    for job_id in ids:
        task = tasks[job_id]
        assert task["worker"] == worker.hostname
        assert task["name"] == "predq.predict"
        assert job_id in task["args"]  # the args repr: (job id, model, version, rows)
        assert task["runtime"] is not None and task["runtime"] > 0
        assert None not in (task["received"], task["started"], task["succeeded"]), task
        assert task["received"] <= task["started"] <= task["succeeded"], task
        assert task["result"].startswith("batch ")  # the micro-batch that ran it
    batches = {tasks[i]["result"] for i in ids}
    assert len(batches) < len(ids), "expected some jobs to share a micro-batch"

    one = fl.get(f"/api/task/info/{ids[0]}").json()
    assert one["state"] == "SUCCESS" and one["worker"] == worker.hostname

    workers = fl.get("/api/workers", params={"refresh": "true"}).json()
    queues = {q["name"] for q in workers[worker.hostname]["active_queues"]}
    # the predict queue, its batch-file lane (worker.batchfiles.lane) and the webhook queue
    assert queues == {env["PREDQ_DEFAULT_QUEUE"], env["PREDQ_DEFAULT_QUEUE"] + ".batch",
                      env["PREDQ_WEBHOOK_QUEUE"]}
    fl.close()


@pytest.mark.parametrize(("address", "auth", "message"), [
    ("0.0.0.0", None, "without a password"),
    ("10.1.2.3", None, "without a password"),
    ("flower.internal", None, "without a password"),  # a name may resolve to anything
    ("0.0.0.0", "nopassword", "must look like user:password"),
])
def test_flower_refuses_to_listen_beyond_loopback_without_basic_auth(
        monkeypatch: pytest.MonkeyPatch, address: str, auth: str | None, message: str) -> None:
    from click.testing import CliRunner

    from predq.cli import main
    from predq.shared.settings import get_settings

    for name in [n for n in os.environ if n.startswith("PREDQ_")]:
        monkeypatch.delenv(name)
    if auth is not None:
        monkeypatch.setenv("PREDQ_FLOWER_BASIC_AUTH", auth)
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["flower", "--address", address])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_failed_predict_shows_no_input_value_in_flower_or_the_logs(
        registry_with_models: Registry, env: dict[str, str], tmp_path: Path, processes: Any,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    """The estimator's message quotes the offending value (-7.125): it stays in the job's own
    error, and Flower's task detail and the worker log name only its type."""
    import joblib

    from tests.helpers.faulty import train

    artifact = tmp_path / "boom.joblib"
    joblib.dump(train("raise"), artifact)
    push_model(registry_with_models, artifact, "boom")
    extra = {"PREDQ_AUTH_ENABLED": "false", "PREDQ_FLOWER_BASIC_AUTH": ":".join(AUTH)}
    worker = start_worker(1, extra_env=extra)
    flower = start_flower(processes, env, tmp_path, extra)
    fl = httpx.Client(base_url=flower, auth=AUTH, timeout=10)
    poll(lambda: fl.get("/api/workers", params={"status": "true"}).json().get(worker.hostname),
         30, "Flower to see the worker")
    base = start_api(extra_env=extra)
    with httpx.Client(base_url=base, timeout=30) as c:
        job_id = c.post("/v1/models/boom/jobs",
                        json={"inputs": [{"x1": -7.125, "x2": 1.0}]}).json()["id"]
        job = c.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "failed" and "-7.125" in job["error"]["message"], job

    def failed() -> dict[str, Any] | None:
        task = fl.get(f"/api/task/info/{job_id}")
        return task.json() if task.status_code == 200 and task.json().get(
            "state") == "FAILURE" else None

    task = poll(failed, 30, "Flower to show the job as FAILURE")
    assert "PredictError" in task["exception"], task
    assert "PREDQ_LOG_INPUTS" in task["exception"], task
    assert "-7.125" not in str(task), task
    log = worker.tail(400)
    assert f"job {job_id} failed in predict: ValueError" in log, log
    assert "-7.125" not in log, log
    fl.close()


def test_flower_without_a_login_says_its_http_api_needs_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import predq.procs_cmd as procs_cmd
    from predq.cli import main
    from predq.shared.settings import get_settings

    for name in [n for n in os.environ if n.startswith("PREDQ_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    started: list[list[str]] = []

    class App:
        def start(self, argv: list[str]) -> int:
            started.append(argv)
            return 0

    monkeypatch.setattr(procs_cmd, "_celery_app", lambda settings: App())
    result = CliRunner().invoke(main, ["flower"])
    assert result.exit_code == 0, result.output
    assert "HTTP API (/api/...) answers 401" in result.output
    assert "PREDQ_FLOWER_BASIC_AUTH=user:password" in result.output
    assert started and not any(a.startswith("--basic-auth") for a in started[0])
