"""Cheap checks of a raw request body that run before any JSON parser sees it.

:func:`read_json_body` reads a JSON body with a cap: 415 unless the Content-Type is JSON, 413
when the declared length or the running byte count passes the limit, so an oversized body is
cut off at the limit whether or not it says its length. (FastAPI's own body parsing would
hold any size, and its ``max_body_size`` answers text/plain and would replace an earlier 401,
so the limit is enforced here, after authentication.) Job submissions and batch requests
both read their bodies with it.

:func:`check_json_depth` refuses a body that nests deeper than ``settings.max_json_depth``
with a 422 whose ``loc`` names where (``["body", "metadata", "a", 0, ...]``). It runs after
authentication and the size limit (:func:`read_json_body`) and before ``orjson``/pydantic, so a
100k-deep ``[[[[...]]]]`` costs a byte scan, never a recursive parse.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from predq.api.security.jsondepth import location_of, too_deep_at
from predq.shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from predq.shared.settings import Settings

#: Bodies above this are scanned in a worker thread, so the event loop keeps serving others.
_THREAD_BYTES = 256 * 1024
#: Most path elements quoted in the error's ``loc`` (the rest is summarized).
_MAX_LOC = 40


async def read_json_body(request: Request, limit: int, *, too_large: str | None = None
                         ) -> bytes:
    """The body of a JSON request, at most ``limit`` bytes.

    Raises :class:`UnsupportedMediaType` (415) unless the Content-Type is ``application/json``
    or ``*+json``, and :class:`PayloadTooLarge` (413) when the declared Content-Length or the
    bytes streamed so far pass ``limit``; ``too_large`` replaces the 413's default details.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"send Content-Type: application/json, not {ctype!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large or f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # a running count: cut off at the limit
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large or f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _find(body: bytes, limit: int) -> list[str | int] | None:
    offset = too_deep_at(body, limit)
    if offset is None:
        return None
    return location_of(body, offset)


async def check_json_depth(body: bytes, settings: Settings) -> None:
    """Raise :class:`InvalidInput` (422) when ``body`` nests deeper than the setting allows.

    Never raises anything else, whatever the bytes (invalid JSON is left to the parser).
    """
    limit = settings.max_json_depth
    if len(body) > _THREAD_BYTES:
        loc = await run_in_threadpool(_find, body, limit)
    else:
        loc = _find(body, limit)
    if loc is None:
        return
    where = "/".join(map(str, loc[:8])) + ("/..." if len(loc) > 8 else "")
    raise InvalidInput(
        f"the body nests arrays/objects deeper than {limit} levels"
        + (f" at {where}" if loc else ""),
        errors=[{"loc": ["body", *loc[:_MAX_LOC]], "type": "too_deep",
                 "msg": f"at most {limit} levels of nested arrays and objects"}],
    )
