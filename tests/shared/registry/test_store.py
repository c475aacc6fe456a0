"""The model registry: versions, aliases, caching, path safety and push."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from predq.push import push_model
from predq.shared.errors import IntegrityError, ModelNotFound, RegistryError, VersionNotFound
from predq.shared.registry.serialization import load_estimator
from predq.shared.registry.store import Manifest, Registry, sha256_file

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A small DataFrame-fitted classifier saved with joblib."""
    rng = np.random.RandomState(0)
    X = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    y = np.where(X["a"] > 0, "pos", "neg")
    path = tmp_path / "in" / "model.joblib"
    path.parent.mkdir()
    joblib.dump(LogisticRegression().fit(X, y), path)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_push_writes_layout_and_manifest(registry: Registry, artifact: Path) -> None:
    manifest = push_model(registry, artifact, "churn")
    version_dir = registry.root / "churn" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["manifest.json", "model.joblib"]
    assert manifest.version == "1" and manifest.format == "joblib"
    assert manifest.artifact == "model.joblib"
    assert manifest.sha256 == sha256_file(version_dir / "model.joblib")
    assert manifest.size_bytes == (version_dir / "model.joblib").stat().st_size
    assert manifest.task == "classification" and manifest.classes == ["neg", "pos"]
    assert [f.name for f in manifest.features] == ["a", "b", "c"]
    on_disk = Manifest.model_validate_json((version_dir / "manifest.json").read_bytes())
    assert on_disk == manifest
    assert [p.name for p in (registry.root / "churn").iterdir()] == ["1"]  # no staging left


def test_push_stores_uncompressed_joblib(registry: Registry, tmp_path: Path) -> None:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    compressed = tmp_path / "compressed.joblib"
    joblib.dump(LogisticRegression().fit(X, [0, 0, 1, 1]), compressed, compress=3)
    manifest = push_model(registry, compressed, "small")
    stored = registry.artifact_path(manifest)
    assert stored.read_bytes()[:1] == b"\x80"  # a plain pickle: the worker can mmap it
    model = load_estimator(stored, fmt="joblib", expected_sha256=manifest.sha256)
    assert model.predict(X).tolist() == [0, 0, 1, 1]


def test_versions_auto_increment_in_numeric_order(registry: Registry, artifact: Path) -> None:
    assert push_model(registry, artifact, "m").version == "1"
    assert push_model(registry, artifact, "m").version == "2"
    assert push_model(registry, artifact, "m", version="10").version == "10"
    assert push_model(registry, artifact, "m").version == "11"
    info = registry.model_info("m")
    assert info.versions == ["1", "2", "10", "11"]
    assert info.default_version == "11"
    assert registry.resolve("m", None).version == "11"


def test_push_refuses_to_overwrite(registry: Registry, artifact: Path) -> None:
    first = push_model(registry, artifact, "m", version="3")
    with pytest.raises(RegistryError, match="already exists"):
        push_model(registry, artifact, "m", version="3")
    assert registry.manifest("m", "3") == first
    assert [p.name for p in (registry.root / "m").iterdir()] == ["3"]


