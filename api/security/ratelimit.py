"""Per-key rate limiting: the ``limits`` library's fixed window, counted in Redis.

Every authenticated request counts against its API key's name (``Principal.name``); with
auth disabled, against the client's IP address (the peer uvicorn sees; behind a proxy, the
``X-Forwarded-For`` address when the proxy is in uvicorn's ``FORWARDED_ALLOW_IPS``). The limit is
``settings.rate_limit`` (``"100000/minute"``; several limits joined by ``;`` all apply; empty:
none). Over it, the request gets ``429`` problem+json with ``Retry-After``: whole seconds
until the window that refused it resets (:class:`predq.shared.errors.RateLimited`, answered by the
one handler of ``predq.api.problems``). The check runs inside the auth dependency, so a
refused request never has its body read.

Contracts:

- The counters live under ``Keys.rate_limit_prefix()`` and are shared by every API process
  (one limit per key for the whole deployment), on the API's own Redis connection pool.
- Fail open: when Redis errors or takes longer than ``CHECK_TIMEOUT_S``, the request is let
  through and a warning is logged (at most once per ``WARN_EVERY_S``). Rate limiting protects
  capacity; it must not turn a Redis outage into 500s (routes that need Redis answer 503
  themselves).
- Fixed window: cheap (one ``INCR`` per request and limit) but a client may spend up to twice
  its limit across a window boundary. See README.md § Rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Protocol

from fastapi import FastAPI, Request

from predq.shared.errors import RateLimited
from predq.shared.jobstore.keys import Keys
from predq.shared.redis_conn import AsyncRedis
from predq.shared.settings import Settings

log = logging.getLogger("predq.api")

#: A rate-limit check never holds a request longer than this; then it fails open.
CHECK_TIMEOUT_S = 0.5
#: The fail-open warning is logged at most this often (a Redis outage would flood the logs).
WARN_EVERY_S = 10.0


class RateLimiter:
    """Counts requests per identity in Redis and raises :class:`RateLimited` over the limit."""

    def __init__(self, settings: Settings, redis_client: AsyncRedis) -> None:
        from limits import parse_many
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter

        self.items = parse_many(settings.rate_limit) if settings.rate_limit else []
        # The API's own pool: same server (or Sentinel master), same timeouts, no new sockets.
        storage = RedisStorage("async+redis://", implementation="redispy",
                               key_prefix=Keys(settings.key_prefix).rate_limit_prefix(),
                               # limits types its **options as scalars; it passes them on
                               connection_pool=redis_client.connection_pool,  # type: ignore[arg-type]
                               )
        self.limiter = FixedWindowRateLimiter(storage)
        self._last_warning = -math.inf

    async def hit(self, identity: str) -> None:
        """Count one request of ``identity``; raise RateLimited when a limit is spent.

        Never raises anything else: storage errors and timeouts are logged and let through.
        """
        if not self.items:
            return
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                refused = [item for item in self.items
                           if not await self.limiter.hit(item, identity)]
                if not refused:
                    return
                resets = [(await self.limiter.get_window_stats(item, identity)).reset_time
                          for item in refused]
        except Exception as e:  # Redis down or slow, or a storage error: fail open
            self._warn(e)
            return
        retry_after = max(1, math.ceil(max(resets) - time.time()))
        limits = "; ".join(str(item) for item in refused)
        raise RateLimited(f"rate limit of {limits} exceeded; retry in {retry_after} s",
                          retry_after=retry_after)

    def _warn(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("rate limiting is off while its Redis check fails (requests are let "
                        "through): %r", error)


async def enforce(limiter: RateLimiter | None, request: Request,
                  principal_name: str | None) -> None:
    """Count this request against its key (``principal_name``) or, when None, its client IP.

    ``limiter`` None (not started): nothing is counted."""
    if limiter is None:
        return
    if principal_name is not None:
        identity = f"key:{principal_name}"
    else:
        identity = f"ip:{request.client.host if request.client else 'unknown'}"
    await limiter.hit(identity)


class LimitedState(Protocol):
    """What the limiter needs of the app's state (``predq.api.deps.AppState``)."""

    settings: Settings
    redis: AsyncRedis
    rate_limiter: RateLimiter | None


def install(app: FastAPI) -> None:
    """Create the limiter when the app starts (RateLimited answers through predq.api.problems)."""

    def start(state: LimitedState) -> None:
        state.rate_limiter = RateLimiter(state.settings, state.redis)

    app.state.predq_startup_hooks.append(start)
