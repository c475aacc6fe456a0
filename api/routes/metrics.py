"""``GET /metrics``: Prometheus text of this API process and of the whole cluster.

``?scope=process`` serves only this process's HTTP metrics (scrape it on every replica);
``?scope=cluster`` only the cluster-wide metrics read from Redis, which are the same on every
replica (scrape them once, through the load balancer); the default serves both, which suits a
single replica. See README.md § Metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from predq.api.deps import StateDep
from predq.api.observability.exposition import ClusterSnapshot, render_cluster
from predq.shared.jobstore.keys import WORKER_ALIVE_BEATS, Keys
from predq.shared.observability.metrics import CONTENT_TYPE, UNACKED_KEY, HttpMetrics, broker_lists
from predq.shared.settings import Settings

router = APIRouter(tags=["operations"])
log = logging.getLogger("predq.api")

#: A scrape never waits longer than this for Redis; it then reports predq_redis_up 0.
SCRAPE_REDIS_TIMEOUT_S = 3.0

ScopeQuery = Annotated[Literal["all", "process", "cluster"],
                       Query(description="Which metrics: this process's, the cluster's, or both.")]


async def read_snapshot(client: object, settings: Settings) -> ClusterSnapshot:
    """The cluster metrics, read in one pipeline; ``redis_up=False`` when Redis fails."""
    keys = Keys(settings.key_prefix)
    queues = [*settings.all_predict_queues(), settings.webhook_queue,
              *settings.all_batch_queues()]
    since = time.time() - WORKER_ALIVE_BEATS * settings.worker_heartbeat_s
    try:
        async with asyncio.timeout(SCRAPE_REDIS_TIMEOUT_S):
            async with client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
                pipe.hgetall(keys.metrics())
                for queue in queues:
                    for name in broker_lists(queue):
                        pipe.llen(name)
                pipe.zcount(keys.workers_alive(), since, "+inf")
                pipe.hlen(UNACKED_KEY)
                res = await pipe.execute()
    except Exception as e:  # Redis down or slow: still serve what we have
        log.warning("metrics scrape could not read Redis: %r", e)
        return ClusterSnapshot(redis_up=False)
    n = len(broker_lists(""))
    depths = {q: sum(res[1 + i * n: 1 + (i + 1) * n]) for i, q in enumerate(queues)}
    return ClusterSnapshot(counters=res[0], queue_depth=depths, workers_alive=int(res[-2]),
                           unacked=int(res[-1]))


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}})
async def metrics(request: Request, state: StateDep, scope: ScopeQuery = "all") -> Response:
    """Prometheus metrics (HTTP, jobs, queues, batches, predict latency, webhooks)."""
    parts: list[bytes] = []
    if scope in ("all", "process"):
        http: HttpMetrics = request.app.state.predq_http_metrics
        parts.append(http.render())
    if scope in ("all", "cluster"):
        parts.append(render_cluster(await read_snapshot(state.redis, state.settings)))
    return Response(b"".join(parts), media_type=CONTENT_TYPE)
