"""Free-form JSON (a job's ``metadata``) that can be stored and echoed back exactly.

The request parser (jiter, inside pydantic) accepts more than the store can write back:
integers of any size, and ``NaN``/``Infinity`` (also ``1e999``, which overflows to infinity).
orjson, which writes the job record, raises on an integer beyond 64 bits and writes a
non-finite float as ``null``, so such a value would be a 500 or be changed silently. And a
Python string may hold a lone surrogate, which no UTF-8 encoder can write.

:func:`unsafe_values` finds every such value, with its path, so the API refuses the body with
a 422 naming where (``["body", "metadata", "a", 0]``). Accepted values round-trip exactly
through ``orjson.dumps``/``orjson.loads``.
"""

from __future__ import annotations

import math
from typing import Any

#: The integers orjson writes and reads back as integers (int64 and uint64).
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
#: Stands for "the key of this path is not valid Unicode" on the walk's stack.
_BAD_KEY = object()


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _scalar_error(v: Any) -> tuple[str, str] | None:
    """(type, msg) when the scalar ``v`` cannot be stored exactly; None when it can."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int) and not INT_MIN <= v <= INT_MAX:
        return ("int_too_big", "integers must lie within -2**63 .. 2**64-1; send bigger "
                               "ones as strings")
    if isinstance(v, float) and not math.isfinite(v):
        return ("finite_number", "NaN, Infinity and numbers beyond the double range are "
                                 "not JSON")
    if isinstance(v, str) and _has_surrogate(v):
        return ("string_unicode", "strings must be valid Unicode (no lone surrogates)")
    return None


def unsafe_values(value: Any, root: list[str | int], limit: int = 200
                  ) -> list[dict[str, Any]]:
    """problem+json ``errors`` for every value under ``value`` that cannot be stored exactly
    (at most ``limit``), in document order. Iterative: any depth the depth check let through
    is fine."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[list[str | int], Any]] = [(root, value)]
    while stack and len(errors) < limit:
        path, v = stack.pop()
        if isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                key = str(k)
                bad_key = _has_surrogate(key)
                if bad_key:  # named in the error as it can be written
                    key = key.encode("utf-8", "replace").decode()
                stack.append(([*path, key], item))
                if bad_key:  # popped first: the key's error comes before its value's
                    stack.append(([*path, key], _BAD_KEY))
        elif v is _BAD_KEY:
            errors.append({"loc": path, "type": "string_unicode",
                           "msg": "keys must be valid Unicode (no lone surrogates)"})
        elif isinstance(v, list | tuple):
            stack.extend(([*path, i], v[i]) for i in range(len(v) - 1, -1, -1))
        elif (err := _scalar_error(v)) is not None:
            errors.append({"loc": path, "type": err[0], "msg": err[1]})
    return errors[:limit]
