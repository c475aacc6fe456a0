"""Model files: loaded only from the registry, only after their sha256 matches, and, for
teams that want no pickle, from skops files with an explicit list of trusted types.

(The batch-level behaviour of a tampered or missing artifact is also covered, without
processes, by ``test_tampered_or_missing_artifact_fails_the_jobs_clearly`` in
tests/worker/test_predict.py.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from predq.demo import iris_sample_rows, train_demo_model
from predq.shared.errors import ModelNotFound, RegistryError, VersionNotFound
from predq.shared.registry.serialization import dump_estimator
from predq.shared.registry.store import Registry
from predq.worker.model_cache import ModelCache

pytestmark = pytest.mark.integration

TRAVERSALS = ["../outside/evil", "..", "/etc/passwd", "../../etc/passwd", "iris/../../outside",
              "%2e%2e", "..\\outside", "evil\x00", " iris", "IRIS"]

# -- an audit hook that sees every file this process opens --------------------------------

_opened: list[str] = []
_recording = threading.Event()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording.is_set() and event in ("open", "os.listdir", "os.scandir") and args:
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # process-wide and permanent, so it records only while asked to


@contextmanager
def files_opened() -> Iterator[list[str]]:
    _opened.clear()
    _recording.set()
    try:
        yield _opened
    finally:
        _recording.clear()


@pytest.fixture
def decoy(registry_with_models: Registry, tmp_path: Path) -> Path:
    """A complete, valid model *outside* the registry root: served only if a path leaks."""
    outside = tmp_path / "outside"
    shutil.copytree(registry_with_models.root / "iris", outside / "evil")
    return outside


def test_names_from_requests_never_leave_the_registry(registry_with_models: Registry,
                                                      decoy: Path) -> None:
    cache = ModelCache(registry_with_models, 2)
    with files_opened() as opened:
        for bad in TRAVERSALS:
            calls = [(registry_with_models.resolve, bad, None),
                     (registry_with_models.resolve, "iris", bad),
                     (cache.get, bad, "1"), (cache.get, "iris", bad)]
            for func, name, version in calls:
                with pytest.raises((ModelNotFound, VersionNotFound)):
                    func(name, version)
    leaked = [p for p in opened if "outside" in p or "passwd" in p]
    assert not leaked, leaked
    with files_opened() as opened:  # the hook does see files: a real load opens the artifact
        cache.get("iris", "1")
    assert any(p.endswith("model.joblib") for p in opened), opened


def test_an_artifact_outside_the_root_is_refused_even_with_the_right_bytes(
        registry_with_models: Registry, decoy: Path) -> None:
    manifest = registry_with_models.resolve("iris", None)
    artifact = registry_with_models.artifact_path(manifest)
    artifact.unlink()
    artifact.symlink_to(decoy / "evil" / manifest.version / manifest.artifact)  # same sha256
    with pytest.raises(RegistryError, match="leaves root"):
        ModelCache(registry_with_models, 2).get("iris", manifest.version)


def test_the_api_answers_404_to_paths_and_never_opens_them(
        start_api: Any, keys: dict[str, str], registry_with_models: Registry, decoy: Path,
        tmp_path: Path) -> None:
    base = start_api()
    auth = {"Authorization": f"Bearer {keys['user']}"}
    body = {"inputs": iris_sample_rows(1)}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
        for bad in ("..%2Foutside%2Fevil", "%2Fetc%2Fpasswd", "%2E%2E", "..%5Coutside"):
            for method, path in [("GET", f"/v1/models/{bad}"),
                                 ("GET", f"/v1/models/iris/versions/{bad}"),
                                 ("POST", f"/v1/models/{bad}/jobs")]:
                r = c.request(method, base + path, json=body if method == "POST" else None)
                assert r.status_code == 404, (path, r.text)
        for version in ("../outside/evil/1", "/etc/passwd", "../../outside", "1/../1"):
            r = c.post("/v1/models/iris/jobs", json={**body, "version": version})
            assert r.status_code == 404, (version, r.text)
            assert r.json()["title"] == "Model version not found"
        assert c.post("/v1/models/iris/jobs", json=body).status_code == 202  # still serving


def test_a_modified_artifact_fails_its_jobs_and_nothing_else(stack: Any,
                                                             registry_with_models: Registry
                                                             ) -> None:
    manifest = registry_with_models.resolve("iris", None)
    path = registry_with_models.artifact_path(manifest)
    path.write_bytes(path.read_bytes() + b"tampered")  # before any worker loaded it
    s = stack()  # its preload refuses the file; the job's own load fails it clearly
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        job_id = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(2)}).json()["id"]
        job = c.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "ModelLoadError" and "sha256" in job["error"]["message"]
        from predq.demo import mixed_sample_rows

        r = c.post("/v1/models/mixed/predict", json={"inputs": mixed_sample_rows(2)})
        assert r.status_code == 200, r.text


def _push(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "predq", "models", "push", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_skops_model_with_trusted_types_serves_jobs(
        stack: Any, registry_with_models: Registry, env: dict[str, str], tmp_path: Path) -> None:
    artifact = tmp_path / "iris.skops"
    dump_estimator(train_demo_model(), artifact, "skops")
    refused = _push(env, tmp_path, str(artifact), "--name", "iris-skops")
    assert refused.returncode != 0
    assert "sklearn.tree._tree.Tree" in refused.stderr  # it names what to review
    pushed = _push(env, tmp_path, str(artifact), "--name", "iris-skops", "--format", "skops",
                   "--trusted-type", "sklearn.tree._tree.Tree")
    assert pushed.returncode == 0, pushed.stderr
    manifest = registry_with_models.resolve("iris-skops", None)
    assert manifest.format == "skops" and manifest.artifact == "model.skops"
    assert manifest.trusted_types == ["sklearn.tree._tree.Tree"]

    s = stack()
    rows = iris_sample_rows(20, seed=3)
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        assert c.get("/v1/models/iris-skops").json()["format"] == "skops"
        from_skops = c.post("/v1/models/iris-skops/predict", json={"inputs": rows})
        from_joblib = c.post("/v1/models/iris/predict", json={"inputs": rows})
    assert from_skops.status_code == 200, from_skops.text
    # The same fitted forest, stored both ways, predicts the same.
    assert from_skops.json()["outputs"] == from_joblib.json()["outputs"]
