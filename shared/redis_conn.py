"""Redis clients built from the settings, for a plain server or Redis Sentinel.

``PREDQ_REDIS_URL`` is either ``redis://`` / ``rediss://`` (one server), or, for Sentinel,
kombu's form: ``sentinel://[:password@]host:port[/db]`` with several nodes joined by ``;``
(``sentinel://:pw@s1:26379/0;sentinel://:pw@s2:26379/0``) plus ``PREDQ_REDIS_SENTINEL_MASTER``.
The password in the URL is the *master's*; ``PREDQ_REDIS_SENTINEL_PASSWORD`` is for the
Sentinel nodes themselves when they require one. Celery gets the same URL and
:func:`celery_transport_options`, so the API, the workers and Flower all follow a failover.

The Redis boundary's types are redis-py's own (it ships ``py.typed``), sync and async kept
apart: annotate a blocking client :data:`SyncRedis` and an asyncio one :data:`AsyncRedis`, and
their pipelines :data:`SyncPipeline` / :data:`AsyncPipeline` (never ``Any``), so that mypy
sees a missing ``await`` (an ``Awaitable`` used as a value) and a blocking client where an
asyncio one belongs. redis-py types a reply ``bytes | str`` (it cannot know that predq's clients
never set ``decode_responses``): where a reply is unpacked, annotate it (``list[Any]``) rather
than cast it, so that an un-awaited call still fails the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.client
import redis.client
import redis.commands.core

from predq.shared.settings import Settings

SyncRedis = redis.Redis
SyncPipeline = redis.client.Pipeline
AsyncRedis = aioredis.Redis
AsyncPipeline = redis.asyncio.client.Pipeline
#: What ``register_script`` returns, on a blocking and on an asyncio client.
Script = redis.commands.core.Script
AsyncScript = redis.commands.core.AsyncScript
#: A blocking or an asyncio client, for what binds to either
# (``predq.shared.jobstore.scripts.Scripts``): the
#: binding's type says which, so ``Scripts[AsyncRedis]`` calls must be awaited.
RedisClient = TypeVar("RedisClient", SyncRedis, AsyncRedis)

SENTINEL_SCHEME = "sentinel://"


@dataclass(frozen=True)
class SentinelTarget:
    """The Sentinel nodes and the master's database and credentials."""

    nodes: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse kombu's ``sentinel://...;sentinel://...`` URL (ValueError when malformed)."""
    nodes: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in (p.strip() for p in url.split(";") if p.strip()):
        if not is_sentinel(part):
            raise ValueError(f"every node of a Sentinel URL must start with sentinel://: {part!r}")
        u = urlsplit(part)
        if not u.hostname:
            raise ValueError("a Sentinel node has no host")
        nodes.append((u.hostname, u.port or 26379))
        if u.password:
            password = unquote(u.password)
        if u.username:
            username = unquote(u.username)
        if u.path.strip("/"):
            db = int(u.path.strip("/"))
    if not nodes:
        raise ValueError("the Sentinel URL names no node")
    return SentinelTarget(nodes, db, username, password)


def _master(settings: Settings) -> str:
    if not settings.redis_sentinel_master:
        raise ValueError("PREDQ_REDIS_URL is a sentinel:// URL: set PREDQ_REDIS_SENTINEL_MASTER "
                         "to the name of the monitored master")
    return settings.redis_sentinel_master


def _sentinel_kwargs(settings: Settings, kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    if settings.redis_sentinel_password:
        out["password"] = settings.redis_sentinel_password
    return out


def sync_client(settings: Settings, **kwargs: Any) -> SyncRedis:
    """A blocking ``redis.Redis`` (of the current master, under Sentinel)."""
    if not is_sentinel(settings.redis_url):
        return redis.Redis.from_url(settings.redis_url, **kwargs)
    from redis.sentinel import Sentinel

    class SentinelMaster(redis.Redis):
        """The master's client; closing it also closes the connections to the Sentinels."""

        def close(self) -> None:
            super().close()
            pool: Any = self.connection_pool  # a SentinelConnectionPool
            for node in pool.sentinel_manager.sentinels:
                node.close()

    t = parse_sentinel_url(settings.redis_url)
    sentinel = Sentinel(t.nodes, sentinel_kwargs=_sentinel_kwargs(settings, kwargs))
    master: SentinelMaster = sentinel.master_for(
        _master(settings), redis_class=SentinelMaster, db=t.db, username=t.username,
        password=t.password, **kwargs)
    return master


def async_client(settings: Settings, **kwargs: Any) -> AsyncRedis:
    """An asyncio ``redis.asyncio.Redis`` (of the current master, under Sentinel)."""
    if not is_sentinel(settings.redis_url):
        return aioredis.Redis.from_url(settings.redis_url, **kwargs)
    from redis.asyncio.sentinel import Sentinel

    class SentinelMaster(aioredis.Redis):
        """The master's client; closing it also closes the connections to the Sentinels."""

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            await super().aclose(close_connection_pool)
            pool: Any = self.connection_pool  # a SentinelConnectionPool
            for node in pool.sentinel_manager.sentinels:
                await node.aclose()

    t = parse_sentinel_url(settings.redis_url)
    sentinel = Sentinel(t.nodes, sentinel_kwargs=_sentinel_kwargs(settings, kwargs))
    master: SentinelMaster = sentinel.master_for(
        _master(settings), redis_class=SentinelMaster, db=t.db, username=t.username,
        password=t.password, **kwargs)
    return master


def celery_transport_options(settings: Settings) -> dict[str, Any]:
    """Extra ``broker_transport_options`` for kombu's Redis transport (Sentinel's master)."""
    if not is_sentinel(settings.redis_url):
        return {}
    opts: dict[str, Any] = {"master_name": _master(settings)}
    if settings.redis_sentinel_password:
        opts["sentinel_kwargs"] = {"password": settings.redis_sentinel_password}
    return opts


def display_url(url: str) -> str:
    """``url`` fit for messages and logs: any password replaced by ``***``."""
    import re

    return re.sub(r"(?<=://)([^@/;]*?):[^@/;]*@", r"\1:***@", url)
