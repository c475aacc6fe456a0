"""Durable submit (``PREDQ_DURABLE_SUBMIT``): a 202 means the job survives a crash of Redis.

Issue 13: with the AOF fsynced every second, a SIGKILL of Redis can lose jobs acknowledged in
its last second. With the setting on, the API answers 202 only once the job is on disk: on
Redis >= 7.2 through WAITAOF, on older Redis (the 7.0 here) only when the server runs
``appendfsync always``, else submits answer 503 instead of a 202 that could be lost.

Real processes: redis-server with an AOF, ``predq api``; Redis is SIGKILLed while clients
submit as fast as they can, then started again on the same AOF, and every job that got a 202
must be there. The WAITAOF path (Redis >= 7.2, not installed here) is pinned with a stand-in
client at the end.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from predq.shared.errors import NotDurable
from predq.shared.jobstore.durability import Durability
from tests.reliability.conftest import irows

CLIENTS = 6


def _submit_until(base_url: str, headers: dict[str, str], stop: threading.Event,
                  accepted: list[str], answers: list[int]) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=10, trust_env=False) as c:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                r = c.post("/v1/models/iris/jobs", json={"inputs": irows(1, seed=i)})
            except httpx.TransportError:
                answers.append(0)
                continue
            answers.append(r.status_code)
            if r.status_code == 202:
                accepted.append(r.json()["id"])


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_no_accepted_job_is_lost_when_redis_is_killed(
        start_redis: Any, start_api: Any, keys: dict[str, str],
        settings_env: dict[str, str], registry_with_models: Any) -> None:
    server = start_redis(appendonly=True, appendfsync="always")
    env = {"PREDQ_REDIS_URL": server.url, "PREDQ_DURABLE_SUBMIT": "true"}
    base = start_api(extra_env=env)
    headers = {"Authorization": f"Bearer {keys['user']}"}
    accepted: list[str] = []
    answers: list[int] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_submit_until, args=(base, headers, stop, accepted,
                                                            answers)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        for _ in range(600):  # until a good number of jobs got their 202 (bounded)
            if len(accepted) >= 150 or not all(t.is_alive() for t in threads):
                break
            stop.wait(0.1)
        assert len(accepted) >= 150, f"only {len(accepted)} jobs accepted: {answers[-20:]}"
        server.kill()  # SIGKILL while the clients keep submitting
        n_at_kill = len(accepted)
        stop.wait(1.0)  # the API answers 503 now
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    server.start()  # same port, same AOF
    client = server.client(socket_timeout=10)
    try:
        prefix = settings_env["PREDQ_KEY_PREFIX"]
        with client.pipeline(transaction=False) as pipe:
            for job_id in accepted:
                pipe.hget(f"{prefix}:job:{job_id}", "status")
            statuses = pipe.execute()
    finally:
        client.close()
    lost = [j for j, st in zip(accepted, statuses, strict=True) if st is None]
    assert not lost, (f"{len(lost)} of {len(accepted)} jobs that got a 202 are gone after the "
                      f"SIGKILL ({n_at_kill} accepted when it was sent): {lost[:10]}")
    assert set(statuses) == {b"queued"}
    assert 503 in answers or 0 in answers  # the kill really happened while they submitted


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_durable_submit_refuses_a_redis_that_does_not_fsync_each_write(
        start_redis: Any, start_api: Any, keys: dict[str, str],
        settings_env: dict[str, str], registry_with_models: Any) -> None:
    server = start_redis(appendonly=True)  # appendfsync everysec: a crash loses a second
    base = start_api(extra_env={"PREDQ_REDIS_URL": server.url, "PREDQ_DURABLE_SUBMIT": "true"})
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['user']}"},
                      timeout=10, trust_env=False) as c:
        r = c.post("/v1/models/iris/jobs", json={"inputs": irows(1)})
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"]
    assert "appendfsync" in r.json()["detail"], r.json()
    client = server.client()
    try:  # no job was written
        assert not list(client.scan_iter(match=f"{settings_env['PREDQ_KEY_PREFIX']}:job:*"))
    finally:
        client.close()


class _Client:
    """An asyncio Redis client as Durability sees it, for a server with WAITAOF."""

    def __init__(self, version: str, waitaof: list[int]) -> None:
        self.version = version
        self.waitaof = waitaof
        self.calls: list[tuple[Any, ...]] = []

    async def info(self, section: str) -> dict[str, str]:
        return {"redis_version": self.version}

    async def config_get(self, pattern: str) -> dict[str, str]:
        raise AssertionError("a Redis with WAITAOF needs no config check")

    async def execute_command(self, *args: Any) -> list[int]:
        self.calls.append(args)
        return self.waitaof


def test_on_redis_7_2_each_submit_waits_for_the_local_fsync() -> None:
    async def run(reply: list[int]) -> _Client:
        client = _Client("7.2.4", reply)
        d = Durability(client, waitaof_timeout_ms=1234)
        await d.before_submit()
        await d.after_submit()
        return client

    client = asyncio.run(run([1, 0]))
    assert client.calls == [("WAITAOF", 1, 0, 1234)]
    with pytest.raises(NotDurable, match="did not confirm it on disk"):
        asyncio.run(run([0, 0]))
