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
from predq.push import push_model

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
    metrics = client.get("/metrics", params={"scope": "cluster"}).text
    assert 'predq_batch_file_rows_total{model="iris",outcome="done"} 2500' in metrics
    assert 'predq_batch_file_chunks_total{model="iris"} 4' in metrics
    assert 'predq_batch_files_finished_total{status="succeeded"} 1' in metrics
    assert "predq_batch_file_chunk_duration_seconds_count 4" in metrics


def _problem(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    text = (body.get("detail", "") + str(body.get("errors", ""))).lower()
    for w in words:
        assert w.lower() in text, (w, body)
    return body


def test_bad_uploads_and_bad_batches_get_clear_problems(api: Any, tmp_path: Path) -> None:
    client = api(PREDQ_MAX_FILE_BYTES="200000")
    other = api.client_for(str(client.base_url), "other")
    df = iris_frame(50)
    csv = df.to_csv(index=False).encode()
    buf = io.BytesIO()
    df.to_parquet(buf)
    parquet = buf.getvalue()
    # A file of another format than its Content-Type, both ways.
    _problem(upload(client, parquet, "text/csv"), 422, "parquet", "csv")
    _problem(upload(client, csv, "application/vnd.apache.parquet"), 422, "csv", "parquet")
    _problem(upload(client, b'{"a": 1}\n', "text/csv"), 422, "jsonl")
    # Unsupported types and encodings.
    _problem(upload(client, csv, "application/pdf"), 415, "text/csv")
    _problem(upload(client, csv, "text/csv", **{"Content-Encoding": "br"}), 415, "gzip")
    # A truncated gzip stream; a body that is not gzip at all.
    gz = gzip.compress(csv)
    _problem(upload(client, gz[: len(gz) // 2], "text/csv", **{"Content-Encoding": "gzip"}),
             422, "truncated")
    _problem(upload(client, b"not gzip at all", "text/csv", **{"Content-Encoding": "gzip"}),
             422, "gzip")
    # A good gzip upload is stored decoded.
    r = upload(client, gz, "text/csv", **{"Content-Encoding": "gzip"})
    assert r.status_code == 201, r.text
    assert r.json()["bytes"] == len(csv) and r.json()["n_rows"] == 50
    # A ragged CSV row, an empty file, a header-only file, duplicate column names.
    ragged = csv.decode().splitlines()
    ragged[7] = ragged[7] + ",1.0"
    _problem(upload(client, "\n".join(ragged).encode(), "text/csv"), 422, "ragged", "row 6")
    _problem(upload(client, b"", "text/csv"), 422, "empty")
    _problem(upload(client, b"a,b,c\n", "text/csv"), 422, "header")
    _problem(upload(client, b"a,b,a\n1,2,3\n", "text/csv"), 422, "duplicate", "'a'")
    # Over the size limit: 413 (with and without Content-Length), nothing left in tmp.
    big = b"x,y\n" + b"1.0,2.0\n" * 40_000
    _problem(upload(client, big, "text/csv"), 413, "limit")

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    _problem(client.post("/v1/files", content=chunks(), headers={"Content-Type": "text/csv"}),
             413, "limit")
    bomb = gzip.compress(b"x,y\n" + b"1.0,2.0\n" * 200_000)
    _problem(upload(client, bomb, "text/csv", **{"Content-Encoding": "gzip"}), 413, "limit")
    leftovers = list((tmp_path / "files" / "tmp").glob("*"))
    assert leftovers == []
    # Batches: unknown file, another owner's file, missing/unknown columns, wrong types.
    _problem(client.post("/v1/models/iris/batches", json={"file_id": "file_" + "0" * 32}),
             404, "no file")
    good = upload(client, csv, "text/csv").json()
    _problem(other.post("/v1/models/iris/batches", json={"file_id": good["id"]}), 404, "no file")
    _problem(other.get(f"/v1/files/{good['id']}"), 404)
    _problem(client.post("/v1/models/iris/batches", json={"file_id": good["id"]}), 422,
             "unknown columns: customer_id")
    _problem(client.post("/v1/models/iris/batches", json={"file_id": good["id"],
                                                          "id_column": "nope"}), 422, "nope")
    short = upload(client, df.drop(columns=["petal_width"]).to_csv(index=False).encode(),
                   "text/csv").json()
    _problem(client.post("/v1/models/iris/batches", json={"file_id": short["id"],
                                                          "id_column": "customer_id"}),
             422, "missing columns: petal_width")
    wrong = df.assign(sepal_width=df["sepal_width"].astype(str))
    buf = io.BytesIO()
    wrong.to_parquet(buf)
    wrong_id = upload(client, buf.getvalue(), "application/vnd.apache.parquet").json()["id"]
    _problem(client.post("/v1/models/iris/batches", json={"file_id": wrong_id,
                                                          "id_column": "customer_id"}),
             422, "sepal_width", "string")
    _problem(client.post("/v1/models/nosuch/batches", json={"file_id": good["id"]}), 404)
    _problem(client.post("/v1/models/iris/batches", content=b"{nope",
                         headers={"Content-Type": "application/json"}), 400, "json")
    _problem(client.post("/v1/models/iris/batches", content=b"x" * 300_000,
                         headers={"Content-Type": "application/json"}), 413)
    _problem(client.post("/v1/models/iris/batches", content=b"{}",
                         headers={"Content-Type": "text/plain"}), 415)
    _problem(client.post("/v1/models/iris/batches", json={"file_id": good["id"],
                                                          "colour": 1}), 422, "extra")
    _problem(client.post("/v1/models/iris/batches", json={"file_id": good["id"],
                                                          "on_error": "explode"}), 422)
    # Another owner's batch is a 404, like an unknown one.
    r = client.post("/v1/models/iris/batches", json={"file_id": good["id"],
                                                     "id_column": "customer_id"})
    assert r.status_code == 202
    bid = r.json()["id"]
    _problem(other.get(f"/v1/batches/{bid}"), 404, "no batch")
    _problem(other.delete(f"/v1/batches/{bid}"), 404, "no batch")
    _problem(client.get("/v1/batches/batch_nope"), 404, "no batch")
    assert wait_batch(client, bid)["status"] == "succeeded"
    assert [b["id"] for b in other.get("/v1/batches").json()["data"]] == []
    # Deleting a file frees it; its id is then unknown.
    assert client.delete(f"/v1/files/{good['id']}").status_code == 200
    _problem(client.get(f"/v1/files/{good['id']}"), 404)
    assert not (tmp_path / "files" / "uploads" / good["id"]).exists()


def test_bad_rows_go_to_the_error_file_in_known_places(api: Any, registry_with_models: Any
                                                       ) -> None:
    client = api(PREDQ_BATCH_CHUNK_ROWS="300")
    df = iris_frame(1000)
    text = df.to_csv(index=False).splitlines()
    # data row r is line r + 1: a word, an empty cell (missing), inf, a huge number
    bad = {17: ("sepal_width", "abc", "float_parsing"), 301: ("petal_length", "", "missing"),
           650: ("petal_width", "inf", "finite_number"),
           999: ("sepal_length", "1e39", "less_than_equal")}
    cols = text[0].split(",")
    for row, (col, value, _) in bad.items():
        cells = text[row + 1].split(",")
        cells[cols.index(col)] = value
        text[row + 1] = ",".join(cells)
    fid = upload(client, ("\n".join(text) + "\n").encode(), "text/csv").json()["id"]
    r = client.post("/v1/models/iris/batches", json={"file_id": fid,
                                                     "id_column": "customer_id",
                                                     "output_format": "jsonl"})
    assert r.status_code == 202, r.text
    b = wait_batch(client, r.json()["id"])
    assert b["status"] == "succeeded", b
    assert b["counts"] == {"total": 1000, "done": 996, "failed": 4}
    lines = [httpx.Response(200, content=line).json() for line in
             client.get(f"/v1/files/{b['error_file_id']}/content").content.splitlines()]
    assert [line["row"] for line in lines] == sorted(bad)
    for line in lines:
        col, _, kind = bad[line["row"]]
        assert line["id"] == f"c{line['row']:06d}"
        assert line["errors"][0]["loc"] == ["row", line["row"], col], line
        assert line["errors"][0]["type"] == kind, line
        assert line["errors"][0]["msg"]
    out = [httpx.Response(200, content=line).json() for line in
           client.get(f"/v1/files/{b['output_file_id']}/content").content.splitlines()]
    keep = df.drop(index=list(bad)).reset_index(drop=True)
    assert [o["customer_id"] for o in out] == keep["customer_id"].tolist()
    want = local_scores(registry_with_models, keep)
    assert [o["label"] for o in out] == want["label"].tolist()
    # on_error: fail fails the batch, naming the first bad rows.
    r = client.post("/v1/models/iris/batches", json={"file_id": fid, "on_error": "fail",
                                                     "id_column": "customer_id"})
    b = wait_batch(client, r.json()["id"])
    assert b["status"] == "failed", b
    assert b["error"]["type"] == "InvalidRows" and "row 17" in b["error"]["message"], b


@pytest.fixture
def slow_model(registry_with_models: Any, tmp_path: Path) -> Callable[[float], str]:
    def push(delay: float) -> str:
        from tests.helpers.faulty import train

        path = tmp_path / "slow.joblib"
        joblib.dump(train("slow", delay=delay), path)
        push_model(registry_with_models, path, "slow")
        return "slow"
    return push


def xy_csv(n: int) -> bytes:
    df = pd.DataFrame({"rid": range(n), "x1": np.arange(n) % 7 * 1.0, "x2": 1.0})
    return df.to_csv(index=False).encode()


def _wait_for(cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_one_batch_is_split_across_two_workers(api: Any, registry_with_models: Any,
                                               processes: Any) -> None:
    client = api(workers=2, concurrency=1, PREDQ_BATCH_CHUNK_ROWS="400")
    df = iris_frame(6000)
    fid = upload(client, df.to_csv(index=False).encode(), "text/csv").json()["id"]
    r = client.post("/v1/models/iris/batches", json={"file_id": fid, "id_column": "customer_id",
                                                     "output_format": "parquet"})
    b = wait_batch(client, r.json()["id"])
    assert b["status"] == "succeeded" and b["chunks"] == {"total": 15, "done": 15}, b
    assert b["rows_per_second"] and b["rows_per_second"] > 0 and b["eta_seconds"] == 0
    logs = [p.read_text() for name, p in processes.logs if name == "worker"]
    ran = [log.count(": chunk ") for log in logs]
    assert len(ran) == 2 and all(n > 0 for n in ran), ran
    got = pd.read_parquet(io.BytesIO(
        client.get(f"/v1/files/{b['output_file_id']}/content").content))
    assert got["customer_id"].tolist() == df["customer_id"].tolist()
    want = local_scores(registry_with_models, df)
    assert got["label"].tolist() == want["label"].tolist()


def test_a_worker_killed_mid_chunk_loses_and_duplicates_nothing(
        api: Any, slow_model: Any, start_worker: Any, tmp_path: Path) -> None:
    slow_model(1.5)
    # The batch hard time limit (2 x 3 + 3 s) stays below the visibility timeout.
    extra = {"PREDQ_BATCH_CHUNK_ROWS": "100", "PREDQ_VISIBILITY_TIMEOUT_S": "10",
             "PREDQ_JOB_TIME_LIMIT_S": "3",
             "PREDQ_PRELOAD_MODELS": "false"}
    client = api(workers=0, **extra)
    victim = start_worker(1, extra_env=extra)
    fid = upload(client, xy_csv(300), "text/csv").json()["id"]
    bid = client.post("/v1/models/slow/batches", json={"file_id": fid, "id_column": "rid"}
                      ).json()["id"]
    root = tmp_path / "files" / "batches" / bid
    _wait_for(lambda: len(list((root / "chunks").glob("*.arrow"))) == 3)
    assert not list((root / "parts").glob("*.arrow"))  # chunk 0 is being predicted
    victim.kill()
    start_worker(1, extra_env=extra)
    b = wait_batch(client, bid)
    assert b["status"] == "succeeded" and b["counts"]["done"] == 300, b
    got = pd.read_csv(io.BytesIO(client.get(f"/v1/files/{b['output_file_id']}/content").content))
    assert got["rid"].tolist() == list(range(300))  # every row once, in order


def test_interactive_job_goes_before_queued_chunks(api: Any, slow_model: Any,
                                                   tmp_path: Path, keys: Any) -> None:
    slow_model(1.0)
    client = api(concurrency=1, PREDQ_BATCH_CHUNK_ROWS="50")
    fid = upload(client, xy_csv(200), "text/csv").json()["id"]
    bid = client.post("/v1/models/slow/batches", json={"file_id": fid, "id_column": "rid"}
                      ).json()["id"]
    root = tmp_path / "files" / "batches" / bid
    _wait_for(lambda: len(list((root / "chunks").glob("*.arrow"))) == 4)
    r = client.post("/v1/models/slow/jobs", json={"inputs": [{"x1": 1.0, "x2": 0.0}]})
    assert r.status_code == 202, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    b = wait_batch(client, bid)
    assert b["status"] == "succeeded", b
    done_at = pd.Timestamp(job["finished_at"]).timestamp()
    parts = sorted((root / "parts").glob("*.arrow"))
    assert len(parts) == 4
    # Chunks 2 and 3 were queued when the job came: the job was predicted before them.
    later = [p.stat().st_mtime for p in parts[2:]]
    assert all(done_at < t for t in later), (done_at, later)


def test_cancel_stops_further_chunks_and_keeps_finished_ones(api: Any, slow_model: Any,
                                                             tmp_path: Path) -> None:
    slow_model(0.7)
    client = api(concurrency=1, PREDQ_BATCH_CHUNK_ROWS="50")
    fid = upload(client, xy_csv(400), "text/csv").json()["id"]
    bid = client.post("/v1/models/slow/batches", json={"file_id": fid, "id_column": "rid"}
                      ).json()["id"]
    _wait_for(lambda: client.get(f"/v1/batches/{bid}").json()["chunks"]["done"] >= 1)
    r = client.delete(f"/v1/batches/{bid}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert r.json()["output_file_id"]
    _problem(client.delete(f"/v1/batches/{bid}"), 409, "cancelled")
    root = tmp_path / "files" / "batches" / bid / "parts"
    # The chunk running at the cancel may finish; none starts after it. Let the lane drain.
    time.sleep(2.5)
    b = client.get(f"/v1/batches/{bid}").json()
    assert b["status"] == "cancelled"
    assert 1 <= b["chunks"]["done"] < 8
    assert len(list(root.glob("*.arrow"))) <= b["chunks"]["done"] + 1
    got = pd.read_csv(io.BytesIO(client.get(f"/v1/files/{b['output_file_id']}/content").content))
    assert got["rid"].tolist() == list(range(50 * b["chunks"]["done"]))  # partial, in order
    listed = client.get("/v1/batches").json()["data"]
    assert [x["id"] for x in listed] == [bid]


def test_files_and_batches_expire_and_their_disk_is_freed(api: Any, tmp_path: Path) -> None:
    client = api(PREDQ_FILE_TTL_S="15")
    df = iris_frame(100)
    fid = upload(client, df.to_csv(index=False).encode(), "text/csv").json()["id"]
    b = wait_batch(client, client.post("/v1/models/iris/batches", json={
        "file_id": fid, "id_column": "customer_id"}).json()["id"])
    assert b["status"] == "succeeded"
    root = tmp_path / "files"
    assert (root / "uploads" / fid).exists() and (root / "batches" / b["id"]).exists()
    _wait_for(lambda: client.get(f"/v1/files/{fid}").status_code == 404, timeout=60)
    _wait_for(lambda: client.get(f"/v1/batches/{b['id']}").status_code == 404, timeout=60)
    _problem(client.get(f"/v1/batches/{b['id']}"), 404, "expired")
    _problem(client.get(f"/v1/files/{b['output_file_id']}/content"), 404)
    _wait_for(lambda: not (root / "uploads" / fid).exists()
              and not (root / "batches" / b["id"]).exists(), timeout=30)


def test_jsonl_and_parquet_inputs_idempotency_and_a_deleted_version(
        api: Any, registry_with_models: Any, slow_model: Any, start_worker: Any) -> None:
    client = api(workers=0, PREDQ_BATCH_CHUNK_ROWS="64")
    df = iris_frame(200)
    import orjson

    # JSON Lines: a key no feature has is an unknown column, named at creation.
    rows = df.to_dict(orient="records")
    rows[150]["colour"] = "red"
    extra = upload(client, b"".join(orjson.dumps(r) + b"\n" for r in rows),
                   "application/x-ndjson").json()["id"]
    _problem(client.post("/v1/models/iris/batches", json={"file_id": extra,
                                                          "id_column": "customer_id"}),
             422, "unknown columns: colour")
    # Row 3 has a string for a number and row 150 a null (both refused, as in a JSON job).
    rows = df.to_dict(orient="records")
    rows[3]["sepal_width"] = "3.1"
    rows[150]["sepal_length"] = None
    body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    jf = upload(client, body, "application/x-ndjson")
    assert jf.status_code == 201, jf.text
    # A batch queued while no worker runs; its version is then deleted from the registry.
    slow_model(0.0)
    xy = upload(client, xy_csv(10), "text/csv").json()["id"]
    doomed = client.post("/v1/models/slow/batches", json={"file_id": xy, "id_column": "rid"})
    assert doomed.status_code == 202
    import shutil

    shutil.rmtree(registry_with_models.root / "slow" / "1")
    start_worker(2)
    headers = {"Idempotency-Key": "nightly-2026-12-01"}
    r1 = client.post("/v1/models/iris/batches", headers=headers,
                     json={"file_id": jf.json()["id"], "id_column": "customer_id"})
    r2 = client.post("/v1/models/iris/batches", headers=headers,
                     json={"file_id": jf.json()["id"], "id_column": "customer_id"})
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["id"] == r2.json()["id"] and r2.headers["idempotent-replayed"] == "true"
    _problem(client.post("/v1/models/iris/batches", headers=headers,
                         json={"file_id": jf.json()["id"], "id_column": "customer_id",
                               "on_error": "fail"}), 409, "idempotency")
    b = wait_batch(client, r1.json()["id"])
    assert b["status"] == "succeeded" and b["counts"]["failed"] == 2, b
    errs = [orjson.loads(x) for x in
            client.get(f"/v1/files/{b['error_file_id']}/content").content.splitlines()]
    assert [(e["row"], e["errors"][0]["type"], e["errors"][0]["loc"]) for e in errs] == [
        (3, "float_type", ["row", 3, "sepal_width"]),
        (150, "float_type", ["row", 150, "sepal_length"])]
    out = client.get(f"/v1/files/{b['output_file_id']}/content")
    assert out.headers["content-type"].startswith("application/x-ndjson")
    ids = [orjson.loads(x)["customer_id"] for x in out.content.splitlines()]
    assert ids == [f"c{i:06d}" for i in range(200) if i not in (3, 150)]
    # Parquet with a missing value (iris requires all four): that row fails, others score.
    pdf = df.copy()
    pdf.loc[77, "petal_length"] = None
    buf = io.BytesIO()
    pdf.to_parquet(buf, row_group_size=50)
    pf = upload(client, buf.getvalue(), "application/vnd.apache.parquet").json()
    b = wait_batch(client, client.post("/v1/models/iris/batches", json={
        "file_id": pf["id"], "id_column": "customer_id", "output_format": "csv"}).json()["id"])
    assert b["status"] == "succeeded" and b["counts"] == {"total": 200, "done": 199,
                                                          "failed": 1}, b
    got = pd.read_csv(io.BytesIO(client.get(f"/v1/files/{b['output_file_id']}/content").content))
    keep = df.drop(index=[77]).reset_index(drop=True)
    assert got["customer_id"].tolist() == keep["customer_id"].tolist()
    want = local_scores(registry_with_models, keep)
    np.testing.assert_allclose(got[want.columns[1]].to_numpy(), want[want.columns[1]].to_numpy())
    # The batch whose version was deleted failed, saying so.
    gone = wait_batch(client, doomed.json()["id"])
    assert gone["status"] == "failed" and gone["error"]["type"] == "ModelGone", gone
    assert "no longer exists" in gone["error"]["message"]
