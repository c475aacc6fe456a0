"""The prefetch follows the pool the worker really starts (``predq worker -c N``), not
``PREDQ_WORKER_CONCURRENCY``: enough messages to fill one batch per pool process plus one
more batch buffering, whatever the two say."""

from __future__ import annotations

import pytest

from predq.shared.settings import Settings
from predq.worker.app import create_app


@pytest.mark.parametrize(("configured", "started"), [(1, 3), (4, 1), (2, 2)])
def test_prefetch_is_sized_from_the_real_pool(configured: int, started: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # never connects: building the worker's bootsteps opens no connection
    monkeypatch.setenv("PREDQ_REDIS_URL", "redis://127.0.0.1:1/0")
    settings = Settings(worker_concurrency=configured, max_batch_jobs=256,
                        preload_models=False)
    app = create_app(settings)
    worker = app.WorkController(concurrency=started, without_heartbeat=True,
                                without_mingle=True, without_gossip=True)
    assert worker.concurrency == started
    prefetch = worker.consumer.initial_prefetch_count
    wanted = 256 * (started + 1)
    assert wanted <= prefetch < wanted + started, (prefetch, wanted)


def test_the_kombu_floor_has_the_restore_sweep_options() -> None:
    """predq.worker.app sets unacked_restore_interval/_throttle (recovery after a worker dies in
    about PREDQ_VISIBILITY_TIMEOUT_S, not ~100 s): kombu reads them from 5.7 on, so that is
    the floor pyproject.toml must require (and the installed kombu must have them)."""
    import re
    import tomllib
    from pathlib import Path

    from kombu.transport.redis import Channel

    assert {"unacked_restore_interval", "unacked_restore_throttle"} <= set(
        Channel.from_transport_options)
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    server = project["project"]["optional-dependencies"]["server"]
    [kombu] = [d for d in server if d.startswith("kombu")]
    floor = re.search(r">=\s*(\d+)\.(\d+)", kombu)
    assert floor and (int(floor[1]), int(floor[2])) >= (5, 7), kombu
