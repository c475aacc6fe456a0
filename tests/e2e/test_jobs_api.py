"""The HTTP contract of API.md, through a real uvicorn process and real workers."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from predq.demo import iris_sample_rows

pytestmark = pytest.mark.integration


def rows(n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    return iris_sample_rows(n, seed=seed)


def test_submit_poll_and_long_poll(stack: Any) -> None:
    s = stack()
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        r = c.post("/v1/models/iris/jobs", json={"inputs": rows(), "metadata": {"k": [1]}})
        assert r.status_code == 202
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
        assert job["status"] == "queued" and job["n_inputs"] == 3
        assert job["model"] == "iris" and job["version"] == "1"
        done = c.get(f"/v1/jobs/{job['id']}", params={"wait": 20}).json()
        assert done["status"] == "succeeded"
        assert done["created_at"] == job["created_at"]
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]
        assert done["metadata"] == {"k": [1]} and done["error"] is None
        assert done["expires_at"] is not None
        assert len(done["outputs"]) == 3
        assert set(done["outputs"][0]) == {"label", "probabilities"}


def test_sync_predict_and_versions(stack: Any) -> None:
    s = stack()
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        r = c.post("/v1/models/iris/predict", json={"inputs": rows(2)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "iris" and body["version"] == "1" and body["job_id"]
        assert len(body["outputs"]) == 2
        r = c.post("/v1/models/iris/predict", json={"inputs": rows(2), "version": "production"})
        assert r.status_code == 200 and r.json()["version"] == "1"
        # the job behind a sync call is an ordinary job
        assert c.get(f"/v1/jobs/{body['job_id']}").json()["status"] == "succeeded"


def test_sync_predict_answers_202_when_the_wait_runs_out(stack: Any, start_api: Any,
                                                         keys: dict[str, str]) -> None:
    base = start_api()  # no worker is running
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['user']}"},
                      timeout=30) as c:
        r = c.post("/v1/models/iris/predict", params={"wait": 0.2}, json={"inputs": rows()})
        assert r.status_code == 202
        assert r.headers["location"].startswith("/v1/jobs/")
        assert r.json()["status"] == "queued"


def test_idempotency_key_returns_the_same_job(start_api: Any, keys: dict[str, str],
                                              registry_with_models: Any) -> None:
    base = start_api()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['user']}"}) as c:
        body = {"inputs": rows()}
        a = c.post("/v1/models/iris/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
        b = c.post("/v1/models/iris/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
        assert a.status_code == b.status_code == 202
        assert a.json()["id"] == b.json()["id"]
        assert b.headers["idempotent-replayed"] == "true"
        other = c.post("/v1/models/iris/jobs", json={"inputs": rows(4)},
                       headers={"Idempotency-Key": "abc-1"})
        assert other.status_code == 409
        assert other.headers["content-type"] == "application/problem+json"
        fresh = c.post("/v1/models/iris/jobs", json=body, headers={"Idempotency-Key": "abc-2"})
        assert fresh.json()["id"] != a.json()["id"]


def test_cancel_a_queued_job_and_409_on_a_finished_one(stack: Any, start_api: Any,
                                                       keys: dict[str, str]) -> None:
    base = start_api()  # nothing consumes yet: the job stays queued
    auth = {"Authorization": f"Bearer {keys['user']}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
        job_id = c.post("/v1/models/iris/jobs", json={"inputs": rows()}).json()["id"]
        r = c.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 409
        s = stack()  # a worker now takes the queued message and must skip the cancelled job
        done_id = c.post("/v1/models/iris/jobs", json={"inputs": rows()}).json()["id"]
        assert c.get(f"/v1/jobs/{done_id}", params={"wait": 20}).json()["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        r = c.delete(f"/v1/jobs/{done_id}")
        assert r.status_code == 409
        assert "succeeded" in r.json()["detail"]
        assert s.workers[0].alive()


def test_results_expire_after_the_ttl(stack: Any) -> None:
    # A TTL long enough that a loaded machine still reads the result before it expires.
    s = stack(PREDQ_RESULT_TTL_S="5")
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        job_id = c.post("/v1/models/iris/jobs", json={"inputs": rows()}).json()["id"]
        assert c.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while (r := c.get(f"/v1/jobs/{job_id}")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert r.status_code == 404
        assert "expired" in r.json()["detail"]


def test_jobs_belong_to_their_key(stack: Any, keys: dict[str, str]) -> None:
    s = stack()
    with httpx.Client(base_url=s.base_url, timeout=30) as c:
        job_id = c.post("/v1/models/iris/jobs", json={"inputs": rows()},
                        headers=s.headers).json()["id"]
        other = {"Authorization": f"Bearer {keys['other']}"}
        assert c.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
        assert c.delete(f"/v1/jobs/{job_id}", headers=other).status_code == 404
        assert c.get(f"/v1/jobs/{job_id}", headers=s.admin_headers).status_code == 200
        anonymous = c.get(f"/v1/jobs/{job_id}")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        bad = {"Authorization": "Bearer pq_nope"}
        assert c.get(f"/v1/jobs/{job_id}", headers=bad).status_code == 401


def test_models_are_described_with_their_schema(stack: Any) -> None:
    s = stack()
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        listing = c.get("/v1/models").json()
        assert {m["name"] for m in listing} == {"iris", "mixed"}
        iris = next(m for m in listing if m["name"] == "iris")
        assert iris["aliases"] == {"production": "1"} and iris["default_version"] == "1"
        mixed = c.get("/v1/models/mixed").json()
        assert mixed["task"] == "classification" and mixed["classes"]
        color = next(f for f in mixed["features"] if f["name"] == "color")
        assert color["type"] == "string" and set(color["categories"]) == {"red", "green", "blue"}
        assert mixed["input_schema"]["properties"]["color"]["enum"]
        assert len(mixed["sha256"]) == 64 and mixed["format"] == "joblib"
        assert "sklearn" in mixed["library_versions"]
        assert c.get("/v1/models/iris/versions/1").json()["version"] == "1"
        assert c.get("/v1/models/iris/versions/production").json()["version"] == "1"
        doc = c.get("/openapi.json").json()
        assert "/v1/models/mixed/jobs" in doc["paths"]
        ref = doc["paths"]["/v1/models/mixed/jobs"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
        assert c.get("/docs").status_code == 200


def test_the_api_never_imports_model_code() -> None:
    code = ("import sys; from predq.api.app import create_app; create_app(); "
            "bad = [m for m in ('sklearn', 'joblib', 'worker') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
