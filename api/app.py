"""The FastAPI application: ``create_app()`` (uvicorn's factory)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from predq.api import docs, problems
from predq.api.deps import AppState
from predq.api.jobstore import AsyncJobs
from predq.api.observability import install as observability
from predq.api.openapi import document as openapi
from predq.api.routes import batches, files, health, jobs, models, webhooks
from predq.api.security import ratelimit
from predq.api.security.apikeys import KeyRing
from predq.api.waiters import Waiters
from predq.shared.batchfiles.batchstore import AsyncBatches
from predq.shared.batchfiles.filestore import AsyncFiles
from predq.shared.jobstore.keys import Keys
from predq.shared.redis_conn import async_client
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings, get_settings

log = logging.getLogger("predq.api")

DESCRIPTION = """Queue-backed, micro-batching predictions for scikit-learn models.

Submit rows to `POST /v1/models/{name}/jobs` (202 at once) and read the result with
`GET /v1/jobs/{id}?wait=30`, or call `POST /v1/models/{name}/predict` for a synchronous
answer. Every error is `application/problem+json`. Each registered model's own schema is
listed under its tag below.
"""


def _log_registry(registry: Registry) -> None:
    """Say which registry this API serves (an unknown model's 404 never names the path)."""
    try:
        names = [info.name for info in registry.list_models()]
    except Exception as e:
        log.warning("model registry %s cannot be listed: %s", registry.root, e)
        return
    log.info("model registry %s: %s", registry.root,
             ", ".join(names) if names else "no models yet (predq models push)")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis and the other resources are opened in the lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(
            settings, socket_connect_timeout=2, socket_timeout=5,
            health_check_interval=10, max_connections=settings.limit_concurrency + 50,
        )
        waiters = Waiters(client, Keys(settings.key_prefix).done_channel())
        app.state.predq = AppState(
            settings=settings, redis=client, jobs=AsyncJobs(client, settings),
            registry=Registry(settings.registry_root), waiters=waiters,
            keyring=KeyRing(settings), schemas={},
            files=AsyncFiles(client, settings), batches=AsyncBatches(client, settings),
        )
        for hook in app.state.predq_startup_hooks:
            hook(app.state.predq)
        _log_registry(app.state.predq.registry)
        waiters.start()
        try:
            yield
        finally:
            await waiters.stop()
            await client.aclose()

    app = FastAPI(
        title="predq", version="1.0", description=DESCRIPTION, lifespan=lifespan,
        responses={500: {"description": "Unexpected error (logged)"}},
        docs_url=None, redoc_url=None,  # predq.api.docs serves them without a CDN
    )
    app.state.predq_startup_hooks = []
    problems.install(app)
    ratelimit.install(app)
    app.include_router(models.router)
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(health.router)
    webhooks.install(app)
    observability.install(app, settings)
    openapi.install(app)
    docs.install(app)
    return app
