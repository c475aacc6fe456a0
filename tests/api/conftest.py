"""In-process API tests: the real app over httpx's ASGI transport, a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from predq.api.app import create_app
from predq.shared.settings import Settings

ApiFactory = Callable[..., Any]


@pytest.fixture
def api(registry_with_models: Any, settings_env: dict[str, str]) -> ApiFactory:
    """``async with api(**settings_overrides) as client``: an app with its lifespan running."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        overrides.setdefault("auth_enabled", False)
        app = create_app(Settings(**overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                c.app_state = app.state.predq  # type: ignore[attr-defined]
                yield c

    return make
