"""The peer of ``bench.peers``: the same model file served by BentoML's adaptive batching.

Runs inside ``bench/.peers-venv`` (BentoML 1.4.40 pinned; scikit-learn and numpy at predq's
versions), never imported by predq. ``bentoml serve bento_service:Cancer`` from ``bench/``,
with ``BENCH_MODEL`` (the joblib file) and ``BENCH_WORKERS`` in the environment.

Input: ``{"inputs": [{"<feature>": number, ...}, ...]}``, a list of records: BentoML 1.4.40's
batchable pandas DataFrame input crashes in ``get_batch_size``, a list works. With
``batchable=True`` BentoML concatenates the lists of concurrent requests into one call and
splits the outputs back. Output: predq's own row format, ``{"label", "probabilities"}``, so
the load generator checks both services' replies with the same code.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import joblib
import numpy as np
import pandas as pd


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")))
class Cancer:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL"])
        self.columns = [str(c) for c in self.model.feature_names_in_]
        self.classes = self.model.classes_
        self.keys = [str(c) for c in self.classes.tolist()]

    @bentoml.api(batchable=True)
    def predict(self, inputs: list[dict[str, float]]) -> list[dict[str, Any]]:
        frame = pd.DataFrame.from_records(inputs, columns=self.columns)
        proba = self.model.predict_proba(frame)
        labels = self.classes.take(np.argmax(proba, axis=1)).tolist()
        return [{"label": label, "probabilities": dict(zip(self.keys, row, strict=True))}
                for label, row in zip(labels, proba.tolist(), strict=True)]
