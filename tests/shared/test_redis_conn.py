"""predq.shared.redis_conn: plain Redis and Redis Sentinel, down to a job run through a Sentinel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from predq.demo import iris_sample_rows
from predq.procs import Supervisor, tail_file
from predq.redis_server import RedisServer, find_redis_server, free_port
from predq.shared.redis_conn import (
    async_client,
    celery_transport_options,
    parse_sentinel_url,
    sync_client,
)
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings


def test_parse_kombu_style_sentinel_urls() -> None:
    t = parse_sentinel_url("sentinel://:p%40ss@s1:26380/2;sentinel://:p%40ss@s2")
    assert t.nodes == [("s1", 26380), ("s2", 26379)]
    assert (t.db, t.password, t.username) == (2, "p@ss", None)
    with pytest.raises(ValueError, match="sentinel://"):
        parse_sentinel_url("sentinel://s1:26379;redis://s2:6379")


def test_celery_gets_the_master_name_and_sentinel_password() -> None:
    assert celery_transport_options(Settings(redis_url="redis://r:6379/0")) == {}
    opts = celery_transport_options(Settings(
        redis_url="sentinel://s1:26379", redis_sentinel_master="main",
        redis_sentinel_password="sentinel-secret"))
    assert opts == {"master_name": "main", "sentinel_kwargs": {"password": "sentinel-secret"}}
    with pytest.raises(ValueError, match="PREDQ_REDIS_SENTINEL_MASTER"):
        celery_transport_options(Settings(redis_url="sentinel://s1:26379"))


@pytest.fixture
def sentinel(start_redis: Callable[..., RedisServer], tmp_path: Path) -> Iterator[str]:
    """A master and one Sentinel watching it (as ``mymaster``); yields the Sentinel URL."""
    master = start_redis()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its config: it must be writable
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    with Supervisor() as sup:
        child = sup.start("sentinel", [find_redis_server(), str(conf), "--sentinel"],
                          log_path=tmp_path / "sentinel.log")
        url = f"sentinel://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 15
        while True:
            child.check()
            probe = sync_client(Settings(redis_url=url, redis_sentinel_master="mymaster"),
                                socket_timeout=1)
            try:
                if probe.ping():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(tail_file(tmp_path / "sentinel.log")) from None
                time.sleep(0.1)
            finally:
                probe.close()
        yield url


async def test_clients_find_the_master_through_sentinel(sentinel: str) -> None:
    settings = Settings(redis_url=sentinel, redis_sentinel_master="mymaster")
    client = sync_client(settings)
    client.set("predq-sentinel-test", "1")
    aclient = async_client(settings)
    assert await aclient.get("predq-sentinel-test") == b"1"
    await aclient.aclose()
    client.close()


@pytest.mark.timeout(120)
def test_a_job_runs_through_sentinel(sentinel: str, registry_with_models: Registry,
                                     env: dict[str, str], processes: Any, tmp_path: Path,
                                     start_api: Callable[..., str]) -> None:
    extra = {"PREDQ_REDIS_URL": sentinel, "PREDQ_REDIS_SENTINEL_MASTER": "mymaster",
             "PREDQ_AUTH_ENABLED": "false", "PREDQ_WORKER_HEARTBEAT_S": "0.5"}
    processes.start("worker", ["worker", "-c", "1"], {**env, **extra}, tmp_path)
    base = start_api(extra_env=extra)
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/readyz").status_code != 200:  # the heartbeat went via Sentinel
        assert time.monotonic() < deadline, "the worker never became ready"
        time.sleep(0.2)
    r = httpx.post(f"{base}/v1/models/iris/predict", json={"inputs": iris_sample_rows(2)},
                   timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["outputs"]) == 2
