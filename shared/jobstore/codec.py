"""The compact form in which a job's rows cross Redis.

Rows are validated in the API and stored column by column: numbers as float64, integers as
int64, booleans as uint8, and strings as one JSON array per column. The worker decodes a
column with ``numpy.frombuffer`` (no parsing), so the cost is per column, not per row.

A missing number is NaN. A missing integer or boolean keeps its column's type: the values
stay int64/uint8 (so integers beyond 2**53 stay exact) and a uint8 mask buffer marks the
missing ones; such a column decodes to a ``numpy.ma.MaskedArray``. A column's type so never
depends on its values (nor, in the worker, on the other jobs of a batch).

Layout: ``b"PQ1" + u32 header length + header JSON + column buffers``. A header entry is
``[name, type, size]``, or ``[name, type, size, mask size]`` when a mask buffer follows.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

MAGIC = b"PQ1"
_DTYPES = {"number": np.float64, "integer": np.int64, "boolean": np.uint8}


def encode(n_rows: int, columns: Sequence[tuple[str, str, list[Any]]]) -> bytes:
    """Encode ``columns`` given as ``(name, type, values)``; ``None`` means missing.

    A missing number is stored as NaN; a missing integer or boolean as 0 plus a set bit
    in the column's missing mask.
    """
    header: list[list[Any]] = []
    buffers: list[bytes] = []
    # Every number column in one numpy call (None converts to NaN), one row per column.
    numbers = [values for _, kind, values in columns if kind == "number"]
    matrix = iter(np.array(numbers, dtype=np.float64).reshape(len(numbers), n_rows)
                  if numbers else ())
    for name, kind, values in columns:
        mask: bytes | None = None
        if kind == "number":
            buf = next(matrix).tobytes()
        elif kind == "string":
            buf = orjson.dumps(values)
        elif not any(v is None for v in values):
            buf = np.array(values, dtype=_DTYPES[kind]).tobytes()
        else:
            buf = np.array([0 if v is None else v for v in values],
                           dtype=_DTYPES[kind]).tobytes()
            mask = np.array([v is None for v in values], dtype=np.uint8).tobytes()
        header.append([name, kind, len(buf)] if mask is None
                      else [name, kind, len(buf), len(mask)])
        buffers.append(buf)
        if mask is not None:
            buffers.append(mask)
    head = orjson.dumps({"n": n_rows, "cols": header})
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *buffers])


def decode(data: bytes) -> tuple[int, dict[str, np.ndarray]]:
    """The row count and the columns of an encoded job; strings come back as object arrays."""
    if data[:3] != MAGIC:
        raise ValueError("not a predq input buffer")
    (hlen,) = struct.unpack_from("<I", data, 3)
    head = orjson.loads(data[7 : 7 + hlen])
    offset = 7 + hlen
    columns: dict[str, np.ndarray] = {}
    for name, kind, size, *mask_size in head["cols"]:
        chunk = data[offset : offset + size]
        offset += size
        col: np.ndarray
        if kind == "string":
            col = np.array(orjson.loads(chunk), dtype=object)
        elif kind == "boolean":
            col = np.frombuffer(chunk, dtype=np.uint8).astype(bool)
        else:
            col = np.frombuffer(chunk, dtype=_DTYPES[kind])
        if mask_size:
            missing = np.frombuffer(data[offset : offset + mask_size[0]], dtype=np.uint8)
            offset += mask_size[0]
            col = np.ma.MaskedArray(col, mask=missing.astype(bool))
        columns[name] = col
    return int(head["n"]), columns
