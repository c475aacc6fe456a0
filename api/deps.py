"""Request dependencies: settings, the job service, the registry, and the caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from predq.api.jobstore import AsyncJobs, queue_position
from predq.api.security.apikeys import ANONYMOUS, KEY_PREFIX, KeyRing, Principal
from predq.api.security.ratelimit import RateLimiter
from predq.api.security.ratelimit import enforce as enforce_rate_limit
from predq.api.waiters import Waiters
from predq.shared.batchfiles.batchstore import AsyncBatches
from predq.shared.batchfiles.filestore import AsyncFiles
from predq.shared.errors import Forbidden, ModelNotFound, PredqError, Unauthorized
from predq.shared.redis_conn import AsyncRedis
from predq.shared.registry.schema import ModelSchema
from predq.shared.registry.store import Manifest, Registry
from predq.shared.settings import Settings


@dataclass
class AppState:
    """Everything the routes share, created in the lifespan and closed on shutdown."""

    settings: Settings
    redis: AsyncRedis
    jobs: AsyncJobs
    registry: Registry
    waiters: Waiters
    keyring: KeyRing
    schemas: dict[tuple[str, str, str], ModelSchema]
    #: The batch-file stores (the uploaded files, the batch records).
    files: AsyncFiles
    batches: AsyncBatches
    #: Checks a webhook spec at submit time (raises InvalidInput); None: no check.
    webhook_guard: Callable[[Any], None] | None = None
    #: Set at startup (predq.api.security.ratelimit.install); None: no rate limiting.
    rate_limiter: RateLimiter | None = None

    async def queue_info(self, job: dict[str, Any]) -> dict[str, Any]:
        """Extra fields for a queued job (position, ETA); empty otherwise."""
        return await queue_position(self.jobs, job)

    def schema_for(self, manifest: Manifest) -> ModelSchema:
        key = (manifest.name, manifest.version, manifest.sha256)
        schema = self.schemas.get(key)
        if schema is None:
            s = self.settings
            schema = ModelSchema(manifest, max_rows=s.max_rows_per_job,
                                 max_string=s.max_string_length,
                                 max_metadata_bytes=s.max_metadata_bytes)
            self.schemas[key] = schema
        return schema

    def resolve(self, name: str, version: str | None) -> Manifest:
        try:
            return self.registry.resolve(name, version)
        except PredqError:
            raise
        except (OSError, ValueError) as e:
            raise ModelNotFound(f"no model {name!r}") from e


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.predq
    return state


StateDep = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer pq_...`")


def _bad_authorization(header: str | None) -> str:
    """Why an Authorization header is not a bearer key (never echoing the key itself)."""
    usage = "send 'Authorization: Bearer <key>'"
    if header is None or not header.strip():
        return f"missing API key: {usage}"
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return f"the Authorization header says Bearer but holds no key: {usage}"
    if not rest.strip():
        what = "an API key" if scheme.startswith(KEY_PREFIX) else "a single word"
        return (f"the Authorization header holds {what} without the 'Bearer' scheme: {usage}")
    shown = scheme if len(scheme) <= 20 and scheme.isalnum() else "other"
    return f"the Authorization scheme {shown!r} is not supported: {usage}"


#: The OpenAPI security scheme of the keys; predq.api.openapi.document adds it to every
#: operation whose dependencies include :func:`require` (marked ``AUTH_MARK``).
SECURITY_SCHEME = {_bearer.scheme_name: _bearer.model.model_dump(
    mode="json", by_alias=True, exclude_none=True)}
AUTH_MARK = "_predq_requires_key"


def _bearer_key(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, as FastAPI's HTTPBearer
    (auto_error off) reads it; None otherwise."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if not scheme or not key or scheme.lower() != "bearer":
        return None
    return key


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller (before any body is read), counts the
    request against its key's rate limit (429), and checks scope (403).

    It takes only the request (no sub-dependencies: each costs a dependency solve per
    request); its OpenAPI security is added by predq.api.openapi.document."""

    async def dep(request: Request) -> Principal:
        state: AppState = request.app.state.predq
        keyring = state.keyring
        if not keyring.enabled:
            await enforce_rate_limit(state.rate_limiter, request, None)  # per client IP
            request.state.principal = ANONYMOUS
            return ANONYMOUS
        key = _bearer_key(request)
        if key is None:
            raise Unauthorized(_bad_authorization(request.headers.get("authorization")))
        principal = keyring.authenticate(key)
        if principal is None:
            raise Unauthorized("unknown API key")
        request.state.principal = principal  # read by predq.api.problems (what a 404 may say)
        await enforce_rate_limit(state.rate_limiter, request, principal.name)
        if scope not in principal.scopes and not principal.is_admin:
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return principal

    setattr(dep, AUTH_MARK, scope)
    return dep


JobsWrite = Annotated[Principal, Depends(require("jobs:write"))]
JobsRead = Annotated[Principal, Depends(require("jobs:read"))]
ModelsRead = Annotated[Principal, Depends(require("models:read"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def owner_filter(principal: Principal) -> str | None:
    """The owner whose jobs the caller may see (None: all, for admins)."""
    return None if principal.is_admin else principal.name