@pytest.mark.parametrize("bad", ["Churn", "../x", "a/b", "", "-x", "x" * 65])
def test_push_rejects_invalid_names(registry: Registry, artifact: Path, bad: str) -> None:
    with pytest.raises(RegistryError, match="invalid model name"):
        push_model(registry, artifact, bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": "01"}, "invalid version"),
        ({"version": "v1"}, "invalid version"),
        ({"aliases": ["123"]}, "invalid alias"),
        ({"fmt": "pickle"}, "unknown format"),
        ({"trusted_types": ["x.Y"]}, "skops artifacts only"),
    ],
)
def test_push_rejects_invalid_arguments(
    registry: Registry, artifact: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(RegistryError, match=match):
        push_model(registry, artifact, "m", **kwargs)  # type: ignore[arg-type]
    assert not (registry.root / "m").exists()


def test_aliases_and_default_version(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "m", aliases=["production", "stable"])
    push_model(registry, artifact, "m", aliases=["canary"])
    info = registry.model_info("m")
    assert info.aliases == {"canary": "2", "production": "1", "stable": "1"}
    assert info.default_version == "1"  # production wins over the highest version
    assert registry.resolve("m", None).version == "1"
    assert registry.resolve("m", "canary").version == "2"
    assert registry.resolve("m", "2").version == "2"
    registry.set_alias("m", "production", "2")
    assert registry.model_info("m").default_version == "2"
    assert registry.resolve("m", None).version == "2"
    assert registry.resolve("m", "stable").version == "1"


def test_resolve_errors(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "m")
    with pytest.raises(ModelNotFound, match="'nope' is not registered"):
        registry.resolve("nope", None)
    with pytest.raises(VersionNotFound, match="no version '7'"):
        registry.resolve("m", "7")
    with pytest.raises(VersionNotFound, match="no version or alias 'beta'"):
        registry.resolve("m", "beta")
    with pytest.raises(VersionNotFound):
        registry.manifest("m", "7")


def test_set_alias_errors(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "m")
    with pytest.raises(VersionNotFound):
        registry.set_alias("m", "production", "5")
    with pytest.raises(RegistryError, match="invalid alias"):
        registry.set_alias("m", "42", "1")
    with pytest.raises(ModelNotFound):
        registry.set_alias("other", "production", "1")


def test_dangling_alias_is_a_registry_error(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "m")
    (registry.root / "m" / "aliases.json").write_text('{"production": "9"}')
    with pytest.raises(RegistryError, match="missing v9"):
        registry.resolve("m", None)


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/../b", "/etc", "M", "m\x00", "m\n", "m/1"])
def test_traversal_names_are_not_found(registry: Registry, artifact: Path, name: str) -> None:
    push_model(registry, artifact, "m")
    (registry.root.parent / "x").mkdir()  # a sibling of root that "../x" would reach
    with pytest.raises(ModelNotFound):
        registry.resolve(name, None)
    with pytest.raises(ModelNotFound):
        registry.model_info(name)
    with pytest.raises(ModelNotFound):
        registry.manifest(name, "1")


@pytest.mark.parametrize("ref", ["../1", "1/../1", "1 ", "1\n", "-1", "PRODUCTION"])
def test_traversal_versions_are_not_found(registry: Registry, artifact: Path, ref: str) -> None:
    push_model(registry, artifact, "m")
    with pytest.raises(VersionNotFound):
        registry.resolve("m", ref)
    with pytest.raises(VersionNotFound):
        registry.manifest("m", ref)


def test_artifact_path_stays_inside_root(
    registry: Registry, artifact: Path, tmp_path: Path
) -> None:
    manifest = push_model(registry, artifact, "m")
    assert registry.artifact_path(manifest).is_relative_to(registry.root)
    # model_copy skips validation, as a hand-edited object would.
    evil = manifest.model_copy(update={"artifact": "../../../outside.joblib"})
    with pytest.raises(RegistryError, match="leaves root"):
        registry.artifact_path(evil)
    stored = registry.root / "m" / "1" / "model.joblib"
    stored.unlink()
    stored.symlink_to(artifact)  # a symlink out of the registry
    with pytest.raises(RegistryError, match="leaves root"):
        registry.artifact_path(manifest)


def test_manifest_rejects_path_artifacts() -> None:
    with pytest.raises(ValueError, match="artifact"):
        Manifest.model_validate(
            {
                "name": "m",
                "version": "1",
                "format": "joblib",
                "artifact": "../model.joblib",
                "sha256": "0" * 64,
                "size_bytes": 1,
                "task": "regression",
                "estimator": "x.Y",
                "features": [],
                "named_features": False,
                "has_predict_proba": False,
                "accepts_missing": False,
                "created_at": "2024-01-01T00:00:00Z",
                "library_versions": {},
            }
        )


def test_tampered_artifact_fails_integrity(registry: Registry, artifact: Path) -> None:
    manifest = push_model(registry, artifact, "m")
    path = registry.artifact_path(manifest)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(IntegrityError, match="sha256"):
        load_estimator(path, fmt="joblib", expected_sha256=manifest.sha256)


def test_manifests_are_cached_until_the_file_changes(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "m")
    first = registry.resolve("m", None)
    assert registry.resolve("m", "1") is first  # served from the cache: no new parse
    assert registry.model_info("m") is registry.model_info("m")
    path = registry.root / "m" / "1" / "manifest.json"
    changed = first.model_copy(update={"estimator": "edited.Estimator"})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(changed.model_dump_json())
    os.replace(tmp, path)
    assert registry.resolve("m", "1").estimator == "edited.Estimator"


def test_model_info_sees_new_versions_and_aliases(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "m")
    assert registry.model_info("m").versions == ["1"]
    push_model(registry, artifact, "m", aliases=["production"])
    info = registry.model_info("m")
    assert info.versions == ["1", "2"] and info.aliases == {"production": "2"}


def test_manifest_describing_another_model_is_rejected(registry: Registry, artifact: Path) -> None:
    push_model(registry, artifact, "a")
    (registry.root / "b").mkdir()
    os.rename(registry.root / "a" / "1", registry.root / "b" / "1")
    with pytest.raises(RegistryError, match="describes a version 1"):
        registry.resolve("b", None)


def test_list_models(registry: Registry, artifact: Path) -> None:
    assert registry.list_models() == []
    push_model(registry, artifact, "zeta")
    push_model(registry, artifact, "alpha", aliases=["production"])
    (registry.root / "empty").mkdir()  # no version: not listed
    (registry.root / "Not_A_Model").mkdir()
    (registry.root / "notes").write_text("a file, not a model")
    infos = registry.list_models()
    assert [i.name for i in infos] == ["alpha", "zeta"]
    assert infos[0].aliases == {"production": "1"}


def test_push_with_sample_csv(registry: Registry, tmp_path: Path) -> None:
    X = pd.DataFrame({"n": [1, 2, 3, 4], "x": [0.5, 1.5, 2.5, 3.5], "flag": [True, False] * 2})
    path = tmp_path / "m.joblib"
    joblib.dump(LogisticRegression().fit(X, [0, 0, 1, 1]), path)
    sample = tmp_path / "sample.csv"
    X.to_csv(sample, index=False)
    manifest = push_model(registry, path, "typed", sample_csv=sample, accepts_missing=True)
    assert {f.name: f.type for f in manifest.features} == {
        "n": "integer",
        "x": "number",
        "flag": "boolean",
    }
    assert manifest.accepts_missing and not any(f.required for f in manifest.features)


def test_registry_module_does_not_import_model_libraries() -> None:
    code = (
        "import sys, predq.shared.registry.store, predq.models_cmd, predq.demo\n"
        "bad = {'sklearn', 'numpy', 'joblib', 'pandas'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
