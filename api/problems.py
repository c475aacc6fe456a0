"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

A named error (``shared.errors``) carries its status, title, detail and headers; the one
:func:`problem_of` turns any of them into its answer, with no case for any class. The other
handlers answer what is not predq's own: FastAPI's validation errors, Starlette's HTTP errors,
Redis being unreachable (as :class:`~shared.errors.StoreUnavailable`) and anything unexpected.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from shared.errors import PredqError, StoreUnavailable

log = logging.getLogger("predq.api")

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, *, errors: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None, type_: str = "about:blank") -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


def problem_of(exc: PredqError) -> Response:
    """The answer to a named error: everything it needs is on the error."""
    return problem(exc.status, exc.title, exc.detail, errors=exc.errors,
                   headers=dict(exc.headers), type_=exc.type_)


def _predq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PredqError)
    if exc.status >= 500:
        log.error("server-side error: %s", exc, exc_info=exc)
    return problem_of(exc)


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
