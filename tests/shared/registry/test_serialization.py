"""Loading estimators: integrity checks, version checks, mmap, skops trust."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.linear_model import LogisticRegression

from predq.demo import train_demo_model
from predq.push import push_model
from predq.shared.errors import IntegrityError, RegistryError
from predq.shared.registry.serialization import dump_estimator, load_estimator
from predq.shared.registry.store import Registry, sha256_file

X = pd.DataFrame({"a": np.linspace(-1, 1, 20), "b": np.linspace(1, 0, 20)})
Y = (X["a"] > 0).astype(int)
TREE = "sklearn.tree._tree.Tree"


class FromOldSklearn:
    """Unpickles the way a scikit-learn estimator saved by another version does."""

    def __init__(self) -> None:
        self.fitted_ = True  # pickle calls __setstate__ only for a non-empty state

    def predict(self, rows: Any) -> Any:
        return rows

    def __setstate__(self, state: dict[str, Any]) -> None:
        warnings.warn(
            InconsistentVersionWarning(
                estimator_name="FromOldSklearn",
                current_sklearn_version=sklearn.__version__,
                original_sklearn_version="0.24.2",
            ),
            stacklevel=2,
        )
        self.__dict__.update(state)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.joblib"
    dump_estimator(LogisticRegression().fit(X, Y), path, "joblib")
    return path


def test_joblib_round_trip_is_memory_mapped(saved: Path) -> None:
    assert saved.read_bytes()[:1] == b"\x80"  # dump_estimator writes uncompressed
    model = load_estimator(saved, fmt="joblib", expected_sha256=sha256_file(saved))
    assert isinstance(model.coef_, np.memmap) and model.coef_.mode == "r"
    assert model.predict(X).tolist() == Y.tolist()
    unmapped = load_estimator(saved, fmt="joblib", expected_sha256=None, mmap=False)
    assert not isinstance(unmapped.coef_, np.memmap)


def test_compressed_joblib_loads_without_mmap(tmp_path: Path) -> None:
    path = tmp_path / "compressed.joblib"
    joblib.dump(LogisticRegression().fit(X, Y), path, compress=("zlib", 3))
    model = load_estimator(path, fmt="joblib", expected_sha256=sha256_file(path))  # no warning
    assert model.predict(X).tolist() == Y.tolist()


def test_tampered_file_fails_integrity(saved: Path) -> None:
    expected = sha256_file(saved)
    saved.write_bytes(saved.read_bytes().replace(b"coef_", b"coeg_"))
    with pytest.raises(IntegrityError, match=rf"{saved.name} has sha256 .* manifest says"):
        load_estimator(saved, fmt="joblib", expected_sha256=expected)


def test_missing_file_fails_integrity(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="gone.joblib is missing"):
        load_estimator(tmp_path / "gone.joblib", fmt="joblib", expected_sha256="0" * 64)


def test_missing_file_without_hash_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        load_estimator(tmp_path / "gone.joblib", fmt="joblib", expected_sha256=None)


def test_inconsistent_sklearn_version_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "old.joblib"
    joblib.dump(FromOldSklearn(), path)
    with pytest.raises(RegistryError, match="scikit-learn 0.24.2") as info:
        load_estimator(path, fmt="joblib", expected_sha256=sha256_file(path))
    assert isinstance(info.value.__cause__, InconsistentVersionWarning)


def test_broken_file_is_a_registry_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.joblib"
    path.write_bytes(b"\x80\x05not a pickle at all")
    with pytest.raises(RegistryError, match="cannot load model file"):
        load_estimator(path, fmt="joblib", expected_sha256=None)


def test_unknown_format(saved: Path) -> None:
    with pytest.raises(RegistryError, match="unknown model format 'pickle'"):
        load_estimator(saved, fmt="pickle", expected_sha256=None)
    with pytest.raises(RegistryError, match="unknown model format"):
        dump_estimator(object(), saved, "pickle")


def test_skops_round_trip_needs_trusted_types(tmp_path: Path) -> None:
    model = train_demo_model()
    path = tmp_path / "iris.skops"
    dump_estimator(model, path, "skops")
    with pytest.raises(RegistryError, match=rf"not trusted: \['{TREE}'\]"):
        load_estimator(path, fmt="skops", expected_sha256=None)
    loaded = load_estimator(
        path, fmt="skops", expected_sha256=sha256_file(path), trusted_types=[TREE]
    )
    sample = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=list(model.feature_names_in_))
    assert loaded.predict(sample).tolist() == model.predict(sample).tolist() == ["setosa"]


def test_skops_push_keeps_file_and_trusted_types(tmp_path: Path) -> None:
    path = tmp_path / "iris.skops"
    dump_estimator(train_demo_model(), path, "skops")
    registry = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="--trusted-type"):
        push_model(registry, path, "iris")
    manifest = push_model(registry, path, "iris", trusted_types=[TREE])
    stored = registry.artifact_path(manifest)
    assert manifest.format == "skops" and stored.name == "model.skops"
    assert stored.read_bytes() == path.read_bytes()
    assert manifest.trusted_types == [TREE] and "skops" in manifest.library_versions
    model = load_estimator(
        stored,
        fmt=manifest.format,
        expected_sha256=manifest.sha256,
        trusted_types=manifest.trusted_types,
    )
    assert model.classes_.tolist() == ["setosa", "versicolor", "virginica"]


def test_skops_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.skops"
    path.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "skops.io", None)  # makes `import skops.io` fail
    with pytest.raises(RegistryError, match="skops is not installed"):
        load_estimator(path, fmt="skops", expected_sha256=None)
