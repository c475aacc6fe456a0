"""How deeply a JSON document nests, found by a byte scan before anything parses it.

A body like ``[[[[...]]]]`` 100k levels deep must be refused cheaply, with a 4xx that names
where, not fed to a recursive parser. :func:`too_deep_at` scans the raw bytes with numpy, in
chunks (bounded memory), counting ``[``/``{`` and ``]``/``}`` outside strings. Quotes escaped by
an odd run of backslashes do not end a string.

Contracts:

- For valid JSON the answer is exact: ``too_deep_at`` returns ``None`` if and only if no
  array or object nests deeper than ``limit`` (the top-level value is depth 1).
- For invalid JSON it never raises; it may report a depth the parser would have refused anyway.
- Cost: a few vectorized passes over the body; a body with fewer than ``limit`` opening
  brackets in total is accepted after two ``bytes.count`` calls.
- :func:`location_of` turns the offset into a ``loc`` path (``["metadata", "a", 0]``) by a
  regex tokenizer over the prefix; it runs only on the error path and reads at most
  ``MAX_LOCATE_BYTES`` of it.
"""

from __future__ import annotations

import re

import numpy as np

#: Bytes scanned per numpy pass: memory stays at a few times this, whatever the body size.
CHUNK_BYTES = 1 << 20
#: Longest prefix :func:`location_of` tokenizes; beyond it the location is left unnamed.
MAX_LOCATE_BYTES = 1 << 20

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_DELTA = np.zeros(256, dtype=np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)


def too_deep_at(body: bytes, limit: int) -> int | None:
    """The offset of the first bracket that opens level ``limit + 1``, or ``None``."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    depth = 0
    in_string = False
    backslashes = 0  # length of the run of backslashes that ends the previous chunk
    for start in range(0, len(body), CHUNK_BYTES):
        chunk = np.frombuffer(body, dtype=np.uint8, count=min(CHUNK_BYTES, len(body) - start),
                              offset=start)
        quotes = np.flatnonzero(chunk == _QUOTE)
        if quotes.size:
            quotes = quotes[_backslash_runs(chunk, quotes, backslashes) % 2 == 0]
        delta = _DELTA[chunk]
        brackets = np.flatnonzero(delta)
        # A bracket is inside a string when an odd number of real quotes precede it.
        inside = (np.searchsorted(quotes, brackets) + int(in_string)) % 2 == 1
        brackets = brackets[~inside]
        if brackets.size:
            levels = np.cumsum(delta[brackets], dtype=np.int64) + depth
            over = np.flatnonzero(levels > limit)
            if over.size:
                return start + int(brackets[over[0]])
            depth = int(levels[-1])
        in_string = (quotes.size + int(in_string)) % 2 == 1
        backslashes = _trailing_backslashes(chunk, backslashes)
    return None


def _backslash_runs(chunk: np.ndarray, quotes: np.ndarray, carried: int) -> np.ndarray:
    """For each quote position, how many backslashes immediately precede it."""
    is_bs = chunk == _BACKSLASH
    if not is_bs.any() and not carried:
        return np.zeros(quotes.size, dtype=np.int64)
    idx = np.arange(chunk.size, dtype=np.int64)
    last_other = np.maximum.accumulate(np.where(is_bs, -1, idx))  # last non-backslash <= i
    prev = quotes - 1
    safe_prev = np.maximum(prev, 0)
    runs = np.where(prev >= 0, prev - last_other[safe_prev], 0)
    # A run that reaches back to the chunk's start continues the previous chunk's run.
    from_start = (prev < 0) | (last_other[safe_prev] == -1)
    return np.where(from_start, runs + carried, runs)


def _trailing_backslashes(chunk: np.ndarray, carried: int) -> int:
    """The length of the run of backslashes that ends ``chunk`` (continuing ``carried``)."""
    if chunk[-1] != _BACKSLASH:
        return 0
    others = np.flatnonzero(chunk != _BACKSLASH)
    if not others.size:
        return carried + int(chunk.size)
    return int(chunk.size - 1 - others[-1])


def location_of(body: bytes, offset: int) -> list[str | int]:
    """The path (keys and indexes) to the container that opens at ``offset``.

    Best effort: ``[]`` when the prefix is longer than ``MAX_LOCATE_BYTES``.
    """
    if offset > MAX_LOCATE_BYTES:
        return []
    path: list[str | int | None] = []  # per open container: its current key or index
    wants_key: list[bool | None] = []  # objects: True until the member's key is read
    for m in _TOKEN.finditer(body, 0, offset):
        tok = m.group()
        if tok == b"[":
            path.append(0)
            wants_key.append(None)
        elif tok == b"{":
            path.append(None)
            wants_key.append(True)
        elif tok in (b"]", b"}"):
            if path:
                path.pop()
                wants_key.pop()
        elif tok == b",":
            if path and wants_key[-1] is None:
                path[-1] = int(path[-1] or 0) + 1
            elif path:
                wants_key[-1] = True
        elif path and wants_key[-1]:  # a string where an object expects a key
            path[-1] = _decode_key(tok)
            wants_key[-1] = False
    return [p for p in path if p is not None]


def _decode_key(token: bytes) -> str:
    import orjson

    try:
        key = orjson.loads(token)
    except orjson.JSONDecodeError:
        return token[1:-1].decode("utf-8", "replace")
    return key if isinstance(key, str) else str(key)
