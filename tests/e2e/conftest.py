"""A running stack for end-to-end tests: real uvicorn, real Celery workers, real Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from shared.auth import key_spec, new_key


@dataclass
class Stack:
    base_url: str
    headers: dict[str, str]
    admin_headers: dict[str, str]
    workers: list[Any]


@pytest.fixture
def keys(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """API keys configured (as hashes) for the test's processes: user, other, admin."""
    plain = {"user": new_key(), "other": new_key(), "admin": new_key()}
    specs = [key_spec("user", plain["user"], ("jobs:write", "jobs:read", "models:read")),
             key_spec("other", plain["other"], ("jobs:write", "jobs:read", "models:read")),
             key_spec("admin", plain["admin"], ("admin",))]
    value = orjson.dumps([s.model_dump() for s in specs]).decode()
    env["PREDQ_API_KEYS"] = value
    monkeypatch.setenv("PREDQ_API_KEYS", value)
    return plain


@pytest.fixture
def stack(registry_with_models: Any, keys: dict[str, str], start_worker: Callable[..., Any],
          start_api: Callable[..., str]) -> Callable[..., Stack]:
    """``stack(workers=1, concurrency=2, **env)``: API + workers, ready."""

    def start(workers: int = 1, concurrency: int = 2, **extra_env: str) -> Stack:
        procs = [start_worker(concurrency, extra_env=extra_env) for _ in range(workers)]
        base = start_api(extra_env=extra_env)
        return Stack(base, {"Authorization": f"Bearer {keys['user']}"},
                     {"Authorization": f"Bearer {keys['admin']}"}, procs)

    return start
