"""The batch predictor against a real Redis: failures fail exactly the jobs they touch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import orjson
import pytest
import redis

from predq.demo import iris_sample_rows
from predq.push import push_model
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import predict_message
from predq.shared.jobstore.scripts import Scripts
from predq.shared.registry.schema import ModelSchema
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings
from predq.worker.model_cache import ModelCache
from predq.worker.predict import BatchPredictor
from tests.helpers.faulty import train

pytestmark = pytest.mark.integration


@pytest.fixture
def env_(registry_with_models: Registry, settings_env: dict[str, str], tmp_path: Path
         ) -> dict[str, Any]:
    settings = Settings()
    client = redis.Redis.from_url(settings.redis_url)
    scripts = Scripts(client, Keys(settings.key_prefix))
    predictor = BatchPredictor(scripts, settings, ModelCache(registry_with_models, 4))
    return {"settings": settings, "client": client, "scripts": scripts,
            "registry": registry_with_models, "predictor": predictor, "tmp": tmp_path}


def submit(e: dict[str, Any], model: str, rows: list[dict[str, Any]], job_id: str) -> tuple:
    manifest = e["registry"].resolve(model, None)
    parsed = ModelSchema(manifest, max_rows=10_000, max_string=100, max_metadata_bytes=100
                         ).parse({"inputs": rows}, allow_webhook=True)
    s = e["settings"]
    e["scripts"].submit(job_id=job_id, fields={"status": "queued", "model": model,
                        "version": manifest.version, "n_inputs": len(rows), "owner": "t",
                        "inputs": parsed.inputs},
                        message=predict_message(job_id, model, manifest.version, len(rows), "x"),
                        queue=s.default_queue, model=model, n_rows=len(rows), ttl=60)
    return (job_id, model, manifest.version, len(rows))


def job(e: dict[str, Any], job_id: str) -> dict[str, Any]:
    raw = e["client"].hgetall(Keys(e["settings"].key_prefix).job(job_id))
    return {k.decode(): v for k, v in raw.items()}


def push_faulty(e: dict[str, Any], mode: str) -> None:
    path = e["tmp"] / f"{mode}.joblib"
    joblib.dump(train(mode), path)
    push_model(e["registry"], path, "faulty", version="1" if mode == "raise" else None)


def test_one_poison_row_fails_only_its_job(env_: dict[str, Any]) -> None:
    push_faulty(env_, "raise")
    good = [{"x1": 1.0, "x2": 0.0}] * 3
    reqs = [submit(env_, "faulty", good, f"g{i}") for i in range(5)]
    reqs.insert(2, submit(env_, "faulty", [*good, {"x1": -1.0, "x2": 0.0}], "bad"))
    reqs.append(submit(env_, "iris", iris_sample_rows(4), "other-model"))
    report = env_["predictor"].run("b1", reqs)
    assert job(env_, "bad")[b"status".decode()] == b"failed"
    err = orjson.loads(job(env_, "bad")["error"])
    assert err["type"] == "PredictError" and "x1 must not be negative" in err["message"]
    for i in range(5):
        j = job(env_, f"g{i}")
        assert j["status"] == b"succeeded" and len(orjson.loads(j["outputs"])) == 3
    assert job(env_, "other-model")["status"] == b"succeeded"
    assert report.outcomes["bad"][0] == "FAILURE"
    assert "inputs" not in job(env_, "bad")  # inputs are dropped once a job ends


def test_wrong_number_of_rows_fails_the_job(env_: dict[str, Any]) -> None:
    push_faulty(env_, "short")
    reqs = [submit(env_, "faulty", [{"x1": 1.0, "x2": 0.0}] * 2, "s1")]
    env_["predictor"].run("b2", reqs)
    err = orjson.loads(job(env_, "s1")["error"])
    assert err["type"] == "OutputMismatch" and "1 rows for 2 inputs" in err["message"]


def test_tampered_or_missing_artifact_fails_the_jobs_clearly(env_: dict[str, Any]) -> None:
    m = env_["registry"].resolve("iris", None)
    path = env_["registry"].artifact_path(m)
    path.write_bytes(path.read_bytes() + b"tampered")
    env_["predictor"].run("b3", [submit(env_, "iris", iris_sample_rows(2), "t1")])
    err = orjson.loads(job(env_, "t1")["error"])
    assert err["type"] == "ModelLoadError" and "sha256" in err["message"]
    path.unlink()
    env_["predictor"].run("b4", [submit(env_, "iris", iris_sample_rows(2), "t2")])
    assert job(env_, "t2")["status"] == b"failed"
    # other models keep working in the same process
    from predq.demo import mixed_sample_rows

    env_["predictor"].run("b5", [submit(env_, "mixed", mixed_sample_rows(2), "m1")])
    assert job(env_, "m1")["status"] == b"succeeded"


def test_cancelled_jobs_are_skipped_and_never_overwritten(env_: dict[str, Any]) -> None:
    req = submit(env_, "iris", iris_sample_rows(2), "c1")
    assert env_["scripts"].cancel("c1", "iris", 60) == b"cancelled"
    report = env_["predictor"].run("b6", [req])
    assert report.outcomes["c1"][0] == "REVOKED"
    assert job(env_, "c1")["status"] == b"cancelled" and "outputs" not in job(env_, "c1")


def test_queued_rows_counter_tracks_the_backlog(env_: dict[str, Any]) -> None:
    keys = Keys(env_["settings"].key_prefix)
    reqs = [submit(env_, "iris", iris_sample_rows(3), f"q{i}") for i in range(3)]
    assert int(env_["client"].get(keys.queued_rows("iris"))) == 9
    env_["predictor"].run("b7", reqs)
    assert int(env_["client"].get(keys.queued_rows("iris"))) == 0
