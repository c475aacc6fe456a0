"""A worker's life around its tasks: heartbeat, logging, and a bounded graceful shutdown.

:func:`install_lifecycle` adds to a worker's Celery app:

- a consumer bootstep (:class:`Lifecycle` built by :func:`_lifecycle_step`) that, while the
  consumer consumes, writes a heartbeat every ``worker_heartbeat_s`` from the consumer's own
  event loop (so it stops when consuming stops): ``ZADD Keys.workers_alive() {hostname: now}``
  plus a short-lived JSON info key (queues, concurrency, buffered and running jobs), read by
  the API's ``/readyz`` and ``/metrics``. On stop it hands the micro-batch buffer back to the
  broker (requeued at the head of its queue) and removes the heartbeat.
- a shutdown watchdog. Celery's warm shutdown (SIGTERM) stops consuming, lets the running
  batches finish and acknowledges them. Messages still in the micro-batch buffer are returned
  by the bootstep; batches handed to a busy pool but not started are dropped by Celery's pool
  flush, and kombu restores their messages (with any other unacknowledged one) when the channel
  closes, after the pool has drained. Those jobs stay ``queued``. If batches still run
  ``worker_shutdown_grace_s`` after the signal, the watchdog kills the pool processes: their
  batches are requeued by the pool's worker-lost path (see ``predq.worker.batching.consumer``) and
  the
  shutdown completes. A last resort exits the process a few seconds later.
- pool processes that ignore SIGTERM (see :func:`_pool_ignores_sigterm`).
- structured logging (``predq.shared.observability.logs``) in place of Celery's own, and the node
name, which
  pool processes inherit for their batch log lines (:func:`node_name`).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from typing import Any

import orjson
from celery import Celery, bootsteps, signals

from predq.shared.jobstore.keys import WORKER_INFO_TTL_BEATS, Keys
from predq.shared.jobstore.messages import PREDICT_TASK
from predq.shared.observability.logs import configure_logging
from predq.shared.redis_conn import sync_client
from predq.shared.settings import Settings

log = logging.getLogger("predq.worker.lifecycle")

#: Seconds after the grace period (and the pool kill) before the process exits regardless.
LAST_RESORT_S = 10.0

_node: dict[str, str] = {}


def node_name() -> str | None:
    """This worker's Celery node name (``w1@host``), once it is known; inherited by the pool."""
    return _node.get("name")


def install_lifecycle(app: Celery, settings: Settings) -> None:
    """Add the heartbeat bootstep, the shutdown watchdog and logging to the worker ``app``."""
    app.steps["consumer"].add(_lifecycle_step(settings))
    watchdog = _Watchdog(settings.worker_shutdown_grace_s)
    app.predq_watchdog = watchdog  # type: ignore[attr-defined]

    def on_init(sender: Any = None, **_: Any) -> None:
        if sender:
            _node["name"] = str(sender)

    def on_logging(loglevel: Any = None, **_: Any) -> None:
        configure_logging(settings, "worker")
        if loglevel:
            logging.getLogger().setLevel(loglevel)

    def on_shutting_down(**_: Any) -> None:
        watchdog.arm()

    signals.celeryd_init.connect(on_init, weak=False, dispatch_uid="predq.node_name")
    signals.setup_logging.connect(on_logging, weak=False, dispatch_uid="predq.logging")
    signals.worker_shutting_down.connect(on_shutting_down, weak=False,
                                         dispatch_uid="predq.shutdown_watchdog")
    signals.worker_process_init.connect(_pool_ignores_sigterm, weak=False,
                                        dispatch_uid="predq.pool_sigterm")


