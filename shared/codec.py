"""The compact form in which a job's rows cross Redis.

Rows are validated in the API and stored column by column: numbers as float64, integers as
int64, booleans as uint8, and strings as one JSON array per column. The worker decodes a
column with ``numpy.frombuffer`` (no parsing), so the cost is per column, not per row.

Layout: ``b"PQ1" + u32 header length + header JSON + column buffers``.
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

    A missing number is stored as NaN; a missing integer or boolean turns its column into
    float64 (NaN) so that it survives the trip.
    """
    header: list[list[Any]] = []
    buffers: list[bytes] = []
    for name, kind, values in columns:
        if kind == "string":
            buf = orjson.dumps(values)
            stored = "string"
        else:
            has_missing = any(v is None for v in values)
            stored = "number" if has_missing else kind
            arr = np.array(
                [np.nan if v is None else v for v in values] if has_missing else values,
                dtype=_DTYPES[stored],
            )
            buf = arr.tobytes()
        header.append([name, stored, len(buf)])
        buffers.append(buf)
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
    for name, kind, size in head["cols"]:
        chunk = data[offset : offset + size]
        offset += size
        if kind == "string":
            columns[name] = np.array(orjson.loads(chunk), dtype=object)
        elif kind == "boolean":
            columns[name] = np.frombuffer(chunk, dtype=np.uint8).astype(bool)
        else:
            columns[name] = np.frombuffer(chunk, dtype=_DTYPES[kind])
    return int(head["n"]), columns
