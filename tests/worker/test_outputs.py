"""Outputs are right for any legal model (issue 13, "Outputs must be right for any legal
model"): class names of any text, labels exactly as the model's own ``predict``, and column
dtypes that do not depend on the other jobs of a batch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from predq.shared.jobstore import codec
from predq.shared.registry.schema import ModelSchema
from predq.shared.registry.store import Feature, Manifest
from predq.worker import outputs as render
from predq.worker.predict import Job, predict_jobs

#: Class names that broke the bytes template or could: format directives, quotes,
#: backslashes, control characters, unicode, a 300-character name.
NASTY_CLASSES = ["50%", "%s", "%%", "%b", 'say "hi"', "back\\slash", "tab\there",
                 "é ✓ 日本 🙂", "x" * 300]


def manifest_for(features: list[Feature], *, classes: list[Any] | None = None,
                 task: str = "classification", proba: bool = True, named: bool = True,
                 accepts_missing: bool = False) -> Manifest:
    return Manifest(name="m", version="1", format="joblib", artifact="model.joblib",
                    sha256="0" * 64, size_bytes=0, task=task, estimator="x",
                    features=features, named_features=named, classes=classes,
                    has_predict_proba=proba, accepts_missing=accepts_missing,
                    created_at=datetime.now(UTC), library_versions={})


def jobs_of(manifest: Manifest, *row_sets: list[dict[str, Any]]
            ) -> list[tuple[Job, dict[str, np.ndarray]]]:
    schema = ModelSchema(manifest, max_rows=1000, max_string=1000, max_metadata_bytes=100)
    out = []
    for i, rows in enumerate(row_sets):
        parsed = schema.parse({"inputs": rows}, allow_webhook=False)
        n, cols = codec.decode(parsed.inputs)
        out.append((Job(f"j{i}", "m", "1", n, parsed.inputs, b""), cols))
    return out


# -- class names ---------------------------------------------------------------------------


def test_proba_rows_round_trip_any_class_name() -> None:
    proba = np.full((2, len(NASTY_CLASSES)), 1 / len(NASTY_CLASSES))
    labels = np.array([NASTY_CLASSES[0], NASTY_CLASSES[-1]], dtype=object)
    rows = [orjson.loads(r) for r in render.proba_rows(labels, proba, NASTY_CLASSES)]
    assert [r["label"] for r in rows] == [NASTY_CLASSES[0], NASTY_CLASSES[-1]]
    for r in rows:
        assert list(r["probabilities"]) == NASTY_CLASSES
        assert list(r["probabilities"].values()) == proba[0].tolist()


def test_label_rows_round_trip_any_class_name() -> None:
    labels = np.array(NASTY_CLASSES, dtype=object)
    assert [orjson.loads(r)["label"] for r in render.label_rows(labels)] == NASTY_CLASSES


def test_a_classifier_with_nasty_class_names_predicts() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(NASTY_CLASSES) * 10, 2))
    y = np.array(NASTY_CLASSES * 10, dtype=object)
    model = LogisticRegression(max_iter=200).fit(pd.DataFrame(x, columns=["a", "b"]), y)
    manifest = manifest_for([Feature(name="a", type="number", required=True),
                             Feature(name="b", type="number", required=True)],
                            classes=list(model.classes_))
    rows = [{"a": float(a), "b": float(b)} for a, b in x[:20]]
    (out,) = predict_jobs(manifest, model, jobs_of(manifest, rows), 7)
    got = orjson.loads(out)
    expected = model.predict(pd.DataFrame(x[:20], columns=["a", "b"])).tolist()
    assert [g["label"] for g in got] == expected
    assert all(list(g["probabilities"]) == [str(c) for c in model.classes_] for g in got)


# -- labels are predict's -------------------------------------------------------------------


def tied_hgb() -> tuple[HistGradientBoostingClassifier, pd.DataFrame]:
    """A real binary HistGradientBoosting whose raw score is 1e-17 for every row: its
    probabilities are exactly [0.5, 0.5] (argmax: the first class) while its ``predict``
    (raw > 0) says the second class."""
    x = pd.DataFrame({"a": np.arange(40.0)})
    y = np.array(["no", "yes"] * 20)
    model = HistGradientBoostingClassifier(max_iter=2).fit(x, y)
    for trees in model._predictors:
        for tree in trees:
            tree.nodes["value"] = 0.0
    model._baseline_prediction = np.full_like(model._baseline_prediction, 1e-17)
    proba = model.predict_proba(x)
    assert (proba == 0.5).all()
    assert (model.predict(x) == "yes").all()
    assert (model.classes_.take(proba.argmax(axis=1)) == "no").all()
    return model, x


def test_binary_hgb_label_at_p_one_half_is_what_predict_returns() -> None:
    model, x = tied_hgb()
    manifest = manifest_for([Feature(name="a", type="number", required=True)],
                            classes=["no", "yes"])
    rows = [{"a": float(v)} for v in x["a"]]
    (out,) = predict_jobs(manifest, model, jobs_of(manifest, rows), 16)
    got = orjson.loads(out)
    assert [g["label"] for g in got] == model.predict(x).tolist() == ["yes"] * 40
    assert all(g["probabilities"] == {"no": 0.5, "yes": 0.5} for g in got)


class DisagreeingHGB(HistGradientBoostingClassifier):
    """predict_proba ties on even rows; predict says the second class there, and records
    how many rows it was asked about."""

    asked: list[int]

    def predict_proba(self, X: Any) -> np.ndarray:
        a = np.asarray(X["a"], dtype=float)
        p = np.where(a % 2 == 0, 0.5, np.where(a > 50, 0.9, 0.1))
        return np.column_stack([1 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        self.asked.append(len(X))
        a = np.asarray(X["a"], dtype=float)
        return self.classes_.take(np.where(a % 2 == 0, 1, (a > 50).astype(int)))


def test_tied_rows_only_are_asked_of_predict() -> None:
    model = DisagreeingHGB(max_iter=1).fit(pd.DataFrame({"a": [0.0, 1.0]}), [0, 1])
    manifest = manifest_for([Feature(name="a", type="number", required=True)], classes=[0, 1])
    rows = [{"a": float(v)} for v in range(100)]
    model.asked = []
    expected = model.predict(pd.DataFrame({"a": np.arange(100.0)})).tolist()
    model.asked = []
    outs = predict_jobs(manifest, model, jobs_of(manifest, rows[:30], rows[30:]), 1000)
    got = [g["label"] for o in outs for g in orjson.loads(o)]
    assert got == expected
    assert model.asked == [50]  # one vectorized call, for the 50 tied rows only


def test_untied_forest_never_calls_predict() -> None:
    x = pd.DataFrame({"a": np.arange(20.0)})
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, np.arange(20) % 2)
    calls = []
    original = model.predict
    model.predict = lambda X: calls.append(len(X)) or original(X)  # type: ignore[method-assign]
    manifest = manifest_for([Feature(name="a", type="number", required=True)], classes=[0, 1])
    rows = [{"a": float(v) + 0.25} for v in range(20)]
    (out,) = predict_jobs(manifest, model, jobs_of(manifest, rows), 1000)
    proba = model.predict_proba(pd.DataFrame(rows))
    tied = int((np.abs(proba[:, 0] - proba[:, 1]) <= 1e-9).sum())
    assert [g["label"] for g in orjson.loads(out)] == original(pd.DataFrame(rows)).tolist()
    assert calls == ([tied] if tied else [])


# -- dtypes do not depend on the batch ----------------------------------------------------


class Recorder:
    """A regressor that records the frame it is given and returns column "n" as float."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self.frames.append(X.copy())
        return np.zeros(len(X))


