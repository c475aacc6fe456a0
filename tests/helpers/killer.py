"""A model that kills the process predicting it (importable by workers via PYTHONPATH).

Used by the reliability tests (tests/reliability/) for two faults the ordinary faulty models
(:mod:`tests.helpers.faulty`) cannot produce:

- a *poison* job: any row whose ``x1`` equals :data:`KILL_MARKER` makes ``predict_proba`` send
  SIGKILL to its own process, as a segfaulting C extension or the OOM killer would. The worker
  cannot catch that; only the job store's delivery count can stop the loop.
- *duplicate execution* made visible: with ``noisy=True`` every call returns fresh random
  probabilities, so if one job were ever predicted twice and both results were kept, a client
  reading the job twice would see two different outputs.

``delay`` sleeps that many seconds per ``predict_proba`` call (``predict`` does not sleep), so
that a test can land a signal mid-batch; ``gate`` names a file that each ``predict_proba``
call waits for (up to 120 s), so that a test decides when a running batch may end. ``trace``
names a file to which every call appends one line, the JSON list of the ``x1`` values it was
given (one ``write`` of an ``O_APPEND`` file, so lines of concurrent pool processes never
interleave): a test that gives each job its own ``x1`` values can prove which jobs reached a
predict call, and how often.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

#: The value of ``x1`` that kills the predicting process.
KILL_MARKER = 666.0


class Killer(ClassifierMixin, BaseEstimator):
    """A two-class classifier over named features ``x1``, ``x2`` (see the module docstring)."""

    def __init__(self, delay: float = 0.0, noisy: bool = True, trace: str | None = None,
                 gate: str | None = None) -> None:
        self.delay = delay
        self.noisy = noisy
        self.trace = trace
        self.gate = gate

    def fit(self, x: Any, y: Any) -> Killer:
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(x.columns, dtype=object)
        self.n_features_in_ = x.shape[1]
        return self

    def _enter(self, x: Any) -> np.ndarray:
        values = np.asarray(x["x1"], dtype=float)
        if self.trace:
            line = (json.dumps(values.tolist()) + "\n").encode()
            fd = os.open(self.trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        if (values == KILL_MARKER).any():
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL is not deliverable later than now
        return values

    def _proba(self, n: int) -> np.ndarray:
        k = len(self.classes_)
        if not self.noisy:
            return np.full((n, k), 1.0 / k)
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        p = rng.random((n, k)) + 1e-3
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, x: Any) -> np.ndarray:
        values = self._enter(x)
        if self.delay:
            time.sleep(self.delay)
        deadline = time.monotonic() + 120
        gate = getattr(self, "gate", None)  # (absent from models pickled before it existed)
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._proba(len(values))

    def predict(self, x: Any) -> np.ndarray:
        values = np.asarray(x["x1"], dtype=float)
        return self.classes_.take(np.argmax(self._proba(len(values)), axis=1))


def train(delay: float = 0.0, noisy: bool = True, trace: str | None = None,
          gate: str | None = None) -> Killer:
    import pandas as pd

    x = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [1.0, 0.0, 1.0, 0.0]})
    return Killer(delay, noisy, trace, gate).fit(x, np.array(["a", "b", "a", "b"]))


def traced(path: str) -> list[list[float]]:
    """The calls recorded in a ``trace`` file: one list of ``x1`` values per call."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
