"""The errors the client raises: one class per kind of problem, each carrying the problem document.

Every HTTP error predq answers is RFC 9457 problem+json (``type``, ``title``, ``status``,
``detail`` and, for bad input, ``errors`` with ``loc``/``msg``/``type`` per bad field). The
client turns each into a :class:`PredqError` subclass chosen by status, so callers catch what
they can handle (``except InvalidInput as e: e.errors``) and let the rest propagate.
"""

from __future__ import annotations

from typing import Any


class PredqError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status (None when no answer came), ``problem`` the whole problem
    document as the server sent it, ``errors`` its per-field list (empty when none).
    """

    def __init__(self, message: str, *, status: int | None = None,
                 problem: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = problem or {}
        self.headers: dict[str, str] = headers or {}

    @property
    def title(self) -> str | None:
        return self.problem.get("title")

    @property
    def detail(self) -> str | None:
        return self.problem.get("detail")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.problem.get("errors") or [])


class InvalidInput(PredqError):
    """The request was refused as bad input (400, 413, 415, 422): see :attr:`errors`."""


class Unauthorized(PredqError):
    """No API key, or one the server does not know (401)."""


class Forbidden(PredqError):
    """The API key lacks the scope this call needs (403)."""


class NotFound(PredqError):
    """No such model, version, job, file or batch, or it expired (404)."""


class Conflict(PredqError):
    """The call contradicts the resource's state (409): cancelling a finished job, reusing an
    Idempotency-Key with another body."""


class RateLimited(PredqError):
    """429 after every retry: the key's rate limit or the queue is full.

    ``retry_after`` is the server's Retry-After in seconds, when it sent one."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers)


class ServerUnavailable(PredqError):
    """The server did not answer (connection error, timeout) or answered 5xx, after every
    retry."""


class JobFailed(PredqError):
    """The job (or batch) ended without results: ``failed``, ``cancelled`` or ``expired``.

    ``job`` is the job (or batch) document as the server returned it."""

    def __init__(self, message: str, *, job: dict[str, Any] | None = None,
                 status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message, status=status, problem=problem)
        self.job: dict[str, Any] = job or {}


class WaitTimeout(PredqError, TimeoutError):
    """The job or batch had not ended when the caller's timeout passed. It keeps running:
    wait again, or cancel it."""


_BY_STATUS: dict[int, type[PredqError]] = {
    400: InvalidInput, 413: InvalidInput, 415: InvalidInput, 422: InvalidInput,
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 429: RateLimited,
}


def error_for(status: int, problem: dict[str, Any], headers: dict[str, str]) -> PredqError:
    """The exception for one error answer."""
    title = problem.get("title") or f"HTTP {status}"
    detail = problem.get("detail")
    message = f"{status} {title}" + (f": {detail}" if detail else "")
    if problem.get("title") == "Prediction failed":  # /predict's job ended failed
        return JobFailed(message, status=status, problem=problem)
    cls = _BY_STATUS.get(status) or (ServerUnavailable if status >= 500 else PredqError)
    return cls(message, status=status, problem=problem, headers=headers)


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """Retry-After as seconds (delta-seconds form; an HTTP date is ignored)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