BIG = 2**53 + 1


@pytest.mark.parametrize("accepts_missing", [True, False])
def test_a_column_dtype_does_not_depend_on_the_other_jobs(accepts_missing: bool) -> None:
    features = [Feature(name="n", type="integer", required=False),
                Feature(name="b", type="boolean", required=False),
                Feature(name="x", type="number", required=False)]
    manifest = manifest_for(features, task="regression", proba=False,
                            accepts_missing=accepts_missing)
    full = [{"n": BIG, "b": True, "x": 1.5}, {"n": -(2**63), "b": False, "x": 2.0}]
    holes = [{"n": 7, "b": None, "x": None} if accepts_missing else {"n": 7}, {"b": True}]
    rec = Recorder()
    predict_jobs(manifest, rec, jobs_of(manifest, full), 100)
    predict_jobs(manifest, rec, jobs_of(manifest, full, holes), 100)
    predict_jobs(manifest, rec, jobs_of(manifest, holes), 100)
    alone, together, holes_alone = rec.frames
    assert dict(alone.dtypes) == dict(together.dtypes) == dict(holes_alone.dtypes)
    assert str(together.dtypes["n"]) == "Int64" and str(together.dtypes["b"]) == "boolean"
    assert together["n"].tolist()[:3] == [BIG, -(2**63), 7]  # exact beyond 2**53
    assert together["n"].isna().tolist() == [False, False, False, True]
    assert together["b"].tolist()[:2] == [True, False]
    assert together["b"].isna().tolist() == [False, False, True, False]
    assert alone["n"].tolist() == [BIG, -(2**63)]


def test_required_integers_stay_int64_in_any_batch() -> None:
    manifest = manifest_for([Feature(name="n", type="integer", required=True)],
                            task="regression", proba=False)
    rec = Recorder()
    predict_jobs(manifest, rec, jobs_of(manifest, [{"n": BIG}], [{"n": 3}]), 100)
    assert rec.frames[0]["n"].dtype == np.int64 and rec.frames[0]["n"].tolist() == [BIG, 3]


def test_a_float_matrix_model_gets_nan_for_missing_integers() -> None:
    manifest = manifest_for([Feature(name="n", type="integer", required=False),
                             Feature(name="b", type="boolean", required=False)],
                            task="regression", proba=False, named=False)
    seen: list[np.ndarray] = []

    class M:
        def predict(self, X: np.ndarray) -> np.ndarray:
            seen.append(X)
            return np.zeros(len(X))

    predict_jobs(manifest, M(), jobs_of(manifest, [{"n": 5, "b": True}], [{"b": False}]), 100)
    assert seen[0].dtype == np.float64
    assert seen[0][0].tolist() == [5.0, 1.0]
    assert np.isnan(seen[0][1, 0]) and seen[0][1, 1] == 0.0
