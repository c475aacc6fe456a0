"""Request dependencies: settings, the job service, the registry, and the caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.ratelimit import enforce as enforce_rate_limit
from api.waiters import Waiters
from shared.auth import ANONYMOUS, KeyRing, Principal
from shared.errors import Forbidden, ModelNotFound, PredqError, Unauthorized
from shared.jobs import AsyncJobs, queue_position
from shared.registry import Manifest, Registry
from shared.schema import ModelSchema
from shared.settings import Settings


@dataclass
class AppState:
    """Everything the routes share, created in the lifespan and closed on shutdown."""

    settings: Settings
    redis: Any
    jobs: AsyncJobs
    registry: Registry
    waiters: Waiters
    keyring: KeyRing
    schemas: dict[tuple[str, str, str], ModelSchema]
    #: Checks a webhook spec at submit time (raises InvalidInput); None: no check.
    webhook_guard: Callable[[Any], None] | None = None
    #: api.ratelimit.RateLimiter, set at startup; None: no rate limiting.
    rate_limiter: Any = None
    #: shared.files.AsyncFiles and shared.batches.AsyncBatches (batch files).
    files: Any = None
    batches: Any = None

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


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller (before any body is read), counts the
    request against its key's rate limit (429), and checks scope (403)."""

    async def dep(request: Request, state: StateDep,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                  ) -> Principal:
        if not state.keyring.enabled:
            await enforce_rate_limit(state, request, None)  # per client IP
            return ANONYMOUS
        if creds is None or creds.scheme.lower() != "bearer":
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        principal = state.keyring.authenticate(creds.credentials)
        if principal is None:
            raise Unauthorized("unknown API key")
        await enforce_rate_limit(state, request, principal.name)
        if scope not in principal.scopes and not principal.is_admin:
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return principal

    return dep


JobsWrite = Annotated[Principal, Depends(require("jobs:write"))]
JobsRead = Annotated[Principal, Depends(require("jobs:read"))]
ModelsRead = Annotated[Principal, Depends(require("models:read"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def owner_filter(principal: Principal) -> str | None:
    """The owner whose jobs the caller may see (None: all, for admins)."""
    return None if principal.is_admin else principal.name
