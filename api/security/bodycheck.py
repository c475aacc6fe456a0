"""Cheap checks of a raw request body that run before any JSON parser sees it.

:func:`check_json_depth` refuses a body that nests deeper than ``settings.max_json_depth``
with a 422 whose ``loc`` names where (``["body", "metadata", "a", 0, ...]``). It runs after
authentication and the size limit (``_read_body``) and before ``orjson``/pydantic, so a
100k-deep ``[[[[...]]]]`` costs a byte scan, never a recursive parse.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from predq.api.security.jsondepth import location_of, too_deep_at
from predq.shared.errors import InvalidInput
from predq.shared.settings import Settings

#: Bodies above this are scanned in a worker thread, so the event loop keeps serving others.
_THREAD_BYTES = 256 * 1024
#: Most path elements quoted in the error's ``loc`` (the rest is summarized).
_MAX_LOC = 40


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
