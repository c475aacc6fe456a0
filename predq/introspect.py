"""Schema inference: what a fitted estimator expects and returns, read from the estimator.

:func:`infer_manifest_fields` gives the model-dependent fields of a
:class:`predq.shared.registry.manifest.Manifest`. Nobody writes a schema by hand: feature names
come from
``feature_names_in_`` (or ``n_features_in_``), categories from fitted encoders, column types
from a sample's dtypes. Only the registry's push (an operator action) imports this module;
it imports sklearn, numpy and pandas.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder
from sklearn.utils.validation import check_is_fitted

from predq.shared.errors import RegistryError, UnsupportedModel
from predq.shared.registry.manifest import Feature, FeatureType

# handle_unknown values with which an encoder accepts a category it never saw.
_LENIENT = frozenset({"ignore", "infrequent_if_exist", "use_encoded_value", "warn"})
_MULTI_OUTPUT = frozenset(
    {"MultiOutputClassifier", "MultiOutputRegressor", "ClassifierChain", "RegressorChain"}
)
_LIBRARIES = {
    "sklearn": "scikit-learn",
    "numpy": "numpy",
    "joblib": "joblib",
    "pandas": "pandas",
    "skops": "skops",
}


def infer_manifest_fields(
    estimator: Any,
    *,
    sample: pd.DataFrame | None,
    accepts_missing: bool | None,
    drop_bad_sample_rows: bool = False,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The model-dependent manifest fields of a fitted ``estimator``.

    Keys: task, estimator, features (:class:`Feature`), named_features, classes,
    has_predict_proba, accepts_missing, library_versions. ``sample`` (e.g. a CSV of training
    rows) gives the types of columns no encoder describes, and each feature's ``example``
    (a real value of the sample: the median, or the most frequent category); ``accepts_missing``
    overrides the estimator's ``allow_nan`` tag. Raises :class:`UnsupportedModel` for an
    estimator predq cannot serve, and :class:`RegistryError` when ``sample`` lacks a feature
    or contradicts the model (see :func:`_check_sample`; ``drop_bad_sample_rows`` drops the
    offending rows instead, and tells ``note``).
    """
    task = _task(estimator)
    names, named = _feature_names(estimator)
    if accepts_missing is None:
        accepts_missing = _allow_nan(estimator)
    encoded = dict(_encoded_columns(estimator, names))
    columns = _sample_columns(sample, names, named)
    if columns is not None:
        columns = _check_sample(columns, encoded, drop_bad_sample_rows, note)
        _check_predicts(estimator, columns, named, note)
    types = {n: _dtype_type(s.dtype) for n, s in (columns or {}).items()}
    features = []
    for name in names:
        categories, allow_unknown = encoded.get(name, (None, True))
        type_ = _categories_type(categories) if categories is not None else types.get(name)
        type_ = type_ or "number"
        features.append(
            Feature(
                name=name,
                type=type_,
                required=not accepts_missing,
                categories=categories,
                allow_unknown=allow_unknown,
                example=_example(columns.get(name) if columns else None, type_, categories),
            )
        )
    classes = None
    if task == "classification":
        classes = [_plain(c) for c in np.asarray(estimator.classes_).tolist()]
    cls = type(estimator)
    return {
        "task": task,
        "estimator": f"{cls.__module__}.{cls.__qualname__}",
        "features": features,
        "named_features": named,
        "classes": classes,
        "has_predict_proba": task == "classification" and hasattr(estimator, "predict_proba"),
        "accepts_missing": accepts_missing,
        "library_versions": library_versions(),
    }


def read_sample_csv(path: Path) -> pd.DataFrame:
    """A sample CSV as a DataFrame, its dtypes inferred by pandas."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read sample CSV {path}: {e}") from e


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries a model file depends on (skops when installed)."""
    versions = {"python": platform.python_version()}
    for key, dist in _LIBRARIES.items():
        try:
            versions[key] = version(dist)
        except PackageNotFoundError:
            continue
    try:
        versions["predq"] = version("predq")
    except PackageNotFoundError:
        versions["predq"] = "0+unknown"
    return versions


def _task(estimator: Any) -> str:
    name = type(estimator).__name__
    if not callable(getattr(estimator, "predict", None)):
        raise UnsupportedModel(f"{name} has no predict method: predq serves predictors only")
    try:
        check_is_fitted(estimator)
    except NotFittedError as e:
        raise UnsupportedModel(f"{name} is not fitted: fit it before pushing it") from e
    except TypeError:
        pass  # not a scikit-learn estimator: the checks below decide
    final = _final_step(estimator)
    if type(final).__name__ in _MULTI_OUTPUT or getattr(final, "n_outputs_", 1) > 1:
        raise UnsupportedModel(f"{name} predicts several outputs: predq serves one target")
    if is_classifier(estimator):
        if isinstance(getattr(estimator, "classes_", None), list):
            raise UnsupportedModel(f"{name} is a multi-output classifier: not supported")
        return "classification"
    if is_regressor(estimator):
        if np.ndim(getattr(final, "coef_", 0)) > 1 and np.shape(final.coef_)[0] > 1:
            raise UnsupportedModel(f"{name} predicts several targets: predq serves one")
        return "regression"
    raise UnsupportedModel(
        f"{name} is neither a classifier nor a regressor (clusterers and outlier detectors "
        "are not supported)"
    )


