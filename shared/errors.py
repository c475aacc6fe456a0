"""Named errors of predq. Only ``api/`` turns them into HTTP problem details."""

from __future__ import annotations

from typing import Any


class PredqError(Exception):
    """Base of predq's errors. ``status`` and ``title`` say how the API should answer."""

    status = 400
    title = "Bad request"
    type_ = "about:blank"
    #: Extra response headers (e.g. WWW-Authenticate on a 401).
    headers: dict[str, str] = {}

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


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


class JobExpired(JobNotFound):
    title = "Job expired"


class JobConflict(PredqError):
    status = 409
    title = "Conflict"


class InvalidInput(PredqError):
    status = 422
    title = "Invalid input"


class PayloadTooLarge(PredqError):
    status = 413
    title = "Payload too large"


class QueueFull(PredqError):
    status = 429
    title = "Queue full"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


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


class FileNotFound(PredqError):
    status = 404
    title = "File not found"


class BatchNotFound(PredqError):
    status = 404
    title = "Batch not found"
