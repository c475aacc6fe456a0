"""Operations end to end: real uvicorn, real Celery workers, real Redis.

- /readyz follows the workers' heartbeats (503 -> 200 -> 503 as a worker starts and stops);
- /metrics moves after real traffic, for every metric family of README.md (Operations);
- on SIGTERM the API stops accepting connections but finishes the requests it holds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import joblib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predq.demo import iris_sample_rows, mixed_sample_rows
from predq.push import push_model
from predq.shared.registry.store import Registry
from tests.helpers.faulty import train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NO_AUTH = {"PREDQ_AUTH_ENABLED": "false", "PREDQ_WORKER_HEARTBEAT_S": "0.5"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _holds_connection_from(pid: int, client_port: int) -> bool:
    """Whether process ``pid`` owns a TCP socket connected to local port ``client_port``
    (it accepted that client's connection), read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == client_port:
                    return True
    return False


def _accepts_connections(base: str) -> bool:
    try:
        httpx.get(f"{base}/healthz", timeout=2)
    except httpx.ConnectError:
        return False
    return True


def test_readyz_follows_the_workers(registry_with_models: Registry, env: dict[str, str],
                                    start_api: Callable[..., str],
                                    start_worker: Callable[..., Any]) -> None:
    base = start_api(extra_env=NO_AUTH)
    r = httpx.get(f"{base}/readyz")
    assert r.status_code == 503 and "no worker" in r.json()["detail"]
    assert httpx.get(f"{base}/healthz").status_code == 200

    worker = start_worker(1, extra_env=NO_AUTH)
    wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 10, "readiness")
    body = httpx.get(f"{base}/readyz").json()
    assert [w["hostname"] for w in body["workers"]] == [worker.hostname]
    assert body["queues"] == {env["PREDQ_DEFAULT_QUEUE"]: [worker.hostname],
                              env["PREDQ_WEBHOOK_QUEUE"]: [worker.hostname]}
    assert body["workers"][0]["concurrency"] == 1

    worker.stop()  # SIGTERM: the worker removes its heartbeat as it stops consuming
    r = httpx.get(f"{base}/readyz")
    assert r.status_code == 503 and r.json()["workers"] == []


def test_metrics_move_after_real_traffic(registry_with_models: Registry, env: dict[str, str],
                                         tmp_path: Path, start_api: Callable[..., str],
                                         start_worker: Callable[..., Any]) -> None:
    faulty = tmp_path / "faulty.joblib"
    joblib.dump(train("raise"), faulty)
    push_model(registry_with_models, faulty, "faulty")
    parked = f"{env['PREDQ_DEFAULT_QUEUE']}-parked"  # a queue no worker serves
    extra = {**NO_AUTH, "PREDQ_MODEL_QUEUES": json.dumps({"mixed": parked})}
    start_worker(1, queues=[env["PREDQ_DEFAULT_QUEUE"], env["PREDQ_WEBHOOK_QUEUE"]],
                 extra_env=extra)
    base = start_api(extra_env=extra)
    before = scrape(base)

    with httpx.Client(base_url=base, timeout=30) as c:
        ok_rows = 0
        for i in range(4):  # one at a time: separate batches, so the model cache gets hits
            r = c.post("/v1/models/iris/predict", json={"inputs": iris_sample_rows(i + 1)})
            assert r.status_code == 200, r.text
            ok_rows += i + 1
        burst = [c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(2, seed=k)})
                 for k in range(10)]
        ok_rows += 20
        bad = c.post("/v1/models/faulty/jobs", json={"inputs": [{"x1": -1.0, "x2": 0.0}]})
        parked_ids = [c.post("/v1/models/mixed/jobs", json={"inputs": mixed_sample_rows(1)}
                             ).json()["id"] for _ in range(2)]
        assert c.delete(f"/v1/jobs/{parked_ids[0]}").status_code == 200
        for r in [*burst, bad]:
            assert c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 20}).json()["status"] \
                in ("succeeded", "failed")
    wait_for(lambda: value(scrape(base), "predq_jobs_finished_total", status="failed") >= 1, 10,
             "the failed job to be counted")
    after = scrape(base)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    http = "predq_http_requests_total"
    assert moved(http, method="POST", route="/v1/models/{name}/jobs", status="202") == 13
    assert moved(http, method="POST", route="/v1/models/{name}/predict", status="200") == 4
    assert moved(http, method="GET", route="/v1/jobs/{job_id}", status="200") == 11
    assert moved(http, method="DELETE", route="/v1/jobs/{job_id}", status="200") == 1
    assert moved("predq_http_request_duration_seconds_count", method="POST",
                 route="/v1/models/{name}/predict") == 4
    assert moved("predq_jobs_finished_total", status="succeeded") == 14
    assert moved("predq_jobs_finished_total", status="failed") == 1
    assert moved("predq_jobs_finished_total", status="cancelled") == 1
    assert value(after, "predq_queue_depth", queue=parked) == 2  # a cancel leaves the message
    assert value(after, "predq_queue_depth", queue=env["PREDQ_DEFAULT_QUEUE"]) == 0
    assert moved("predq_queue_wait_seconds_count") == 15
    assert moved("predq_batch_jobs_sum") == 15
    assert moved("predq_batch_rows_sum") == ok_rows + 1
    assert 5 <= moved("predq_batch_jobs_count") <= 15
    assert moved("predq_predict_duration_seconds_count", model="iris", version="1") >= 5
    assert moved("predq_predict_rows_total", model="iris", version="1") == ok_rows
    # the worker preloaded iris before its pool forked: one load in all, counted at its start
    assert value(after, "predq_model_cache_loads_total", model="iris", version="1") == 1
    assert moved("predq_model_cache_hits_total", model="iris", version="1") >= 4
    assert value(after, "predq_model_load_seconds_total") > 0
    assert value(after, "predq_workers_alive") == 1
    assert ("predq_webhook_deliveries_total", (("outcome", "delivered"),)) in after


def test_sigterm_drains_the_api(registry_with_models: Registry, start_api: Callable[..., str],
                                processes: Any) -> None:
    base = start_api(extra_env={**NO_AUTH, "PREDQ_API_SHUTDOWN_GRACE_S": "10"})
    api = processes.supervisor.children[-1]
    job = httpx.post(f"{base}/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)}).json()
    result: dict[str, Any] = {}

    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    client_port = sock.getsockname()[1]

    def long_poll() -> None:  # no worker: the job stays queued for the whole wait
        t0 = time.monotonic()
        sock.sendall(f"GET /v1/jobs/{job['id']}?wait=3 HTTP/1.1\r\nHost: {url.netloc}\r\n"
                     "Connection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        result.update(status=int(head.split()[1]), body=json.loads(body),
                      took=time.monotonic() - t0)

    poller = threading.Thread(target=long_poll)
    poller.start()
    # the request is in flight: the API process holds the accepted connection
    wait_for(lambda: _holds_connection_from(api.proc.pid, client_port), 10,
             "the API to accept the long-poll")
    api.proc.send_signal(signal.SIGTERM)  # the process only, as Docker and Kubernetes do
    wait_for(lambda: not _accepts_connections(base), 10, "the API to stop accepting")
    with pytest.raises(httpx.ConnectError):  # no new connections once draining
        httpx.get(f"{base}/healthz", timeout=2)
    poller.join(timeout=20)
    sock.close()
    assert result["status"] == 200 and result["body"]["status"] == "queued"
    assert result["took"] >= 2.9  # it was allowed to finish its wait
    # uvicorn re-raises the SIGTERM once it has shut down cleanly (its exit status says so).
    assert api.proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in api.tail(50)
