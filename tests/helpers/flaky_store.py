"""A model whose every prediction makes Redis refuse writes for a moment (a flapping Redis).

``predict_proba`` sets ``min-replicas-to-write 1`` on the worker's Redis (``PREDQ_REDIS_URL``,
inherited by the pool process), so every write fails with ``NOREPLICAS`` until a timer thread
sets it back to 0 ``hold`` seconds later. The claim before the prediction works; the finish
right after it fails: exactly the "claim works, finish fails" fault of issue 13.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class FlakyStore(ClassifierMixin, BaseEstimator):
    def __init__(self, hold: float = 0.3) -> None:
        self.hold = hold

    def fit(self, x: Any, y: Any) -> FlakyStore:
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(x.columns, dtype=object)
        self.n_features_in_ = x.shape[1]
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        import redis

        client = redis.Redis.from_url(os.environ["PREDQ_REDIS_URL"], socket_timeout=5)
        client.config_set("min-replicas-to-write", 1)

        def reopen() -> None:
            client.config_set("min-replicas-to-write", 0)
            client.close()

        threading.Timer(self.hold, reopen).start()
        return np.full((x.shape[0], len(self.classes_)), 1.0 / len(self.classes_))

    def predict(self, x: Any) -> np.ndarray:
        return self.classes_.take(np.zeros(x.shape[0], dtype=int))


def train(hold: float = 0.3) -> FlakyStore:
    import pandas as pd

    x = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [1.0, 0.0, 1.0, 0.0]})
    return FlakyStore(hold).fit(x, np.array(["a", "b", "a", "b"]))
