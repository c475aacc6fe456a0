"""Rate limits and the connection limit, through real uvicorn processes and a real Redis.

- ``PREDQ_RATE_LIMIT``: per key, counted in Redis; the request over it gets 429 problem+json
  with ``Retry-After``, before its body is read; other keys are unaffected; with Redis down
  the limiter fails open (logged), so nothing becomes a 500.
- ``PREDQ_LIMIT_CONCURRENCY``: uvicorn's own guard, which answers excess connections with a
  plain-text 503 before the app runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from predq.demo import iris_sample_rows
from predq.procs import tail_file
from tests.helpers.rawhttp import stream_request, zero_chunks

pytestmark = pytest.mark.integration


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
        start_api: Any, keys: dict[str, str], registry_with_models: Any,
        settings_env: dict[str, str]) -> None:
    base = start_api(extra_env={"PREDQ_RATE_LIMIT": "5/minute"})
    with httpx.Client(base_url=base, timeout=30) as c:
        user = bearer(keys["user"])
        statuses = [c.get("/v1/models", headers=user).status_code for _ in range(5)]
        assert statuses == [200] * 5
        r = c.get("/v1/models", headers=user)
        assert r.status_code == 429, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert 0 < int(r.headers["retry-after"]) <= 60
        assert "5 per 1 minute" in r.json()["detail"]
        # Every route of that key is limited, whatever its scope or method ...
        assert c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)},
                      headers=user).status_code == 429
        # ... and another key is not.
        assert [c.get("/v1/models", headers=bearer(keys["other"])).status_code
                for _ in range(5)] == [200] * 5
    # A limited key's body is not read either: the 429 comes while it is being sent.
    answer = stream_request(base, "POST", "/v1/models/iris/jobs",
                            {"Content-Type": "application/json", **user},
                            zero_chunks(50 * 1024 * 1024))
    assert answer.status == 429 and not answer.body_finished
    assert int(answer.headers["retry-after"]) > 0
    # The counters live in Redis under the deployment's prefix, shared by all API processes.
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    counters = [k.decode() for k in client.scan_iter(match=f"{prefix}:ratelimit:*")]
    assert any("key:user" in k for k in counters) and any("key:other" in k for k in counters)


def test_the_limit_holds_across_api_processes(
        start_api: Any, keys: dict[str, str], registry_with_models: Any) -> None:
    base = start_api(workers=2, extra_env={"PREDQ_RATE_LIMIT": "6/minute"})
    statuses = []
    for _ in range(12):  # a new connection each time: either process may take it
        with httpx.Client(base_url=base, timeout=30) as c:
            statuses.append(c.get("/v1/models", headers=bearer(keys["user"])).status_code)
    assert statuses.count(200) == 6 and statuses.count(429) == 6, statuses


def test_the_limiter_fails_open_when_redis_is_down(
        start_api: Any, start_redis: Any, keys: dict[str, str], registry_with_models: Any,
        tmp_path: Path) -> None:
    server = start_redis()
    base = start_api(extra_env={"PREDQ_REDIS_URL": server.url, "PREDQ_RATE_LIMIT": "100/minute"})
    with httpx.Client(base_url=base, headers=bearer(keys["user"]), timeout=30) as c:
        assert c.get("/v1/models").status_code == 200
        server.stop()
        t0 = time.monotonic()
        for _ in range(3):
            r = c.get("/v1/models")  # needs no Redis itself: the limiter must not fail it
            assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 10
        r = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)})
        assert r.status_code == 503, r.text  # the job store's own answer, not a 500
        assert r.headers["content-type"] == "application/problem+json"
    logs = "".join(tail_file(p, 400) for p in (tmp_path / "logs").glob("api-*.log"))
    assert "rate limiting is off" in logs
    assert logs.count("rate limiting is off") == 1  # warned once, not once per request


def test_excess_connections_get_uvicorns_503(
        start_api: Any, keys: dict[str, str], registry_with_models: Any) -> None:
    base = start_api(extra_env={"PREDQ_LIMIT_CONCURRENCY": "2"})
    auth = bearer(keys["user"])
    with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
        job_id = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)}).json()["id"]
    held: list[httpx.Response] = []
    pause = threading.Event()  # never set: its wait() is a bounded pause, not a sleep loop

    def long_poll() -> None:  # no worker runs: the job stays queued for the whole wait
        while not held or held[-1].status_code == 503:  # refused too? that counts; retry
            with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
                held.append(c.get(f"/v1/jobs/{job_id}", params={"wait": 3}))
            pause.wait(0.05)

    thread = threading.Thread(target=long_poll)
    thread.start()
    probes: list[httpx.Response] = []
    while thread.is_alive():
        with httpx.Client(base_url=base, headers=auth, timeout=30) as c:  # a new connection
            probes.append(c.get("/v1/models"))
        pause.wait(0.05)
    thread.join()
    answers = held + probes
    assert {r.status_code for r in answers} <= {200, 503}, [r.text for r in answers]
    refused = [r for r in answers if r.status_code == 503]
    assert refused, "no request was refused while the long poll held a connection"
    # uvicorn answers before the app runs: plain text, not problem+json (see README.md, Security).
    assert all(r.headers["content-type"].startswith("text/plain") for r in refused)
    assert held[-1].status_code == 200 and held[-1].json()["status"] == "queued"
    with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
        assert c.get("/v1/models").status_code == 200  # capacity is back
