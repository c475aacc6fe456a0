"""Workers load the models they serve before the pool forks (a fast first job).

The effect is asserted, not the log line: the first job after a start is served from the
pool process's model cache (a cache hit, counted by the pool process itself in the cluster
metrics), and without preloading the same first job is a cache miss (a load).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from predq.demo import iris_sample_rows
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import predict_message
from predq.shared.jobstore.scripts import Scripts
from predq.shared.observability.metrics import sample_field
from predq.shared.registry.schema import ModelSchema
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings

pytestmark = pytest.mark.integration


def _first_job_cache_use(registry: Registry) -> tuple[int, int]:
    """Run one iris job through the running worker; (cache hits, cache loads) of iris v1
    that the pool process recorded for it."""
    settings = Settings()
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    manifest = registry.resolve("iris", None)
    rows = iris_sample_rows(2)
    parsed = ModelSchema(manifest, max_rows=100, max_string=100, max_metadata_bytes=100
                         ).parse({"inputs": rows}, allow_webhook=False)
    job_id = "preload-first-job"
    Scripts(client, keys).submit(
        job_id=job_id, fields={"status": "queued", "model": "iris", "version": manifest.version,
                               "n_inputs": len(rows), "owner": "t", "inputs": parsed.inputs},
        message=predict_message(job_id, "iris", manifest.version, len(rows),
                                settings.default_queue),
        queue=settings.default_queue, model="iris", n_rows=len(rows), ttl=60)
    deadline = time.monotonic() + 60
    for _ in range(1200):
        if client.hget(keys.job(job_id), "status") == b"succeeded":
            break
        assert time.monotonic() < deadline, client.hgetall(keys.job(job_id))
        time.sleep(0.05)
    labels = {"model": "iris", "version": manifest.version}
    hits = client.hget(keys.metrics(), sample_field("predq_model_cache_hits_total", labels))
    loads = client.hget(keys.metrics(), sample_field("predq_model_cache_loads_total", labels))
    client.close()
    return int(hits or 0), int(loads or 0)


def test_the_first_job_finds_its_model_loaded(registry_with_models: Registry,
                                               start_worker: Any) -> None:
    worker = start_worker(1)
    hits, _ = _first_job_cache_use(registry_with_models)
    assert hits == 1, worker.tail(50)  # served from the cache the pool process inherited
    log = worker.tail(200)
    # The runtime is built with the model, in the parent, before the fork: iris (a forest)
    # on treelite, mixed (a LogisticRegression pipeline) on the estimator itself.
    assert "model iris v1 runs on treelite" in log
    assert log.index("model iris v1 runs on treelite") < log.index("preloaded model iris v1")
    assert "model mixed v1 runs on" not in log


def test_preloading_can_be_turned_off(registry_with_models: Registry,
                                      start_worker: Any) -> None:
    worker = start_worker(1, extra_env={"PREDQ_PRELOAD_MODELS": "false"})
    hits, loads = _first_job_cache_use(registry_with_models)
    assert (hits, loads) == (0, 1), worker.tail(50)  # the first job had to load it
