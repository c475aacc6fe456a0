"""Long-poll: wake waiting requests when their job ends, from one pub/sub subscription.

Workers publish a job's id on the ``done`` channel in the same script that ends it. Each API
process keeps one subscription and a map of job id to the events of its waiters, so a held
``GET ?wait=`` costs no Redis connection and no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from predq.shared.redis_conn import AsyncRedis

log = logging.getLogger("predq.api.waiters")


class Waiters:
    def __init__(self, client: AsyncRedis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="predq-waiters")

    async def stop(self) -> None:
        if self._task:
            self._stopping = True
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2)

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._wake_all()  # anything that ended while we were not listening
                while not self._stopping:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    job_id = msg["data"]
                    job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
                    for ev in self._waiting.get(job_id, ()):
                        ev.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis restarted: resubscribe, and let waiters re-read
                log.warning("job-completion subscription lost (%r); resubscribing", e)
                self._wake_all()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1)

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for ev in events:
                ev.set()

    @contextlib.asynccontextmanager
    async def register(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when ``job_id`` may have ended (re-read the job to know)."""
        ev = asyncio.Event()
        self._waiting.setdefault(job_id, set()).add(ev)
        try:
            yield ev
        finally:
            events = self._waiting.get(job_id)
            if events is not None:
                events.discard(ev)
                if not events:
                    del self._waiting[job_id]
