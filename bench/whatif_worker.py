"""A ``predq worker`` with experimental patches applied in-process (profiling aid only).

    python -m bench.whatif_worker PATCHES -- <predq worker arguments>

PATCHES is a comma-separated list (or ``none``) of:

- ``no-events``   -- no Celery task events: drop ``--task-events`` and set
  ``worker_send_task_events=False`` (the batching strategy's per-job ``send_event`` calls
  become no-ops: 3 PUBLISH round trips per job fewer in the consumer).
- ``ack-batch``   -- coalesce the consumer's acknowledgements: kombu's Redis QoS acks one
  message per MULTI/ZREM/HDEL/EXEC round trip; this defers them to the end of the event-loop
  iteration and removes all of them in one pipeline (``ZREM key t1 t2 ...`` + ``HDEL``).
- ``idle-flush``  -- dispatch a buffer at once only when *no* batch is in flight (instead of
  when *a* pool process is free); otherwise wait for a process to free up, ``max_batch_jobs``
  or ``max_wait_ms``.
- ``hold-while-busy`` -- the ``max_wait_ms`` timer no longer hands a buffer to a pool whose
  processes are all busy (where it would wait in billiard's queue as a small batch of its
  own); the buffer grows until a process frees up or ``max_batch_jobs``/``max_batch_rows``.
- ``script-nocheck`` -- skip redis-py's ``SCRIPT EXISTS`` round trip before each pipeline
  that holds an EVALSHA (the worker's finish pipeline): scripts are loaded once at start.

Nothing here is product code: these are what-ifs measured by ``bench.whatif`` to size the
fixes proposed in docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from typing import Any


def no_events() -> None:
    from celery import Celery

    orig = Celery.start

    def start(self: Any, argv: list[str] | None = None) -> Any:
        argv = [a for a in (argv or []) if a not in ("--task-events", "-E")]
        self.conf.worker_send_task_events = False
        return orig(self, argv)

    Celery.start = start  # type: ignore[method-assign]


def ack_batch() -> None:
    import kombu.transport.redis as kr
    from kombu.asynchronous import get_event_loop
    from kombu.transport.virtual.base import QoS as VirtualQoS

    def ack(self: Any, delivery_tag: Any) -> None:
        pending = self.__dict__.setdefault("_pq_pending", [])
        pending.append(delivery_tag)
        VirtualQoS.ack(self, delivery_tag)
        if len(pending) == 1:
            hub = get_event_loop()
            if hub is None:
                flush(self)
            else:
                hub.call_soon(flush, self)

    def flush(self: Any) -> None:
        tags, self._pq_pending = self._pq_pending, []
        if not tags:
            return
        with self.channel.conn_or_acquire() as client, client.pipeline() as pipe:
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            pipe.execute()

    kr.QoS.ack = ack  # type: ignore[method-assign]


def idle_flush() -> None:
    from worker.batching import PredictBatches

    def _add(self: Any, req: Any) -> None:
        try:
            n_rows = int(req.args[3])
        except (IndexError, TypeError, ValueError):
            n_rows = 1
        self._reqs.append(req)
        self._rows += n_rows
        if (self._inflight == 0 or len(self._reqs) >= self.max_batch_jobs
                or self._rows >= self.max_batch_rows):
            self._flush_now()
        elif self._tref is None:
            self._tref = self._timer.call_after(self.max_wait_s, self._on_timer)

    PredictBatches._add = _add  # type: ignore[method-assign]


def hold_while_busy() -> None:
    from worker.batching import PredictBatches

    def _on_timer(self: Any) -> None:
        self._tref = None
        if self._reqs and self._inflight < self._slots:
            self._flush_now()

    PredictBatches._on_timer = _on_timer  # type: ignore[method-assign]


def script_nocheck() -> None:
    import redis.client

    def load_scripts(self: Any) -> None:
        for s in self.scripts:
            if not getattr(s, "_pq_loaded", False):
                s.sha = self.immediate_execute_command("SCRIPT LOAD", s.script)
                s._pq_loaded = True

    redis.client.Pipeline.load_scripts = load_scripts  # type: ignore[method-assign]


PATCHES = {"no-events": no_events, "ack-batch": ack_batch, "idle-flush": idle_flush,
           "hold-while-busy": hold_while_busy, "script-nocheck": script_nocheck}


def main() -> None:
    argv = sys.argv[1:]
    if not argv or "--" not in argv:
        raise SystemExit(__doc__)
    sep = argv.index("--")
    names = [] if argv[0] == "none" else argv[0].split(",")
    for name in names:
        PATCHES[name]()
    from predq.cli import main as predq_main

    predq_main(["worker", *argv[sep + 1:]])


if __name__ == "__main__":
    main()
