"""Runtimes: chosen and verified at push, exact against scikit-learn, refused when they differ."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from predq.introspect import infer_manifest_fields
from predq.push import push_model
from predq.shared.errors import RegistryError
from predq.shared.registry import runtimes
from predq.shared.registry.runtimes import RuntimeRecord, TreeliteRuntime
from predq.shared.registry.store import Manifest, Registry


def _iris() -> tuple[pd.DataFrame, np.ndarray]:
    data = load_iris(as_frame=True)
    return data.data, np.asarray(data.target_names)[data.target]  # string labels


def _cancer() -> tuple[np.ndarray, np.ndarray]:
    return load_breast_cancer(return_X_y=True)


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    return load_diabetes(return_X_y=True)


def _with_nan(x: Any) -> Any:
    x = np.array(x, dtype=float)
    x[::5, 1] = np.nan
    return x


FAMILIES = {
    "rf-iris-frame": (lambda: RandomForestClassifier(20, random_state=0), _iris),
    "et-cancer": (lambda: ExtraTreesClassifier(20, random_state=0), _cancer),
    "rf-regressor": (lambda: RandomForestRegressor(20, random_state=0), _diabetes),
    "et-regressor": (lambda: ExtraTreesRegressor(20, random_state=0), _diabetes),
    "gb-binary": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
                  _cancer),
    "gb-multiclass": (lambda: GradientBoostingClassifier(n_estimators=10, random_state=0),
                      _iris),
    "gb-regressor": (lambda: GradientBoostingRegressor(n_estimators=20, random_state=0),
                     _diabetes),
    "hgb-binary": (lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
                   _cancer),
    "hgb-multiclass-nan": (lambda: HistGradientBoostingClassifier(max_iter=10, random_state=0),
                           lambda: (_with_nan(_iris()[0]), _iris()[1])),
    "hgb-regressor": (lambda: HistGradientBoostingRegressor(max_iter=20, random_state=0),
                      _diabetes),
    "pipeline-scaler-rf": (
        lambda: make_pipeline(StandardScaler(), RandomForestClassifier(20, random_state=0)),
        _cancer),
}


def _fields(model: Any, sample: pd.DataFrame | None = None) -> dict[str, Any]:
    return infer_manifest_fields(model, sample=sample, accepts_missing=None)


def _fresh_rows(x: Any, seed: int) -> Any:
    """Rows the verification never saw: the training rows, jittered."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(x, dtype=float)
    jitter = rng.normal(0, 0.2, arr.shape) * np.nanstd(arr, axis=0)
    out = arr + jitter
    return pd.DataFrame(out, columns=x.columns) if hasattr(x, "columns") else out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tree_ensembles_run_on_treelite_with_sklearns_exact_outputs(family: str) -> None:
    make, data = FAMILIES[family]
    x, y = data()
    model = make().fit(x, y)
    fields = _fields(model)
    record = runtimes.choose(model, fields, sample=None)
    assert record.name == "treelite", record.reason
    v = record.verification
    assert v is not None and v.passed and v.rows >= runtimes.GENERATED_ROWS
    assert v.max_abs_diff is not None and v.max_abs_diff <= 1e-9
    assert record.library_version == runtimes.treelite_version()
    assert [s.rows for s in record.speed] == list(runtimes.SPEED_ROWS)
    assert all(s.sklearn_ms > 0 and s.runtime_ms > 0 for s in record.speed)

    runtime = TreeliteRuntime(model)
    fresh = _fresh_rows(x, seed=1)
    if fields["task"] == "regression":
        np.testing.assert_allclose(runtime.predict(fresh), model.predict(fresh),
                                   rtol=0, atol=1e-9)
        return
    proba = runtime.predict_proba(fresh)
    labels = runtime.predict(fresh)  # the same frame: served from the same pass
    np.testing.assert_allclose(proba, model.predict_proba(fresh), rtol=0, atol=1e-9)
    assert labels.tolist() == model.predict(fresh).tolist()
    assert runtime.classes_.tolist() == model.classes_.tolist()
    # predict alone (no predict_proba before it) gives the same labels
    assert runtime.predict(fresh).tolist() == labels.tolist()


def test_a_model_that_is_no_tree_ensemble_keeps_sklearn_and_says_why() -> None:
    x, y = _iris()
    model = LogisticRegression(max_iter=500).fit(x, y)
    record = runtimes.choose(model, _fields(model), sample=None)
    assert record.name == "sklearn" and record.verification is None
    assert "LogisticRegression is not a tree ensemble" in (record.reason or "")
    with pytest.raises(runtimes.RuntimeRefused, match="cannot serve this model"):
        runtimes.choose(model, _fields(model), sample=None, requested="treelite")


