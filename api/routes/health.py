"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from api.deps import StateDep
from api.problems import problem

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis or workers unavailable"}})
async def readyz(state: StateDep) -> Any:
    """Ready: Redis answers (worker presence is checked by the operations module)."""
    try:
        await state.redis.ping()
    except Exception as e:
        return problem(503, "Not ready", f"Redis does not answer: {type(e).__name__}",
                       headers={"Retry-After": "2"})
    return Response(b'{"status":"ready"}', media_type="application/json")
