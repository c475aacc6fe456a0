"""Outputs equal local predict / predict_proba, in order, while hundreds of jobs of different
sizes for two models run concurrently and are merged into the same micro-batches."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from predq.demo import iris_sample_rows, mixed_sample_rows
from predq.shared.registry.serialization import load_estimator
from predq.shared.registry.store import Registry

pytestmark = pytest.mark.integration

N_JOBS = 300


def local_outputs(registry: Registry, name: str, rows: list[dict[str, Any]]
                  ) -> tuple[list[Any], np.ndarray]:
    manifest = registry.resolve(name, None)
    model = load_estimator(registry.artifact_path(manifest), fmt=manifest.format,
                           expected_sha256=manifest.sha256)
    frame = pd.DataFrame(rows, columns=[f.name for f in manifest.features])
    return model.predict(frame).tolist(), model.predict_proba(frame)


def sizes(rng: random.Random) -> list[int]:
    out = [1, 2000, 1, 2000]
    while len(out) < N_JOBS:
        out.append(rng.randint(1, 40) if rng.random() < 0.85 else rng.randint(40, 2000))
    rng.shuffle(out)
    return out


@pytest.mark.slow
async def test_concurrent_jobs_of_two_models_match_local_predictions(
    stack: Any, registry_with_models: Registry
) -> None:
    # With the accelerated runtimes on: iris (a forest) runs on treelite, mixed on sklearn.
    assert registry_with_models.resolve("iris", None).runtime.name == "treelite"
    assert registry_with_models.resolve("mixed", None).runtime.name == "sklearn"
    s = stack(workers=1, concurrency=2)
    rng = random.Random(7)
    jobs = []
    for i, n in enumerate(sizes(rng)):
        name = "iris" if i % 2 else "mixed"
        rows = (iris_sample_rows if name == "iris" else mixed_sample_rows)(n, seed=i)
        jobs.append((name, rows))

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=s.base_url, headers=s.headers, timeout=120,
                                 limits=limits) as c:
        async def run(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
            r = await c.post(f"/v1/models/{name}/jobs", json={"inputs": rows})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            for _ in range(20):
                r = await c.get(f"/v1/jobs/{job_id}", params={"wait": 30})
                if r.json()["status"] not in ("queued", "running"):
                    break
            return r.json()

        results = await asyncio.gather(*(run(n, rows) for n, rows in jobs))
        stats = (await c.get("/v1/stats/batches")).json()

    for (name, rows), job in zip(jobs, results, strict=True):
        assert job["status"] == "succeeded", job
        assert job["n_inputs"] == len(rows) == len(job["outputs"])
        labels, proba = local_outputs(registry_with_models, name, rows)
        assert [o["label"] for o in job["outputs"]] == labels
        classes = list(job["outputs"][0]["probabilities"])
        got = np.array([[o["probabilities"][k] for k in classes] for o in job["outputs"]])
        np.testing.assert_allclose(got, proba, rtol=0, atol=1e-9)

    merged = {int(k): v for k, v in stats["jobs_per_batch"].items()}
    assert stats["jobs"] == N_JOBS
    assert max(merged) > 1, f"no batch merged several jobs: {merged}"
    assert stats["batches"] < N_JOBS


async def test_jobs_larger_than_max_batch_rows_are_chunked(
    stack: Any, registry_with_models: Registry
) -> None:
    s = stack(workers=1, concurrency=1, PREDQ_MAX_BATCH_ROWS="300")
    jobs = [("iris", iris_sample_rows(1000, seed=1)), ("mixed", mixed_sample_rows(701, seed=2)),
            ("iris", iris_sample_rows(3, seed=3))]
    async with httpx.AsyncClient(base_url=s.base_url, headers=s.headers, timeout=60) as c:
        async def run(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
            r = await c.post(f"/v1/models/{name}/jobs", json={"inputs": rows})
            return (await c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 30})).json()

        results = await asyncio.gather(*(run(n, rows) for n, rows in jobs))
    for (name, rows), job in zip(jobs, results, strict=True):
        assert job["status"] == "succeeded"
        labels, proba = local_outputs(registry_with_models, name, rows)
        assert [o["label"] for o in job["outputs"]] == labels
        classes = list(job["outputs"][0]["probabilities"])
        got = np.array([[o["probabilities"][k] for k in classes] for o in job["outputs"]])
        np.testing.assert_allclose(got, proba, rtol=0, atol=1e-9)