@pytest.fixture
def off_by(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``off_by(d)``: treelite's scores come out ``d`` away from the truth."""

    def install(d: float) -> None:
        real = TreeliteRuntime._gtil

        def shifted(self: TreeliteRuntime, arr: Any, margin: bool) -> Any:
            return real(self, arr, margin) + d

        monkeypatch.setattr(TreeliteRuntime, "_gtil", shifted)

    return install


def test_an_accelerated_runtime_that_differs_is_not_used(off_by: Any) -> None:
    x, y = _cancer()
    model = RandomForestRegressor(10, random_state=0).fit(x, y)
    off_by(1e-7)
    record = runtimes.choose(model, _fields(model), sample=None)
    assert record.name == "sklearn"
    assert record.verification is not None and not record.verification.passed
    assert record.verification.max_abs_diff == pytest.approx(1e-7, rel=1e-3)
    assert "differs from scikit-learn by up to 1e-07" in (record.reason or "")
    # Asked for explicitly, without a tolerance: refused, and the error says how to accept it.
    with pytest.raises(runtimes.RuntimeRefused, match="--tolerance"):
        runtimes.choose(model, _fields(model), sample=None, requested="treelite")
    # With an explicit tolerance that covers the difference: used, and the tolerance recorded.
    record = runtimes.choose(model, _fields(model), sample=None, requested="treelite",
                             tolerance=1e-6)
    assert record.name == "treelite" and record.tolerance == 1e-6
    assert record.verification is not None and record.verification.passed
    assert "tolerance 1e-06 set by the operator" in record.summary()


def test_a_runtime_whose_labels_differ_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _iris()
    model = RandomForestClassifier(10, random_state=0).fit(x, y)
    real = TreeliteRuntime._decide

    def wrong(self: TreeliteRuntime, arr: Any) -> Any:
        idx, proba, near = real(self, arr)
        return (idx + 1) % self.n_classes, proba, near  # right probabilities, wrong labels

    monkeypatch.setattr(TreeliteRuntime, "_decide", wrong)
    record = runtimes.choose(model, _fields(model), sample=None, tolerance=1.0)
    assert record.name == "sklearn"
    assert record.verification is not None and record.verification.labels_equal is False
    assert "other labels than model.predict" in (record.reason or "")


def test_labels_at_a_tie_are_the_estimators_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two fully grown trees that disagree give probabilities of exactly 0.5: a tie. Nudge
    # treelite's second column by 1e-12 (well within the tolerance): argmax alone would now
    # pick the other class, but rows at a tie are left to the estimator.
    x, y = _cancer()
    model = RandomForestClassifier(2, random_state=3).fit(x, y)
    fresh = _fresh_rows(x, seed=2)
    assert (model.predict_proba(fresh)[:, 0] == 0.5).any(), "the test needs rows at a tie"
    real = TreeliteRuntime._gtil

    def nudged(self: TreeliteRuntime, arr: Any, margin: bool) -> Any:
        out = real(self, arr, margin).copy()
        out[:, 1] += 1e-12
        return out

    monkeypatch.setattr(TreeliteRuntime, "_gtil", nudged)
    runtime = TreeliteRuntime(model)
    assert runtime.near_ties(fresh).any()
    assert runtime.predict(fresh).tolist() == model.predict(fresh).tolist()
    np.testing.assert_allclose(runtime.predict_proba(fresh), model.predict_proba(fresh),
                               rtol=0, atol=1e-9)


def test_verification_uses_the_sample_and_generated_rows() -> None:
    x, y = _iris()
    model = RandomForestClassifier(10, random_state=0).fit(x, y)
    record = runtimes.choose(model, _fields(model, x), sample=x)
    assert record.verification is not None
    assert record.verification.source == "sample+generated"
    assert record.verification.rows == len(x) + runtimes.GENERATED_ROWS


def test_generated_rows_hit_the_split_thresholds() -> None:
    x, y = _cancer()
    model = RandomForestClassifier(5, random_state=0).fit(x, y)
    frame, source = runtimes.verification_frame(model, _fields(model), None)
    thresholds = {t for est in model.estimators_ for t in est.tree_.threshold.tolist()}
    assert source == "generated"
    assert np.isin(frame, list(thresholds)).sum() > 100


def test_the_record_reads_old_manifests_as_sklearn(tmp_path: Path) -> None:
    x, y = _iris()
    path = tmp_path / "m.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    registry = Registry(tmp_path / "reg")
    manifest = push_model(registry, path, "lr")
    raw = manifest.model_dump(mode="json")
    del raw["runtime"]
    old = Manifest.model_validate(raw)
    assert old.runtime == RuntimeRecord() and old.runtime.name == "sklearn"


def test_push_records_the_runtime_and_honours_the_override(tmp_path: Path) -> None:
    x, y = _iris()
    path = tmp_path / "rf.joblib"
    joblib.dump(RandomForestClassifier(10, random_state=0).fit(x, y), path)
    registry = Registry(tmp_path / "reg")
    auto = push_model(registry, path, "rf")
    assert auto.runtime.name == "treelite" and auto.runtime.requested == "auto"
    on_disk = registry.manifest("rf", auto.version)
    assert on_disk.runtime == auto.runtime
    forced = push_model(registry, path, "rf", runtime="sklearn")
    assert forced.runtime.name == "sklearn" and forced.runtime.requested == "sklearn"
    assert forced.runtime.reason == "requested by the operator"


def test_push_refuses_an_impossible_runtime_request(tmp_path: Path) -> None:
    x, y = _iris()
    path = tmp_path / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    registry = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="treelite cannot serve"):
        push_model(registry, path, "lr", runtime="treelite")
    assert registry.list_models() == []


