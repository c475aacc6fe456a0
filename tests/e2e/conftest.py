"""A running stack for end-to-end tests: real uvicorn, real Celery workers, real Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class Stack:
    base_url: str
    headers: dict[str, str]
    admin_headers: dict[str, str]
    workers: list[Any]


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
