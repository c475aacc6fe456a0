"""The byte-scan depth check agrees with a real parse, across chunk boundaries and escapes."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predq.api.security import jsondepth
from predq.api.security.jsondepth import location_of, too_deep_at

# Strings full of the bytes a naive scan would trip on.
_TRICKY = st.text(alphabet=st.sampled_from('[]{}"\\ab\u00e9\u2028'), max_size=8)
_SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False) | _TRICKY)
_JSON = st.recursive(
    _SCALAR,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_TRICKY, kids, max_size=4),
    max_leaves=40,
)


def first_too_deep(value: Any, limit: int, depth: int = 1, path: tuple = ()) -> tuple | None:
    """Reference: the path of the first container (document order) deeper than ``limit``."""
    if not isinstance(value, list | dict):
        return None
    if depth > limit:
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        found = first_too_deep(child, limit, depth + 1, (*path, key))
        if found is not None:
            return found
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_JSON, limit=st.integers(1, 6), chunk=st.integers(1, 9),
       compact=st.booleans())
def test_scan_matches_a_parse(value: Any, limit: int, chunk: int, compact: bool) -> None:
    body = orjson.dumps(value) if compact else json.dumps(value, indent=1).encode()
    expected = first_too_deep(value, limit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsondepth, "CHUNK_BYTES", chunk)
        offset = too_deep_at(body, limit)
    assert (offset is None) == (expected is None)
    if offset is not None:
        assert body[offset:offset + 1] in (b"[", b"{")
        assert location_of(body, offset) == list(expected)


def test_escaped_quotes_and_backslash_runs() -> None:
    body = orjson.dumps({"s": 'a\\"[[[[', "t": "\\\\", "deep": [[[1]]]})
    assert too_deep_at(body, 3) == body.index(b"[[[1") + 2
    assert location_of(body, too_deep_at(body, 3) or 0) == ["deep", 0, 0]
    assert too_deep_at(body, 4) is None


def test_a_hundred_thousand_levels_are_found_at_once() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    t0 = time.perf_counter()
    assert too_deep_at(body, 32) == 32
    assert location_of(body, 32) == [0] * 32
    assert time.perf_counter() - t0 < 5  # generous: it is a couple of numpy passes


def test_invalid_json_never_raises() -> None:
    for body in (b"", b"]]]]", b'"unterminated [[[[', b"\\\\\\", b"{{{{{{", b'{"a":[}]'):
        offset = too_deep_at(body, 2)
        if offset is not None:
            location_of(body, offset)


def test_location_is_left_unnamed_beyond_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsondepth, "MAX_LOCATE_BYTES", 4)
    body = b'{"metadata": [[[[1]]]]}'
    assert location_of(body, too_deep_at(body, 2) or 0) == []