def _manifest_with(registry: Registry, tmp_path: Path) -> tuple[Manifest, Any]:
    x, y = _iris()
    model = RandomForestClassifier(10, random_state=0).fit(x, y)
    path = tmp_path / "rf.joblib"
    joblib.dump(model, path)
    return push_model(registry, path, "rf"), model


def test_workers_build_the_recorded_runtime(tmp_path: Path) -> None:
    manifest, model = _manifest_with(Registry(tmp_path / "reg"), tmp_path)
    assert isinstance(runtimes.load(manifest, model), TreeliteRuntime)
    sk = manifest.model_copy(update={"runtime": RuntimeRecord(name="sklearn")})
    assert runtimes.load(sk, model) is model


def test_a_runtime_verified_with_another_treelite_falls_back_to_sklearn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, model = _manifest_with(Registry(tmp_path / "reg"), tmp_path)
    other = manifest.runtime.model_copy(update={"library_version": "0.0.1"})
    stale = manifest.model_copy(update={"runtime": other})
    with caplog.at_level(logging.WARNING, logger="predq.runtimes"):
        assert runtimes.load(stale, model) is model
    assert "verified with treelite 0.0.1" in caplog.text


def test_the_model_cache_serves_the_runtime(tmp_path: Path) -> None:
    from predq.worker.model_cache import ModelCache

    registry = Registry(tmp_path / "reg")
    manifest, model = _manifest_with(registry, tmp_path)
    cache = ModelCache(registry, size=2)
    got_manifest, runtime = cache.get("rf", manifest.version)
    assert got_manifest == manifest and isinstance(runtime, TreeliteRuntime)
    assert cache.get("rf", manifest.version)[1] is runtime  # built once, then shared


def test_a_tie_in_a_float_matrix_of_a_frame_fitted_model_is_decided_quietly(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker hands a bare ensemble a float matrix (wants_frame is False); the tie rows
    # go back to the estimator as a DataFrame with its names (no feature-names warning,
    # which the test suite turns into an error).
    data = load_breast_cancer(as_frame=True)
    model = RandomForestClassifier(2, random_state=3).fit(data.data, data.target)
    runtime = TreeliteRuntime(model)
    assert runtime.wants_frame is False
    fresh = _fresh_rows(data.data, seed=2)
    assert (model.predict_proba(fresh)[:, 0] == 0.5).any()
    monkeypatch.setattr(runtimes, "TIE_MARGIN", 1.0)  # every row goes back to sklearn
    assert runtime.predict(fresh.to_numpy()).tolist() == model.predict(fresh).tolist()


def test_a_pipeline_keeps_its_dataframe() -> None:
    x, y = _iris()
    pipe = make_pipeline(StandardScaler(), RandomForestClassifier(5, random_state=0)).fit(x, y)
    assert TreeliteRuntime(pipe).wants_frame is True


def test_predict_after_predict_proba_on_the_same_batch_is_one_pass(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _iris()
    runtime = TreeliteRuntime(RandomForestClassifier(5, random_state=0).fit(x, y))
    calls = []
    real = TreeliteRuntime._gtil
    monkeypatch.setattr(TreeliteRuntime, "_gtil",
                        lambda self, arr, margin: calls.append(1) or real(self, arr, margin))
    batch = x.to_numpy()[:10]
    runtime.predict_proba(batch)
    runtime.predict(batch)
    assert len(calls) == 1
    runtime.predict(batch)  # the shared pass is used once only
    runtime.predict(batch.copy())
    assert len(calls) == 3
