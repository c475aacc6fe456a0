"""Model loads are counted once: a model a worker preloads is not counted again by every pool
process that inherits it (issue 13, "Idempotency and metrics that tell the truth").

A real worker with ``--concurrency 2`` preloads every model, then runs two slow jobs at once
(one batch each, so each pool process runs one). Before the fix each pool process reported
the inherited load with its first batch: ``predq_model_cache_loads_total`` read 2 per model
and ``predq_model_load_seconds_total`` twice the time spent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import redis

from predq.push import push_model
from predq.shared.jobstore.keys import Keys
from predq.shared.observability.metrics import (
    CACHE_HITS,
    CACHE_LOADS,
    MODEL_LOAD_SECONDS,
    sample_field,
)
from tests.reliability.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DELAY_S = 4.0


def test_preloaded_models_are_counted_once_whatever_the_concurrency(
        registry_with_models: Any, start_worker: Any, start_api: Any, keys: dict[str, str],
        settings_env: dict[str, str], tmp_path: Path) -> None:
    from tests.helpers.killer import train

    artifact = tmp_path / "pause.joblib"
    joblib.dump(train(delay=DELAY_S, noisy=False), artifact)
    push_model(registry_with_models, artifact, "pause")
    env = {"PREDQ_MAX_BATCH_JOBS": "1", "PREDQ_MAX_WAIT_MS": "10"}
    worker = start_worker(2, extra_env=env)
    base = start_api(extra_env=env)
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    metrics_key = Keys(settings_env["PREDQ_KEY_PREFIX"]).metrics()

    def counter(name: str, **labels: str) -> float:
        return float(client.hget(metrics_key, sample_field(name, labels)) or 0)

    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['user']}"},
                          timeout=30, trust_env=False) as c:
            ids = []
            for i in range(2):
                r = c.post("/v1/models/pause/jobs",
                           json={"inputs": [{"x1": float(i), "x2": 0.0}]})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])

            def statuses() -> list[str]:
                return [c.get(f"/v1/jobs/{j}").json()["status"] for j in ids]

            # both running at once: each pool process runs one of them
            assert wait_until(lambda: statuses() == ["running", "running"], 30, poll=0.05), (
                statuses(), worker.tail())
            assert wait_until(lambda: statuses() == ["succeeded", "succeeded"], 60), statuses()
        # each pool process served its batch from the model its worker preloaded (a hit),
        # and the one load of each model was counted once, by the worker's main process
        assert wait_until(lambda: counter(CACHE_HITS.name, model="pause", version="1") == 2,
                          10), worker.tail()
        for model in ("pause", "iris", "mixed"):
            assert counter(CACHE_LOADS.name, model=model, version="1") == 1, model
        # and the load time is the time the worker measured for those loads (its log line
        # per model), not a multiple of it
        logged = [float(m) for m in re.findall(r"preloaded model \S+ v\d+ in ([0-9.]+) s",
                                                worker.tail(400))]
        assert len(logged) == 3, worker.tail(400)
        assert counter(MODEL_LOAD_SECONDS.name) == pytest.approx(sum(logged), abs=0.002)
    finally:
        client.close()
