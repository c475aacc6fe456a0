"""Deliberately faulty models (importable by worker processes via PYTHONPATH)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class Faulty(ClassifierMixin, BaseEstimator):
    """A classifier over named features that misbehaves on demand.

    mode "raise": predict_proba raises when any x1 < 0 (one poison row fails its job);
    mode "short": returns one row too few; mode "slow": sleeps ``delay`` seconds per call;
    mode "slowrow": sleeps ``delay`` seconds in a call given any row with x1 < 0 (one slow job
    among fast ones).
    """

    def __init__(self, mode: str = "raise", delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay

    def fit(self, x: Any, y: Any) -> Faulty:
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(x.columns, dtype=object)
        self.n_features_in_ = x.shape[1]
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        values = np.asarray(x["x1"], dtype=float)
        if self.mode == "raise" and (values < 0).any():
            raise ValueError(f"x1 must not be negative, got {float(values.min())}")
        if self.mode == "slow" or (self.mode == "slowrow" and (values < 0).any()):
            time.sleep(self.delay)
        p = np.full((len(values), len(self.classes_)), 1.0 / len(self.classes_))
        return p[:-1] if self.mode == "short" else p

    def predict(self, x: Any) -> np.ndarray:
        return self.classes_.take(np.argmax(self.predict_proba(x), axis=1))


def train(mode: str, delay: float = 0.0) -> Faulty:
    import pandas as pd

    x = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [1.0, 0.0, 1.0, 0.0]})
    return Faulty(mode, delay).fit(x, np.array(["a", "b", "a", "b"]))
