"""The demo model (iris) and a mixed-type pipeline used by tests and benchmarks.

Everything here is deterministic (fixed seeds, no download: iris ships with scikit-learn).
sklearn, numpy and pandas are imported inside the functions, so importing this module (as
``predq up`` does) costs nothing until a model is actually trained.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from predq.push import push_model
from predq.shared.errors import ModelNotFound, RegistryError
from predq.shared.registry.store import Manifest, Registry

IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# (low, high) of each iris feature in the data set, so sample rows look plausible.
_IRIS_RANGES = ((4.3, 7.9), (2.0, 4.4), (1.0, 6.9), (0.1, 2.5))
MIXED_COLORS = ("red", "green", "blue")
MIXED_SIZES = ("S", "M", "L")


def train_demo_model() -> Any:
    """A RandomForestClassifier fitted on iris, with named columns and string labels."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    iris = load_iris(as_frame=True)
    X = iris.data.set_axis(list(IRIS_FEATURES), axis=1)
    y = iris.target_names[iris.target.to_numpy()]  # setosa / versicolor / virginica
    return RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y)


def write_demo_sample(path: Path) -> Path:
    """The iris measurements as a sample CSV (``--sample``): the examples /docs shows."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    iris.data.set_axis(list(IRIS_FEATURES), axis=1).to_csv(path, index=False)
    return path


def ensure_demo(registry: Registry, name: str = "iris") -> Manifest:
    """The demo model's default manifest, registering it (alias production) if it is absent."""
    try:
        return registry.resolve(name, None)
    except ModelNotFound:
        pass
    from predq.shared.registry.serialization import dump_estimator

    with tempfile.TemporaryDirectory(prefix="predq-demo-") as tmp:
        artifact = Path(tmp) / "iris.joblib"
        dump_estimator(train_demo_model(), artifact, "joblib")
        try:
            # The forest would accept NaN (its allow_nan tag), but a demo whose four
            # measurements are all required shows the API's validation at work.
            return push_model(registry,
                artifact, name, aliases=("production",), accepts_missing=False,
                sample_csv=write_demo_sample(Path(tmp) / "iris.csv"),
            )
        except RegistryError:
            # Another process (a second `predq up`) registered it first: use theirs.
            try:
                return registry.resolve(name, None)
            except ModelNotFound:
                pass
            raise


def iris_sample_rows(n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` plausible iris rows (JSON-able dicts), drawn uniformly within each range."""
    import numpy as np

    rng = np.random.RandomState(seed)
    lows, highs = zip(*_IRIS_RANGES, strict=True)
    values = np.round(rng.uniform(lows, highs, size=(n, len(IRIS_FEATURES))), 1)
    return [dict(zip(IRIS_FEATURES, map(float, row), strict=True)) for row in values.tolist()]


def mixed_sample_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows for :func:`train_mixed_pipeline`: color, size (strings), x1, x2 (floats)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    colors = rng.choice(MIXED_COLORS, size=n).tolist()
    sizes = rng.choice(MIXED_SIZES, size=n).tolist()
    x = np.round(rng.normal(size=(n, 2)), 4).tolist()
    return [
        {"color": c, "size": s, "x1": x1, "x2": x2}
        for c, s, (x1, x2) in zip(colors, sizes, x, strict=True)
    ]


def train_mixed_pipeline() -> Any:
    """OneHotEncoder (strings) + StandardScaler (numbers) + LogisticRegression, labels yes/no.

    The encoder raises on unknown categories (``handle_unknown="error"``), so the manifest
    lists color and size with ``allow_unknown=False``.
    """
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.RandomState(0)
    X = pd.DataFrame(mixed_sample_rows(500, seed=0))
    score = (
        X["x1"]
        - 0.5 * X["x2"]
        + X["color"].map({"red": 1.0, "green": 0.0, "blue": -1.0})
        + X["size"].map({"S": -0.5, "M": 0.0, "L": 0.5})
        + rng.normal(scale=0.5, size=len(X))
    )
    y = np.where(score > 0, "yes", "no")
    pre = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="error"), ["color", "size"]),
            ("numeric", StandardScaler(), ["x1", "x2"]),
        ]
    )
    return Pipeline([("preprocess", pre), ("classify", LogisticRegression())]).fit(X, y)