def _feature_names(estimator: Any) -> tuple[list[str], bool]:
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names], True
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise UnsupportedModel(
            f"{type(estimator).__name__} does not say how many features it takes "
            "(no feature_names_in_ or n_features_in_)"
        )
    return [f"f{i}" for i in range(int(n))], False


def _allow_nan(estimator: Any) -> bool:
    """Whether the estimator accepts NaN, by scikit-learn's ``allow_nan`` input tag.

    A Pipeline accepts NaN when every step does (its own tag is always False, and its first
    step alone says nothing: StandardScaler passes NaN on to a LogisticRegression that fails).
    """
    if isinstance(estimator, Pipeline):
        steps = [s for _, s in estimator.steps if s is not None and s != "passthrough"]
        return all(_allow_nan(step) for step in steps)
    try:
        from sklearn.utils import get_tags
    except ImportError:  # scikit-learn < 1.6
        get_old_tags: Any = getattr(estimator, "_get_tags", dict)
        return bool(get_old_tags().get("allow_nan", False))
    try:
        return bool(get_tags(estimator).input_tags.allow_nan)
    except (AttributeError, TypeError, ValueError):
        return False


def _final_step(estimator: Any) -> Any:
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def _first_step(estimator: Any) -> Any:
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[0][1]
    return estimator


def _encoded_columns(
    estimator: Any, names: list[str]
) -> Iterator[tuple[str, tuple[list[Any], bool]]]:
    """(column, (categories, allow_unknown)) of the columns a fitted encoder receives raw."""
    first = _first_step(estimator)
    if isinstance(first, OneHotEncoder | OrdinalEncoder):
        transformers: Sequence[tuple[str, Any, Any]] = [("", first, list(range(len(names))))]
    elif isinstance(first, ColumnTransformer) and hasattr(first, "transformers_"):
        transformers = first.transformers_
    else:
        return
    for _, transformer, columns in transformers:
        encoder = _first_step(transformer)
        if not isinstance(encoder, OneHotEncoder | OrdinalEncoder):
            continue
        cols = _column_names(columns, names)
        categories = getattr(encoder, "categories_", None)
        if cols is None or categories is None or len(categories) != len(cols):
            continue
        allow_unknown = encoder.handle_unknown in _LENIENT
        for col, cats in zip(cols, categories, strict=True):
            yield col, ([_plain(c) for c in cats.tolist() if not _is_missing(c)], allow_unknown)


def _column_names(columns: Any, names: list[str]) -> list[str] | None:
    """The feature names a ColumnTransformer column spec selects, or None if unknown."""
    if isinstance(columns, str | int | np.integer):
        columns = [columns]
    if isinstance(columns, slice):
        if isinstance(columns.start, str) or isinstance(columns.stop, str):
            start = names.index(columns.start) if columns.start is not None else 0
            stop = names.index(columns.stop) + 1 if columns.stop is not None else len(names)
            return names[start:stop]
        return names[columns]
    try:
        items = list(columns)
    except TypeError:
        return None
    if items and all(isinstance(c, bool | np.bool_) for c in items):
        return [n for n, keep in zip(names, items, strict=True) if keep]
    out = []
    for c in items:
        if isinstance(c, str) and c in names:
            out.append(c)
        elif isinstance(c, int | np.integer) and -len(names) <= c < len(names):
            out.append(names[int(c)])
        else:
            return None
    return out


def _sample_columns(
    sample: pd.DataFrame | None, names: list[str], named: bool
) -> dict[str, pd.Series] | None:
    """The sample's column of each feature (by name, or by position for unnamed models)."""
    if sample is None:
        return None
    if named:
        missing = [n for n in names if n not in sample.columns]
        if missing:
            raise RegistryError(f"the sample CSV lacks the model's columns {missing}")
        return {n: sample[n] for n in names}
    if len(sample.columns) != len(names):
        raise RegistryError(
            f"the model takes {len(names)} unnamed features, "
            f"the sample CSV has {len(sample.columns)} columns"
        )
    return {n: sample.iloc[:, i] for i, n in enumerate(names)}


#: How many offending rows a push message lists per column.
_MAX_LISTED_ROWS = 10


