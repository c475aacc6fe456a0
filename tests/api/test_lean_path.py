"""The API's lean hot path (issue 10): what it skips must not change what it answers.

- ``require`` reads the bearer key itself, exactly as FastAPI's ``HTTPBearer(auto_error=False)``
  would, and the OpenAPI document still declares the bearer security on every operation that
  authenticates (and on no other);
- the sync predict waits for the wake-up of a job it registered for before creating it,
  without a first read; a job it did not create (a replay) is read at once.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.security import HTTPBearer
from starlette.requests import Request

from predq.api.app import create_app
from predq.api.deps import _bearer_key
from predq.api.routes.jobs import wait_for
from predq.shared.settings import Settings


def _request(authorization: bytes | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "query_string": b""})


@pytest.mark.parametrize("header", [
    None, b"", b"Bearer", b"Bearer ", b"Bearer  pq_abc", b"bearer pq_abc", b"BEARER pq_abc ",
    b"Basic dXNlcjpwYXNz", b"pq_abc", b" Bearer pq_abc", b"Bearer pq_abc extra", b"Token x",
    b"Bearer\tpq_abc",
])
async def test_the_bearer_key_is_read_as_httpbearer_reads_it(header: bytes | None) -> None:
    creds = await HTTPBearer(auto_error=False)(_request(header))
    assert _bearer_key(_request(header)) == (creds.credentials if creds else None)


def test_the_openapi_document_declares_the_bearer_security() -> None:
    doc = create_app(Settings()).openapi()
    assert doc["components"]["securitySchemes"] == {"HTTPBearer": {
        "type": "http", "description": "An API key: `Authorization: Bearer pq_...`",
        "scheme": "bearer"}}
    ops = {(path, method): op for path, item in doc["paths"].items()
           for method, op in item.items() if isinstance(op, dict)}
    for key in [("/v1/models/{name}/predict", "post"), ("/v1/models/{name}/jobs", "post"),
                ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}", "delete"),
                ("/v1/models", "get"), ("/v1/stats/batches", "get")]:
        assert ops[key]["security"] == [{"HTTPBearer": []}], key
        assert {"401", "403", "429"} <= set(ops[key]["responses"]), key
    for key in [("/healthz", "get"), ("/readyz", "get")]:
        assert "security" not in ops[key], key


class FakeJobs:
    """Records reads; the job is ``status`` at each read."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.reads = 0

    async def read(self, job_id: str, owner: str | None) -> dict[str, Any]:
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return {"id": job_id, "status": status}


class FakeWaiters:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    def register(self, job_id: str) -> Any:
        import contextlib

        @contextlib.asynccontextmanager
        async def cm() -> Any:
            yield self.event

        return cm()


def _state(jobs: FakeJobs) -> Any:
    return SimpleNamespace(jobs=jobs, waiters=FakeWaiters())


async def test_a_registered_wait_reads_only_after_the_wake_up() -> None:
    jobs = FakeJobs(["succeeded"])
    ended = asyncio.Event()
    task = asyncio.create_task(wait_for(_state(jobs), "j", "o", 5, ended=ended))
    await asyncio.sleep(0.05)
    assert jobs.reads == 0 and not task.done()
    ended.set()
    assert (await task)["status"] == "succeeded" and jobs.reads == 1


async def test_a_registered_wait_that_times_out_reads_once() -> None:
    jobs = FakeJobs(["queued"])
    job = await wait_for(_state(jobs), "j", "o", 0.05, ended=asyncio.Event())
    assert job["status"] == "queued" and jobs.reads == 1


async def test_a_registered_wait_woken_early_waits_on() -> None:
    jobs = FakeJobs(["running", "succeeded"])
    ended = asyncio.Event()
    ended.set()  # e.g. the subscription was re-made: every waiter re-reads

    async def wake_later() -> None:
        await asyncio.sleep(0.05)
        ended.set()

    waker = asyncio.create_task(wake_later())
    job = await wait_for(_state(jobs), "j", "o", 5, ended=ended)
    await waker
    assert job["status"] == "succeeded" and jobs.reads == 2


async def test_an_unregistered_wait_reads_at_once() -> None:
    jobs = FakeJobs(["succeeded"])
    job = await wait_for(_state(jobs), "j", "o", 5)
    assert job["status"] == "succeeded" and jobs.reads == 1
