"""Output rows rendered to JSON without building a Python dict per row.

orjson serializes a whole numpy array in C with shortest round-trip floats (so a client
parses back exactly the float the model returned); the numbers are then slotted into one
bytes template per row. For 100k rows this is ~10x faster than dicts + ``orjson.dumps``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

_NP = orjson.OPT_SERIALIZE_NUMPY


def _numbers(values: np.ndarray) -> list[bytes]:
    """Each element of a float array as JSON text (NaN -> null), in C order."""
    flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return []
    return orjson.dumps(flat, option=_NP)[1:-1].split(b",")


def _labels(labels: np.ndarray) -> list[bytes]:
    """Each label as JSON (str, int, float or bool), via its unique values."""
    uniques, inverse = np.unique(labels, return_inverse=True)
    texts = [orjson.dumps(u) for u in uniques.tolist()]
    return [texts[i] for i in inverse.tolist()]


def regression_rows(values: np.ndarray) -> list[bytes]:
    return [b'{"value":%b}' % v for v in _numbers(values)]


def label_rows(labels: np.ndarray) -> list[bytes]:
    return [b'{"label":%b}' % lab for lab in _labels(labels)]


def proba_rows(labels: np.ndarray, proba: np.ndarray, classes: list[Any]) -> list[bytes]:
    """``{"label": l, "probabilities": {"<class>": p, ...}}`` per row."""
    k = len(classes)
    # A class name is data, not format: a "%" in it ("50%", "%s") is escaped for the
    # template (orjson already escapes quotes, backslashes and control characters).
    keys = [orjson.dumps(str(c)).replace(b"%", b"%%") for c in classes]
    template = (b'{"label":%b,"probabilities":{'
                + b",".join(key + b":%b" for key in keys) + b"}}")
    nums = _numbers(proba)
    columns = [nums[j::k] for j in range(k)]
    return [template % args for args in zip(_labels(labels), *columns, strict=True)]


def join_rows(rows: list[bytes], start: int, stop: int) -> bytes:
    """The JSON array of rows[start:stop]."""
    return b"[" + b",".join(rows[start:stop]) + b"]"
