"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

A named error (``predq.shared.errors``) carries its status, title, detail and headers; the one
:func:`problem_of` turns any of them into its answer, with no case for any class. The other
handlers answer what is not predq's own: FastAPI's validation errors, Starlette's HTTP errors,
Redis being unreachable (as :class:`~predq.shared.errors.StoreUnavailable`) and anything unexpected.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from predq.shared.errors import ModelNotFound, PredqError, StoreUnavailable

log = logging.getLogger("predq.api")

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, *, errors: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None, type_: str = "about:blank") -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


#: Most model names an unknown model's 404 lists.
_MAX_LISTED_MODELS = 50


def _unknown_model_detail(request: Request, detail: str) -> str:
    """An unknown model's 404, for a caller who may read models: which models exist.

    A key with ``models:read`` (or admin, or anyone when auth is off) learns the registered
    names, as ``GET /v1/models`` would tell it; an admin also learns the registry directory.
    Other keys get the bare detail: names and server paths are not theirs to see.
    """
    principal = getattr(request.state, "principal", None)
    state = getattr(request.app.state, "predq", None)
    if principal is None or state is None:
        return detail
    if "models:read" not in principal.scopes and not principal.is_admin:
        return detail
    try:
        names = [info.name for info in state.registry.list_models()]
    except Exception:  # the 404 stands on its own; a broken registry is logged elsewhere
        return detail
    shown = ", ".join(names[:_MAX_LISTED_MODELS])
    if len(names) > _MAX_LISTED_MODELS:
        shown += f", ... ({len(names)} in all)"
    detail += f"; registered models: {shown}" if names else "; no model is registered"
    if principal.is_admin:
        detail += f" (registry {state.registry.root})"
    return detail


def problem_of(exc: PredqError, detail: str | None = None) -> Response:
    """The answer to a named error: everything it needs is on the error (``detail``
    replaces the error's own when the caller adds context)."""
    return problem(exc.status, exc.title, exc.detail if detail is None else detail,
                   errors=exc.errors,
                   headers=dict(exc.headers), type_=exc.type_)


def _predq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PredqError)
    if exc.status >= 500:
        log.error("server-side error: %s", exc, exc_info=exc)
    # What an unknown model's 404 may add depends on the caller (see _unknown_model_detail).
    detail = _unknown_model_detail(request, exc.detail) if isinstance(exc, ModelNotFound) \
        else None
    return problem_of(exc, detail)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()][:200]
    return problem(422, "Invalid request", f"{len(errors)} validation error(s)", errors=errors)


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 413: "Payload too large", 415: "Unsupported media type",
           429: "Too many requests", 503: "Service unavailable"}


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem(exc.status_code, _TITLES.get(exc.status_code, "Error"), detail,
                   headers=dict(exc.headers or {}))


def _redis_down(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable: %r", exc)
    return problem_of(StoreUnavailable("the job store (Redis) is unreachable; retry shortly",
                                       retry_after=2))


def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "Internal server error", "an unexpected error occurred; it was logged")


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""
    import redis.exceptions

    app.add_exception_handler(PredqError, _predq_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
