"""Batch files end to end (issue 12): real API, real workers, real Redis, a shared file store.

Each test uploads a file through ``POST /v1/files``, scores it with
``POST /v1/models/{name}/batches``, waits with ``GET /v1/batches/{id}?wait=``, downloads the
output and compares it row by row, in order, with a local ``predict_proba`` of the same model.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest

from predq.demo import IRIS_FEATURES, iris_sample_rows

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@pytest.fixture
def files_env(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> dict[str, str]:
    root = tmp_path / "files"
    env["PREDQ_FILES_ROOT"] = str(root)
    monkeypatch.setenv("PREDQ_FILES_ROOT", str(root))
    return env


def iris_frame(n: int, seed: int = 0) -> pd.DataFrame:
    df = pd.DataFrame(iris_sample_rows(n, seed=seed))
    df.insert(0, "customer_id", [f"c{i:06d}" for i in range(n)])
    return df


def local_scores(registry: Any, df: pd.DataFrame) -> pd.DataFrame:
    manifest = registry.resolve("iris")
    est = joblib.load(registry.artifact_path(manifest))
    proba = est.predict_proba(df[list(IRIS_FEATURES)])
    out = pd.DataFrame({"label": est.classes_.take(np.argmax(proba, axis=1))})
    for j, c in enumerate(est.classes_):
        out[f"proba_{c}"] = proba[:, j]
    return out


def upload(client: httpx.Client, data: bytes, ctype: str, **headers: str) -> httpx.Response:
    return client.post("/v1/files", content=data, headers={"Content-Type": ctype, **headers})


def wait_batch(client: httpx.Client, batch_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        r = client.get(f"/v1/batches/{batch_id}", params={"wait": 10})
        assert r.status_code == 200, r.text
        b = r.json()
        if b["status"] in TERMINAL or time.monotonic() > deadline:
            return b
    raise AssertionError("unreachable")


@pytest.fixture
def api(registry_with_models: Any, keys: dict[str, str], files_env: dict[str, str],
        start_worker: Callable[..., Any], start_api: Callable[..., str]
        ) -> Iterator[Callable[..., httpx.Client]]:
    clients: list[httpx.Client] = []

    def start(workers: int = 1, concurrency: int = 2, key: str = "user", **extra: str
              ) -> httpx.Client:
        for _ in range(workers):
            start_worker(concurrency, extra_env=extra)
        base = start_api(extra_env=extra)
        return client_for(base, key)

    def client_for(base: str, key: str = "user") -> httpx.Client:
        c = httpx.Client(base_url=base, timeout=60,
                         headers={"Authorization": f"Bearer {keys[key]}"})
        clients.append(c)
        return c

    start.client_for = client_for  # type: ignore[attr-defined]
    yield start
    for c in clients:
        c.close()


def test_csv_batch_in_order_matches_local_predict(api: Any, registry_with_models: Any) -> None:
    client = api(PREDQ_BATCH_CHUNK_ROWS="700")
    df = iris_frame(2500)
    r = upload(client, df.to_csv(index=False).encode(), "text/csv")
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["format"] == "csv" and f["n_rows"] == 2500 and len(f["sha256"]) == 64
    r = client.post("/v1/models/iris/batches", json={"file_id": f["id"],
                                                     "id_column": "customer_id"})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/batches/{r.json()['id']}"
    b = wait_batch(client, r.json()["id"])
    assert b["status"] == "succeeded", b
    assert b["counts"] == {"total": 2500, "done": 2500, "failed": 0}
    assert b["chunks"] == {"total": 4, "done": 4}
    out = client.get(f"/v1/files/{b['output_file_id']}/content")
    assert out.status_code == 200
    got = pd.read_csv(io.BytesIO(out.content))
    want = local_scores(registry_with_models, df)
    assert list(got.columns) == ["customer_id", "label", *[c for c in want.columns
                                                            if c != "label"]]
    assert got["customer_id"].tolist() == df["customer_id"].tolist()
    assert got["label"].tolist() == want["label"].tolist()
    for c in want.columns[1:]:
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=1e-12)
    # Another format on the way out: Parquet, same rows.
    pq = client.get(f"/v1/files/{b['output_file_id']}/content", params={"format": "parquet"})
    assert pq.status_code == 200
    got_pq = pd.read_parquet(io.BytesIO(pq.content))
    assert got_pq["customer_id"].tolist() == df["customer_id"].tolist()
    np.testing.assert_allclose(got_pq[want.columns[1]].to_numpy(),
                               want[want.columns[1]].to_numpy())
    errors = client.get(f"/v1/files/{b['error_file_id']}/content")
    assert errors.status_code == 200 and errors.content == b""
