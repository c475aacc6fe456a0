"""The submit script is idempotent on the job id, and the API's submit retries once when
Redis closed its pooled connection (a Redis restart): real redis-server, no fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from predq.api.jobstore import AsyncJobs
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import predict_message
from predq.shared.jobstore.scripts import Scripts
from predq.shared.registry.schema import ParsedJob
from predq.shared.settings import Settings

pytestmark = pytest.mark.integration


def _submit(scripts: Scripts, settings: Settings, job_id: str) -> Any:
    return scripts.submit(job_id=job_id, fields={"status": "queued", "model": "m",
                          "version": "1", "n_inputs": 3, "owner": "t", "inputs": b"x"},
                          message=predict_message(job_id, "m", "1", 3, "q"),
                          queue=settings.default_queue, model="m", n_rows=3, ttl=60,
                          fingerprint="fp")


def test_a_second_submit_of_the_same_job_id_writes_and_publishes_nothing(
        settings_env: dict[str, str]) -> None:
    settings = Settings()
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    scripts = Scripts(client, keys)
    first = _submit(scripts, settings, "job-1")
    seq = client.hget(keys.job("job-1"), "seq")
    again = _submit(scripts, settings, "job-1")
    assert [x.decode() for x in first] == [x.decode() for x in again] == ["job-1", "fp"]
    assert client.llen(settings.default_queue) == 1  # one message, not two
    assert int(client.get(keys.queued_rows("m")) or 0) == 3  # counted once
    assert client.hget(keys.job("job-1"), "seq") == seq  # the record is not rewritten
    client.close()


def test_the_api_submit_survives_a_pooled_connection_closed_by_redis(
        settings_env: dict[str, str]) -> None:
    settings = Settings()
    keys = Keys(settings.key_prefix)
    admin = redis.Redis.from_url(settings.redis_url)
    parsed = ParsedJob(inputs=b"x", n_rows=2, metadata=None, webhook=None)

    async def scenario() -> list[str]:
        client = aioredis.Redis.from_url(settings.redis_url, max_connections=4)
        jobs = AsyncJobs(client, settings)
        ids = []
        first, _, _ = await jobs.submit(model="m", version="1", parsed=parsed, owner="t",
                                          idempotency_key=None, fingerprint_of=b"{}")
        ids.append(first)
        # Redis drops the pool's connection, as a restart does (only that one: the session's
        # redis-server serves other tests' clients); the pool still holds it, and the next
        # command on it finds the socket closed.
        conn_id = await client.client_id()  # the pool's one idle connection
        admin.client_kill_filter(_id=conn_id)
        second, created, _ = await jobs.submit(model="m", version="1", parsed=parsed,
                                               owner="t", idempotency_key=None,
                                               fingerprint_of=b"{}")
        assert created
        ids.append(second)
        await client.aclose()
        return ids

    ids = asyncio.run(scenario())
    assert len(set(ids)) == 2
    for job_id in ids:
        assert admin.hget(keys.job(job_id), "status") == b"queued"
    assert admin.llen(settings.queue_for("m")) == 2
    admin.close()
