"""Schema inference from fitted estimators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from predq.demo import train_mixed_pipeline
from predq.introspect import infer_manifest_fields, read_sample_csv
from predq.shared.errors import RegistryError, UnsupportedModel
from predq.shared.registry.store import Feature

RNG = np.random.RandomState(0)
X_NUM = RNG.normal(size=(60, 3))
Y_BIN = (X_NUM[:, 0] > 0).astype(int)


def infer(estimator: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sample", None)
    kwargs.setdefault("accepts_missing", None)
    return infer_manifest_fields(estimator, **kwargs)


def by_name(fields: dict[str, Any]) -> dict[str, Feature]:
    return {f.name: f for f in fields["features"]}


def test_numpy_fitted_estimator_gets_positional_names() -> None:
    fields = infer(LogisticRegression().fit(X_NUM, Y_BIN))
    assert [f.name for f in fields["features"]] == ["f0", "f1", "f2"]
    assert fields["named_features"] is False
    assert all(f.type == "number" and f.categories is None for f in fields["features"])
    assert fields["task"] == "classification"
    assert fields["classes"] == [0, 1] and all(type(c) is int for c in fields["classes"])
    assert fields["has_predict_proba"] is True
    assert fields["accepts_missing"] is False
    assert all(f.required for f in fields["features"])
    assert fields["estimator"] == "sklearn.linear_model._logistic.LogisticRegression"


def test_dataframe_fitted_estimator_keeps_column_names() -> None:
    X = pd.DataFrame(X_NUM, columns=["age", "income", "tenure"])
    fields = infer(RandomForestClassifier(n_estimators=5, random_state=0).fit(X, Y_BIN == 1))
    assert [f.name for f in fields["features"]] == ["age", "income", "tenure"]
    assert fields["named_features"] is True
    assert fields["classes"] == [False, True]
    assert all(type(c) is bool for c in fields["classes"])


def test_column_transformer_categories_and_unknowns() -> None:
    features = by_name(infer(train_mixed_pipeline()))
    assert list(features) == ["color", "size", "x1", "x2"]
    assert features["color"] == Feature(
        name="color",
        type="string",
        required=True,
        categories=["blue", "green", "red"],
        allow_unknown=False,
    )
    assert features["size"].categories == ["L", "M", "S"]
    assert features["x1"].type == "number" and features["x1"].categories is None
    assert features["x1"].allow_unknown is True


@pytest.mark.parametrize(
    ("encoder", "allow_unknown"),
    [
        (OneHotEncoder(handle_unknown="ignore"), True),
        (OneHotEncoder(handle_unknown="infrequent_if_exist"), True),
        (OneHotEncoder(handle_unknown="error"), False),
        (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), True),
        (OrdinalEncoder(), False),
    ],
)
def test_encoder_handle_unknown(encoder: Any, allow_unknown: bool) -> None:
    X = pd.DataFrame({"city": ["paris", "rome", "oslo"] * 10, "n": range(30)})
    y = np.arange(30) % 2
    pre = ColumnTransformer([("cat", encoder, ["city"])], remainder="passthrough")
    features = by_name(infer(make_pipeline(pre, LogisticRegression()).fit(X, y)))
    assert features["city"].categories == ["oslo", "paris", "rome"]
    assert features["city"].allow_unknown is allow_unknown
    assert features["n"].categories is None


def test_integer_categories_and_nested_pipelines_and_missing_category() -> None:
    X = pd.DataFrame(
        {"grade": [1, 2, 3] * 10, "shop": ["a", "b", None] * 10, "x": np.linspace(0, 1, 30)}
    )
    pre = ColumnTransformer(
        [
            ("grade", OneHotEncoder(), ["grade"]),
            ("shop", make_pipeline(OneHotEncoder(handle_unknown="ignore")), [1]),
            ("x", StandardScaler(), slice(2, 3)),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(X, np.arange(30) % 2)
    features = by_name(infer(model))
    assert features["grade"].type == "integer" and features["grade"].categories == [1, 2, 3]
    assert features["shop"].type == "string" and features["shop"].categories == ["a", "b"]
    assert features["shop"].allow_unknown is True
    assert features["x"].type == "number"


def test_encoder_as_first_pipeline_step() -> None:
    X = pd.DataFrame({"flag": [True, False] * 10})
    model = make_pipeline(OrdinalEncoder(), LogisticRegression()).fit(X, [0, 1] * 10)
    feature = by_name(infer(model))["flag"]
    assert feature.type == "boolean" and feature.categories == [False, True]


def test_regressor_with_nan_support() -> None:
    X = pd.DataFrame(X_NUM, columns=["a", "b", "c"])
    fields = infer(HistGradientBoostingRegressor(max_iter=5).fit(X, X_NUM[:, 1]))
    assert fields["task"] == "regression"
    assert fields["classes"] is None and fields["has_predict_proba"] is False
    assert fields["accepts_missing"] is True
    assert not any(f.required for f in fields["features"])


def test_explicit_accepts_missing_wins() -> None:
    model = HistGradientBoostingClassifier(max_iter=5).fit(X_NUM, Y_BIN)
    fields = infer(model, accepts_missing=False)
    assert fields["accepts_missing"] is False
    assert all(f.required for f in fields["features"])
    fields = infer(LogisticRegression().fit(X_NUM, Y_BIN), accepts_missing=True)
    assert fields["accepts_missing"] is True


def test_pipeline_accepts_missing_only_when_every_step_does() -> None:
    scaled_linear = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_NUM, Y_BIN)
    scaled_hgb = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=5))
    assert infer(scaled_linear)["accepts_missing"] is False
    assert infer(scaled_hgb.fit(X_NUM, Y_BIN))["accepts_missing"] is True


def test_sample_dtypes(tmp_path: Path) -> None:
    X = pd.DataFrame(
        {
            "count": [1, 2, 3, 4] * 5,
            "ratio": np.linspace(0, 1, 20),
            "active": [True, False] * 10,
            "plan": ["free", "pro"] * 10,
        }
    )
    pre = ColumnTransformer(
        [("plan", OneHotEncoder(), ["plan"])], remainder="passthrough", sparse_threshold=0
    )
    model = make_pipeline(pre, LogisticRegression()).fit(X, [0, 1, 1, 0] * 5)
    csv = tmp_path / "sample.csv"
    X.to_csv(csv, index=False)
    types = {f.name: f.type for f in infer(model, sample=read_sample_csv(csv))["features"]}
    assert types == {"count": "integer", "ratio": "number", "active": "boolean", "plan": "string"}
    assert by_name(infer(model))["count"].type == "number"  # no sample: numbers


def test_sample_types_by_position_for_unnamed_models() -> None:
    model = LogisticRegression().fit(X_NUM, Y_BIN)
    sample = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.0], "c": ["x", "y"]})
    types = [f.type for f in infer(model, sample=sample)["features"]]
    assert types == ["integer", "number", "string"]
    with pytest.raises(RegistryError, match="3 unnamed features"):
        infer(model, sample=sample[["a", "b"]])


def test_sample_missing_a_column_is_an_error() -> None:
    X = pd.DataFrame(X_NUM, columns=["a", "b", "c"])
    model = LogisticRegression().fit(X, Y_BIN)
    with pytest.raises(RegistryError, match=r"lacks the model's columns \['c'\]"):
        infer(model, sample=X[["a", "b"]])


def test_read_sample_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read sample CSV"):
        read_sample_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: StandardScaler().fit(X_NUM), "no predict method"),
        (lambda: KMeans(n_clusters=2, n_init=1, random_state=0).fit(X_NUM), "neither"),
        (lambda: LogisticRegression(), "not fitted"),
        (lambda: RandomForestRegressor(n_estimators=2).fit(X_NUM, X_NUM[:, :2]), "several"),
        (lambda: MultiOutputRegressor(LinearRegression()).fit(X_NUM, X_NUM[:, :2]), "several"),
        (lambda: LinearRegression().fit(X_NUM, X_NUM[:, :2]), "several"),
        (
            lambda: RandomForestClassifier(n_estimators=2).fit(X_NUM, np.c_[Y_BIN, 1 - Y_BIN]),
            "several",
        ),
    ],
)
def test_unsupported_models(make: Any, match: str) -> None:
    with pytest.raises(UnsupportedModel, match=match):
        infer(make())


def test_single_target_linear_regression_is_supported() -> None:
    fields = infer(LinearRegression().fit(X_NUM, X_NUM[:, 1]))
    assert fields["task"] == "regression"


def test_library_versions() -> None:
    versions = infer(LogisticRegression().fit(X_NUM, Y_BIN))["library_versions"]
    assert {"python", "sklearn", "numpy", "joblib", "pandas", "predq"} <= set(versions)
    assert all(isinstance(v, str) and v for v in versions.values())


# -- a sample that contradicts the model (issue: "A dirty --sample silently changes the schema")


def _numeric_model() -> Any:
    X = pd.DataFrame({"age": [20, 30, 40, 50, 60, 70], "score": [0.1, 0.5, 0.2, 0.9, 0.3, 0.4]})
    return LogisticRegression().fit(X, [0, 1, 0, 1, 0, 1])


DIRTY_CSV = "age,score\n20,0.1\n30,0.5\nabc,0.2\n50,0.9\n60,0.3\n70,0.4\n"


def test_a_dirty_sample_column_is_refused_naming_its_rows(tmp_path: Path) -> None:
    csv = tmp_path / "dirty.csv"
    csv.write_text(DIRTY_CSV)
    with pytest.raises(RegistryError) as ei:
        infer(_numeric_model(), sample=read_sample_csv(csv))
    message = str(ei.value)
    assert "column 'age' holds numbers except at line 4 ('abc')" in message
    assert "--drop-bad-sample-rows" in message


def test_drop_bad_sample_rows_types_the_column_from_the_rest(tmp_path: Path) -> None:
    csv = tmp_path / "dirty.csv"
    csv.write_text(DIRTY_CSV)
    notes: list[str] = []
    fields = infer(_numeric_model(), sample=read_sample_csv(csv), drop_bad_sample_rows=True,
                   note=notes.append)
    assert by_name(fields)["age"].type == "integer"
    assert by_name(fields)["score"].type == "number"
    assert notes == ["dropped 1 of 6 sample rows: column 'age' holds numbers except at line 4 "
                     "('abc')"]


def test_a_string_column_the_model_cannot_take_is_warned_about() -> None:
    sample = pd.DataFrame({"age": ["young", "old"], "score": [0.1, 0.2]})
    notes: list[str] = []
    fields = infer(_numeric_model(), sample=sample, note=notes.append)
    assert by_name(fields)["age"].type == "string"  # all strings: not a dirty column
    assert len(notes) == 1 and "could not predict on the sample" in notes[0], notes


def test_a_string_column_an_encoder_receives_is_not_dirty() -> None:
    X = pd.DataFrame({"plan": ["1", "2", "x"] * 4, "n": list(range(12))})
    pre = ColumnTransformer([("plan", OneHotEncoder(), ["plan"])], remainder="passthrough")
    model = make_pipeline(pre, LogisticRegression()).fit(X, [0, 1] * 6)
    notes: list[str] = []
    fields = infer(model, sample=X, note=notes.append)
    assert by_name(fields)["plan"].categories == ["1", "2", "x"] and notes == []


def test_examples_are_real_sample_values_or_known_categories(tmp_path: Path) -> None:
    X = pd.DataFrame({"count": [1, 5, 3, 9, 7], "ratio": [0.5, 0.1, 0.9, 0.3, 0.7],
                      "plan": ["pro", "free", "pro", "pro", "free"]})
    pre = ColumnTransformer([("plan", OneHotEncoder(), ["plan"])], remainder="passthrough")
    model = make_pipeline(pre, LogisticRegression()).fit(X, [0, 1, 1, 0, 1])
    csv = tmp_path / "sample.csv"
    X.to_csv(csv, index=False)
    f = by_name(infer(model, sample=read_sample_csv(csv)))
    assert (f["count"].example, f["ratio"].example, f["plan"].example) == (5, 0.5, "pro")
    assert type(f["count"].example) is int
    no_sample = by_name(infer(model))
    assert no_sample["count"].example is None and no_sample["plan"].example is None
