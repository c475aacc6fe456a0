"""The rate limiter's leases (predq.api.security.ratelimit), against a real redis-server, with an
injected clock: exact below LEASE_DIVISOR, one round trip per lease above it, never more than
the limit across processes, spent windows answered locally, Retry-After from the window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from predq.api.security.ratelimit import LEASE_DIVISOR, MAX_LEASES, RateLimiter, _Lease
from predq.shared.errors import RateLimited
from predq.shared.settings import Settings

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """Wraps the limiter's script call to count Redis round trips."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.calls = 0
        self._inner = limiter._script
        limiter._script = self

    async def __call__(self, **kw: Any) -> Any:
        self.calls += 1
        return await self._inner(**kw)


@pytest.fixture
async def client(settings_env: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    yield c
    await c.aclose()


async def outcomes(limiter: RateLimiter, identity: str, n: int) -> list[int | None]:
    """None per allowed request, the Retry-After of each refused one."""
    out: list[int | None] = []
    for _ in range(n):
        try:
            await limiter.hit(identity)
            out.append(None)
        except RateLimited as e:
            out.append(e.retry_after)
    return out


async def test_small_limits_are_exact_one_round_trip_per_request(
        client: aioredis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(Settings(rate_limit="5/minute"), client, clock=clock)
    calls = Counting(limiter)
    got = await outcomes(limiter, "key:user", 5)
    assert got == [None] * 5 and calls.calls == 5
    clock.now += 1
    refused = await outcomes(limiter, "key:user", 3)
    assert all(r is not None and 0 < r <= 60 for r in refused), refused
    # The first refusal learned the window is spent: the next two cost no round trip.
    assert calls.calls == 6
    # The counter is the limits library's key, under the deployment's prefix.
    keys = [k.decode() async for k in client.scan_iter(match=f"{limiter.prefix}:*")]
    assert keys == [f"{limiter.prefix}:LIMITER/key:user/5/1/minute"]
    # When the window resets, the key may spend again.
    clock.now += 61
    await client.delete(*keys)  # what the counter's own expiry does in Redis
    assert await outcomes(limiter, "key:user", 1) == [None]


async def test_large_limits_are_leased_in_blocks(client: aioredis.Redis) -> None:
    limit = 50 * LEASE_DIVISOR
    limiter = RateLimiter(Settings(rate_limit=f"{limit}/minute"), client, clock=Clock())
    calls = Counting(limiter)
    assert await outcomes(limiter, "key:a", 120) == [None] * 120
    assert calls.calls == 3  # 50 tokens per round trip
    key = limiter.key(0, "key:a")
    assert int(await client.get(key)) == 150  # taken tokens are counted, spent or not
    assert 0 < await client.pttl(key) <= 60_000


async def test_two_processes_never_exceed_the_limit_together(client: aioredis.Redis) -> None:
    limit = 3 * LEASE_DIVISOR + 7
    settings = Settings(rate_limit=f"{limit}/hour")
    a = RateLimiter(settings, client, clock=Clock())
    b = RateLimiter(settings, client, clock=Clock())
    allowed = 0
    for _ in range(limit):  # interleaved, as two API processes behind one port
        for limiter in (a, b):
            allowed += (await outcomes(limiter, "key:shared", 1)) == [None]
    assert allowed <= limit
    # At most one unspent lease per process is lost to the other.
    assert allowed >= limit - 2 * a.lease_sizes[0]


async def test_every_limit_applies_and_the_refused_one_is_named(
        client: aioredis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(Settings(rate_limit="3/second;1000/hour"), client, clock=clock)
    calls = Counting(limiter)
    assert await outcomes(limiter, "key:x", 3) == [None] * 3
    with pytest.raises(RateLimited) as e:
        await limiter.hit("key:x")
    assert "3 per 1 second" in str(e.value) and "hour" not in str(e.value)
    assert e.value.retry_after == 1
    assert calls.calls == 4  # both limits in one round trip each time


async def test_a_window_past_its_reset_is_asked_again(client: aioredis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(Settings(rate_limit="2/second"), client, clock=clock)
    calls = Counting(limiter)
    assert await outcomes(limiter, "key:y", 3) == [None, None, 1]
    clock.now += 0.5
    assert (await outcomes(limiter, "key:y", 1))[0] is not None and calls.calls == 3
    clock.now += 0.6  # past the window's reset as this process saw it
    await client.delete(limiter.key(0, "key:y"))
    assert await outcomes(limiter, "key:y", 1) == [None] and calls.calls == 4


async def test_the_lease_table_is_bounded(client: aioredis.Redis) -> None:
    limiter = RateLimiter(Settings(rate_limit="1000/minute"), client, clock=Clock())
    for n in range(MAX_LEASES + 10):  # expired leases of many client IPs
        limiter._leases[(0, f"ip:{n}")] = _Lease(1, False, 0.0)
    await limiter.hit("ip:new")
    assert len(limiter._leases) == 1


async def test_it_fails_open_when_redis_is_unreachable() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    limiter = RateLimiter(Settings(rate_limit="1/minute"), dead, clock=Clock())
    assert await outcomes(limiter, "key:z", 3) == [None] * 3
    await dead.aclose()
