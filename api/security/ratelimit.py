"""Per-key rate limiting: fixed windows counted in Redis, spent from local leases.

Every authenticated request counts against its API key's name (``Principal.name``); with
auth disabled, against the client's IP address (the peer uvicorn sees; behind a proxy, the
``X-Forwarded-For`` address when the proxy is in uvicorn's ``FORWARDED_ALLOW_IPS``). The limit is
``settings.rate_limit`` (``"100000/minute"``, the ``limits`` library's syntax; several limits
joined by ``;`` all apply; empty: none). Over it, the request gets ``429`` problem+json with
``Retry-After``: whole seconds until the window that refused it resets
(:class:`predq.shared.errors.RateLimited`, answered by the one handler of ``predq.api.problems``).
The check runs inside the auth dependency, so a refused request never has its body read.

Contracts:

- The counters live under ``Keys.rate_limit_prefix()`` (the ``limits`` library's key names,
  ``<prefix>:LIMITER/key:NAME/100000/1/minute``) and are shared by every API process (one limit
  per key for the whole deployment), on the API's own Redis connection pool. Each counter
  starts its window when it is created and expires with it.
- Leases: a process takes tokens from a counter in blocks of ``limit // LEASE_DIVISOR``
  (at least 1) with one script call (``lua/ratelimit.lua``, every limit in one round trip)
  and spends them locally until the block or the window runs out. A busy key therefore
  costs one Redis round trip per block, not per request. A token taken is counted whether
  or not it is spent, so the limit is never exceeded; a process may hold up to a block
  unspent when the window ends, so a key may be refused up to ``1/LEASE_DIVISOR`` of its
  limit early per API process. Limits below ``LEASE_DIVISOR`` per window lease one token at
  a time: exact.
- A spent window is remembered locally until it resets (it cannot come back within the
  window), so refused requests cost no round trip.
- Fail open: when Redis errors or takes longer than ``CHECK_TIMEOUT_S``, the request is let
  through and a warning is logged (at most once per ``WARN_EVERY_S``). Rate limiting protects
  capacity; it must not turn a Redis outage into 500s (routes that need Redis answer 503
  themselves).
- Fixed window: a client may spend up to twice its limit across a window boundary. See
  README.md § Rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request

from predq.shared.errors import RateLimited
from predq.shared.jobstore.keys import Keys
from predq.shared.lua import lua_script
from predq.shared.redis_conn import AsyncRedis
from predq.shared.settings import Settings

log = logging.getLogger("predq.api")

#: A rate-limit check never holds a request longer than this; then it fails open.
CHECK_TIMEOUT_S = 0.5
#: The fail-open warning is logged at most this often (a Redis outage would flood the logs).
WARN_EVERY_S = 10.0
#: A lease is this fraction of a limit (at least one token): see the module's contracts.
LEASE_DIVISOR = 100
#: Leases kept per process before the expired ones are dropped (then all, if still over).
MAX_LEASES = 4096

_SCRIPT = lua_script(__file__, "ratelimit")  # lua/ratelimit.lua: KEYS, ARGV, returns


class _Lease:
    """Tokens of one window of one limit, held by this process for one identity."""

    __slots__ = ("left", "spent", "until")

    def __init__(self, left: int, spent: bool, until: float) -> None:
        self.left = left  # tokens taken and not yet spent
        self.spent = spent  # the counter reached the limit: no more tokens this window
        self.until = until  # the clock's time when the window resets


class RateLimiter:
    """Counts requests per identity in Redis and raises :class:`RateLimited` over the limit.

    ``clock``: monotonic seconds (injected by tests)."""

    def __init__(self, settings: Settings, redis_client: AsyncRedis,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from limits import parse_many

        self.items = parse_many(settings.rate_limit) if settings.rate_limit else []
        self.prefix = Keys(settings.key_prefix).rate_limit_prefix()
        self.lease_sizes = [max(1, item.amount // LEASE_DIVISOR) for item in self.items]
        self._script: Callable[..., Any] = redis_client.register_script(_SCRIPT)
        self._leases: dict[tuple[int, str], _Lease] = {}
        self._clock = clock
        self._last_warning = -math.inf

    def key(self, index: int, identity: str) -> str:
        """The Redis counter of limit ``index`` for ``identity``."""
        return f"{self.prefix}:{self.items[index].key_for(identity)}"

    async def hit(self, identity: str) -> None:
        """Count one request of ``identity``; raise RateLimited when a limit is spent.

        Never raises anything else: storage errors and timeouts are logged and let through.
        """
        if not self.items:
            return
        now = self._clock()
        leases = self._leases
        refill = []
        for i in range(len(self.items)):
            lease = leases.get((i, identity))
            if lease is None or lease.until <= now or (lease.left <= 0 and not lease.spent):
                refill.append(i)
        if refill:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    reply = await self._script(
                        keys=[self.key(i, identity) for i in refill],
                        args=[v for i in refill for v in (
                            self.lease_sizes[i], self.items[i].get_expiry(),
                            self.items[i].amount)])
            except Exception as e:  # Redis down or slow, or a storage error: fail open
                self._warn(e)
                return
            if len(leases) >= MAX_LEASES:
                self._prune(now)
            for n, i in enumerate(refill):
                granted, pttl = int(reply[2 * n]), int(reply[2 * n + 1])
                lease = leases.get((i, identity))
                spent = granted < self.lease_sizes[i]
                if lease is not None and lease.until > now:  # a concurrent refill: add up
                    lease.left += granted
                    lease.spent = spent
                else:
                    leases[(i, identity)] = _Lease(granted, spent, now + pttl / 1000)
        refused: list[int] = []
        for i in range(len(self.items)):
            lease = leases[(i, identity)]
            if lease.left > 0:
                lease.left -= 1
            else:
                refused.append(i)
        if not refused:
            return
        retry_after = max(1, max(math.ceil(leases[(i, identity)].until - now)
                                 for i in refused))
        limits = "; ".join(str(self.items[i]) for i in refused)
        raise RateLimited(f"rate limit of {limits} exceeded; retry in {retry_after} s",
                          retry_after=retry_after)

    def _prune(self, now: float) -> None:
        """Drop expired leases; all of them if that is not enough. Dropping a lease loses
        its unspent tokens (counted in Redis): stricter, never looser."""
        for k in [k for k, lease in self._leases.items() if lease.until <= now]:
            del self._leases[k]
        if len(self._leases) >= MAX_LEASES:
            self._leases.clear()

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
