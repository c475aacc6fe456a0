"""Liveness (``/healthz``) and readiness (``/readyz``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from predq.api.deps import StateDep
from predq.api.problems import PROBLEM
from predq.shared.jobstore.keys import WORKER_ALIVE_BEATS

router = APIRouter(tags=["operations"])

#: /readyz answers 503 rather than wait longer than this for Redis (probes time out fast).
READY_REDIS_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The process is alive (it checks nothing else)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis or workers unavailable"}})
async def readyz(state: StateDep) -> Response:
    """Ready: Redis answers and at least one worker consumes; lists workers and queues."""
    s = state.settings
    keys = state.jobs.keys
    window = WORKER_ALIVE_BEATS * s.worker_heartbeat_s
    now = time.time()
    try:
        async with asyncio.timeout(READY_REDIS_TIMEOUT_S):
            alive: list[Any] = await state.redis.zrangebyscore(
                keys.workers_alive(), now - window, "+inf", withscores=True)
            names = [h.decode() if isinstance(h, bytes) else h for h, _ in alive]
            infos: list[Any] = (await state.redis.mget([keys.worker_info(h) for h in names])
                                if names else [])
    except Exception as e:
        return _not_ready(f"Redis does not answer: {type(e).__name__}", redis="down")
    workers = []
    for (_, beat), name, raw in zip(alive, names, infos, strict=True):
        info = orjson.loads(raw) if raw else {}
        workers.append({"hostname": name, "last_seen_s": round(max(0.0, now - beat), 2),
                        "queues": info.get("queues", []), "concurrency": info.get("concurrency"),
                        "buffered": info.get("buffered"), "inflight": info.get("inflight")})
    expected = [*s.all_predict_queues(), s.webhook_queue]
    queues = {q: sorted(w["hostname"] for w in workers if q in w["queues"]) for q in expected}
    extra = {"redis": "ok", "workers": workers, "queues": queues,
             "unserved_queues": [q for q, hosts in queues.items() if not hosts]}
    if not workers:
        return _not_ready(f"no worker has sent a heartbeat in the last {window:g} s", **extra)
    return Response(orjson.dumps({"status": "ready", **extra}), media_type="application/json")


def _not_ready(detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": "Not ready", "status": 503, "detail": detail,
            **extra}
    return Response(orjson.dumps(body), status_code=503, media_type=PROBLEM,
                    headers={"Retry-After": "2"})