def _check_sample(
    columns: dict[str, pd.Series],
    encoded: dict[str, tuple[list[Any], bool]],
    drop_bad_rows: bool,
    note: Callable[[str], None] | None,
) -> dict[str, pd.Series]:
    """Refuse a sample whose dtypes contradict what the fitted model can take.

    A column no encoder receives goes to numeric transformers or the estimator itself, so a
    column of numbers with a few non-numbers (``abc`` in an integer column) is a dirty sample,
    not a string feature: typed ``string`` from it, the API would refuse ``3``, accept ``"3"``
    and ``"abc"``, and the model would fail on them. Raises :class:`RegistryError` naming each
    such column and its rows (CSV line numbers); with ``drop_bad_rows`` those rows are dropped
    and the columns typed from the rest.
    """
    bad_rows: dict[str, pd.Series] = {}
    for name, col in columns.items():
        if name in encoded or not (pd.api.types.is_object_dtype(col.dtype)
                                   or pd.api.types.is_string_dtype(col.dtype)):
            continue
        present = col.notna()
        numeric = pd.to_numeric(col, errors="coerce")
        bad = present & numeric.isna()
        if bad.any() and (present & ~bad).any():
            bad_rows[name] = bad
    if not bad_rows:
        return columns
    problems = []
    for name, bad in bad_rows.items():
        positions = [i for i, b in enumerate(bad.to_numpy()) if b]
        shown = ", ".join(f"line {i + 2} ({columns[name].iloc[i]!r})"
                          for i in positions[:_MAX_LISTED_ROWS])
        more = f" and {len(positions) - _MAX_LISTED_ROWS} more" if len(
            positions) > _MAX_LISTED_ROWS else ""
        problems.append(f"column {name!r} holds numbers except at {shown}{more}")
    what = "; ".join(problems)
    if not drop_bad_rows:
        raise RegistryError(
            f"the sample CSV contradicts the model: {what}. The model takes numbers there "
            "(no encoder receives these columns), so typing them as strings would make the API "
            "accept rows the model cannot predict on. Fix the sample, or pass "
            "--drop-bad-sample-rows to drop those rows and type the columns from the rest."
        )
    keep = ~np.logical_or.reduce([b.to_numpy() for b in bad_rows.values()])
    out = {n: c[keep].reset_index(drop=True) for n, c in columns.items()}
    for name in bad_rows:
        out[name] = pd.to_numeric(out[name])
    if note is not None:
        note(f"dropped {int((~keep).sum())} of {len(keep)} sample rows: {what}")
    return out


def _check_predicts(estimator: Any, columns: dict[str, pd.Series], named: bool,
                    note: Callable[[str], None] | None) -> None:
    """Tell ``note`` when the model cannot predict on the sample's first rows."""
    if note is None or not columns:
        return
    frame = pd.DataFrame({n: c.head(5).reset_index(drop=True) for n, c in columns.items()})
    frame = frame.dropna()
    if frame.empty:
        return
    try:
        estimator.predict(frame if named else frame.to_numpy())
    except Exception as e:
        note(f"warning: the model could not predict on the sample's first rows "
             f"({type(e).__name__}: {str(e)[:300]}); check the sample's column types")


def _example(col: pd.Series | None, type_: FeatureType, categories: list[Any] | None) -> Any:
    """A real value of the feature for documentation: the sample's median or most frequent
    value (a category the encoder knows, for an encoded column); None without a sample."""
    if col is None:
        # predq.shared.registry.schema.example_row falls back to a known category or a zero
        return None
    if categories is not None:
        for value in col.dropna().map(_plain).value_counts().index:
            if value in categories:
                return value
        return None
    values = col.dropna()
    if values.empty:
        return None
    if type_ in ("number", "integer"):
        ordered = np.sort(values.to_numpy())
        value = _plain(ordered[(len(ordered) - 1) // 2])
        if type_ == "integer":
            return int(value)
        return float(value) if isinstance(value, int | float) and np.isfinite(value) else None
    value = _plain(values.value_counts().index[0])
    if type_ == "boolean":
        return bool(value)
    return str(value)[:256]


def _dtype_type(dtype: Any) -> FeatureType:
    api = pd.api.types
    if api.is_bool_dtype(dtype):
        return "boolean"
    if api.is_integer_dtype(dtype):
        return "integer"
    if api.is_float_dtype(dtype):
        return "number"
    if api.is_string_dtype(dtype) or api.is_object_dtype(dtype):
        return "string"
    if isinstance(dtype, pd.CategoricalDtype):
        return _categories_type(dtype.categories.tolist())
    return "number"


def _categories_type(categories: list[Any]) -> FeatureType:
    if categories and all(isinstance(c, bool) for c in categories):
        return "boolean"
    if categories and all(isinstance(c, int) and not isinstance(c, bool) for c in categories):
        return "integer"
    if categories and all(isinstance(c, int | float) for c in categories):
        return "number"
    return "string"


def _plain(value: Any) -> Any:
    """A JSON-able Python scalar for a numpy or Python one (``np.int64(1)`` -> ``1``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and bool(np.isnan(value)))