def _pool_ignores_sigterm(**_: Any) -> None:
    """Pool processes ignore SIGTERM, as Celery makes them ignore SIGINT.

    A supervisor that signals the whole process group (``predq up``, a terminal, the tests)
    would otherwise interrupt a running batch (billiard's handler raises SystemExit wherever
    the process is) and fail its jobs. The main process owns the shutdown: it drains the pool
    (warm), or the watchdog kills it (SIGKILL) after the grace period; billiard's hard time
    limit ends in SIGKILL too, and a pool process dies with its parent (PR_SET_PDEATHSIG).
    Runs before billiard installs its handlers, which leave an ignored signal alone.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Watchdog:
    """Bounds the warm shutdown: after ``grace`` s, kill the pool; later, exit."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pool: Any = None
        self._armed = False
        self._lock = threading.Lock()

    def arm(self) -> None:
        with self._lock:
            if self._armed:
                return
            self._armed = True
        log.info("shutting down: running batches get %gs to finish", self.grace)
        thread = threading.Thread(target=self._run, name="predq-shutdown-watchdog", daemon=True)
        thread.start()

    def _run(self) -> None:
        time.sleep(self.grace)
        pids = _pool_pids(self.pool)
        log.warning("shutdown grace period (%gs) is over: killing %d pool process(es); their "
                    "batches are requeued", self.grace, len(pids))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(LAST_RESORT_S)
        log.error("the worker did not stop %gs after its pool was killed; exiting now "
                  "(unacknowledged messages return after the visibility timeout)", LAST_RESORT_S)
        logging.shutdown()
        os._exit(1)


def _pool_pids(pool: Any) -> list[int]:
    """The pids of a prefork TaskPool's processes (empty for other pools)."""
    procs = getattr(getattr(pool, "_pool", None), "_pool", None) or []
    return [p.pid for p in procs if getattr(p, "pid", None)]


def _lifecycle_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    keys = Keys(settings.key_prefix)
    interval = settings.worker_heartbeat_s
    ttl = max(1, math.ceil(WORKER_INFO_TTL_BEATS * interval))

    class Lifecycle(bootsteps.StartStopStep):
        """Consumer bootstep: heartbeat while consuming; return the buffer when stopping."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            self.client: Any = None
            self.tref: Any = None
            self.started_at = time.time()

        def start(self, c: Any) -> None:
            watchdog = getattr(c.app, "predq_watchdog", None)
            if watchdog is not None:
                watchdog.pool = c.pool
            self.client = sync_client(settings, socket_timeout=1.0, socket_connect_timeout=1.0)
            self.beat(c)
            self.tref = c.timer.call_repeatedly(interval, self.beat, (c,))

        def beat(self, c: Any) -> None:
            """One heartbeat (a single round trip); a failure is logged, never raised."""
            task = c.app.tasks.get(PREDICT_TASK)
            queues = sorted(q.name for q in getattr(c.task_consumer, "queues", None) or [])
            info = {"queues": queues, "pid": os.getpid(), "started_at": self.started_at,
                    "concurrency": getattr(c.pool, "num_processes", None),
                    "buffered": len(getattr(task, "_reqs", ())),
                    "inflight": getattr(task, "_inflight", 0)}
            now = time.time()
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys.workers_alive(), {c.hostname: now})
                    pipe.set(keys.worker_info(c.hostname), orjson.dumps(info), ex=ttl)
                    pipe.zremrangebyscore(keys.workers_alive(), "-inf", now - ttl)
                    pipe.execute()
            except Exception as e:
                log.warning("heartbeat failed: %r", e)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None
            task = c.app.tasks.get(PREDICT_TASK)
            returned = task.return_buffered() if hasattr(task, "return_buffered") else 0
            if returned:
                log.info("returned %d buffered job(s) to the queue", returned)
            if self.client is not None:
                try:
                    with self.client.pipeline(transaction=False) as pipe:
                        pipe.zrem(keys.workers_alive(), c.hostname)
                        pipe.delete(keys.worker_info(c.hostname))
                        pipe.execute()
                except Exception as e:
                    log.warning("could not remove the heartbeat: %r", e)
                self.client.close()
                self.client = None

        def shutdown(self, c: Any) -> None:
            self.stop(c)

    return Lifecycle
