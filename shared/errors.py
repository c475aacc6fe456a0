"""Named errors of predq: the one vocabulary of what can go wrong, and how the API says it.

Each error carries everything its HTTP answer needs: ``status``, ``title``, ``type_``,
``detail``, ``errors`` and ``headers`` (a 401's ``WWW-Authenticate``, a 429's or 503's
``Retry-After``). Only ``api/`` turns them into responses, with one handler
(``predq.api.problems``) that knows no error class by name: a new error needs no new handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PredqError(Exception):
    """Base of predq's errors. ``status``, ``title`` and ``headers`` say how the API answers."""

    status = 400
    title = "Bad request"
    type_ = "about:blank"
    #: Extra response headers (e.g. WWW-Authenticate on a 401). An error whose headers depend
    #: on the instance sets them in ``__init__`` (see :class:`RetryLater`).
    headers: Mapping[str, str] = {}

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class RetryLater(PredqError):
    """An answer that says when to try again: ``retry_after`` whole seconds (>= 1), sent as
    the ``Retry-After`` header (RFC 9110 section 10.2.3)."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers = {**type(self).headers, "Retry-After": str(retry_after)}


class MalformedJson(PredqError):
    status = 400
    title = "Malformed JSON"


class Unauthorized(PredqError):
    status = 401
    title = "Unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="predq"'}  # RFC 6750


class Forbidden(PredqError):
    status = 403
    title = "Forbidden"


class UnsupportedMediaType(PredqError):
    status = 415
    title = "Unsupported media type"


class ModelNotFound(PredqError):
    status = 404
    title = "Model not found"


class VersionNotFound(PredqError):
    status = 404
    title = "Model version not found"


class JobNotFound(PredqError):
    status = 404
    title = "Job not found"


class JobConflict(PredqError):
    status = 409
    title = "Conflict"


class InvalidInput(PredqError):
    status = 422
    title = "Invalid input"


class PayloadTooLarge(PredqError):
    status = 413
    title = "Payload too large"


class QueueFull(RetryLater):
    """The model's queue holds too many rows; ``retry_after`` comes from its drain rate."""

    status = 429
    title = "Queue full"


class RateLimited(RetryLater):
    """The caller spent its rate limit; ``retry_after`` is when the refusing window resets."""

    status = 429
    title = "Too many requests"


class StoreUnavailable(RetryLater):
    """The job store (Redis) does not answer."""

    status = 503
    title = "Service unavailable"


class RegistryError(PredqError):
    """The registry is inconsistent or an artifact cannot be registered."""

    status = 500
    title = "Registry error"


class IntegrityError(RegistryError):
    """A model file's sha256 does not match its manifest, or the file is missing."""

    title = "Model integrity check failed"


class UnsupportedModel(RegistryError):
    """The estimator cannot be served (no predict, unknown task, ...)."""

    status = 422
    title = "Unsupported model"


class NotDurable(RetryLater):
    """Durable submit is on and the job cannot be confirmed on disk
    (predq.shared.jobstore.durability)."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 2) -> None:
        super().__init__(detail, retry_after=retry_after)


class FileNotFound(PredqError):
    status = 404
    title = "File not found"


class BatchNotFound(PredqError):
    status = 404
    title = "Batch not found"
