"""The batch lane: the Celery side of batch files, one lower-priority lane per predict queue.

Each predict queue ``Q`` has a lane ``Q.batch`` carrying ``predq.batch_split`` and
``predq.batch_chunk`` messages (``predq.worker.batchfiles.chunks``); a worker that consumes ``Q``
consumes
``Q.batch`` too. Interactive work goes first, for three reasons:

- lane tasks run in the lane's own processes (spawned once, at a lower CPU priority,
  ``LANE_NICE``), never in the prefork pool that runs predict batches: a /predict never
  waits for a chunk to finish, and when CPUs are scarce the kernel serves it first;
- at most ``PREDQ_BATCH_PROCESSES`` lane tasks run at once per worker (default: as many as
  its pool has processes);
- the worker holds no more lane messages than that budget: when it is full it stops
  consuming its lane queues (kombu ``cancel_by_queue``) and resumes when a task ends. So a
  million-row batch's chunks wait in Redis, where any worker with room takes the next one
  (two workers split one file), and never fill a worker's prefetch slots ahead of /predict.

Messages are acknowledged when their task returned (acks late): a lane process that dies
mid-chunk has its message requeued, and a worker killed outright has it restored by the
broker after the visibility timeout; the chunk runs again (see predq.worker.batchfiles.chunks for
why that
is safe). The lane's main-process timer also sweeps expired files
(predq.shared.batchfiles.filestore.sweep).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from celery import Celery, Task, signals
from kombu import Queue

from predq.shared.batchfiles.batchstore import CHUNK_TASK, SPLIT_TASK
from predq.shared.batchfiles.filestore import FileStore, sweep
from predq.shared.jobstore.keys import Keys
from predq.shared.observability.logs import configure_logging
from predq.shared.redis_conn import sync_client
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings
from predq.worker.batchfiles.chunks import ChunkRunner
from predq.worker.batching.strategy import request_factory
from predq.worker.lifecycle import node_name
from predq.worker.model_cache import ModelCache

log = logging.getLogger("predq.worker.batches")

#: Pause before a lane task that failed outside its work (Redis down) is requeued.
RETRY_PAUSE_S = 2.0
#: Niceness of the lane's processes: when CPUs are scarce, the kernel runs the predict pool
#: (nice 0) first, so /predict latency barely moves while a batch runs.
LANE_NICE = 10

_runner: dict[str, Any] = {}


def lane_process_init(settings: Settings, served: list[str]) -> None:
    """The start of a lane process: a lower CPU priority (``LANE_NICE``) and its own model
    cache (predq.worker.model_cache), holding the default version of each model whose queue is in
    ``served`` when ``PREDQ_PRELOAD_MODELS`` is on (errors are logged: a model that cannot
    load fails its own batches later, clearly)."""
    try:
        os.nice(LANE_NICE)
    except OSError:  # not permitted here: the separate processes still keep /predict free
        pass
    configure_logging(settings, "worker")
    cache = ModelCache(Registry(settings.registry_root), settings.model_cache_size)
    _runner.update(settings=settings, cache_of=lambda: cache)
    if settings.preload_models:
        try:
            for info in cache.registry.list_models()[: settings.model_cache_size]:
                if settings.queue_for(info.name) in served:
                    cache.get(info.name, info.default_version)
        except Exception as e:
            log.warning("lane process could not preload models: %s", e)


def run_lane_task(name: str, args: list[Any]) -> dict[str, Any]:
    """Runs in a lane process. Never raises: an error is returned for a requeue."""
    try:
        settings, cache_of = _runner["settings"], _runner["cache_of"]
        runner = _runner.get("r")
        if runner is None or _runner.get("pid") != os.getpid():
            client = sync_client(settings, health_check_interval=30, socket_keepalive=True,
                                 retry_on_timeout=True)
            runner = ChunkRunner(client, settings, cache_of)
            _runner.update(r=runner, pid=os.getpid())
        if name == SPLIT_TASK:
            result = runner.split(str(args[0]))
        else:
            result = runner.chunk(str(args[0]), int(args[1]))
        return {"result": result}
    except Exception as e:
        log.error("%s %s failed: %r", name, args, e, exc_info=True)
        return {"retry": f"{type(e).__name__}: {e}"}


class Lane:
    """The consumer-side budget of lane tasks (see the module docstring)."""

    def __init__(self, settings: Settings, cache_of: Any) -> None:
        self.settings = settings
        self.cache_of = cache_of
        self.held: deque[Any] = deque()
        self.running = 0
        self.slots = 1
        self.paused = False
        self.consumer: Any = None
        self.queues: list[str] = []
        self._started = False
        self._executor: ProcessPoolExecutor | None = None

    def strategy(self, task: Any, app: Celery, consumer: Any) -> Any:
        make_request = request_factory(task, app, consumer)
        # Called again when the consumer restarts (a lost broker connection): it consumes
        # every queue afresh, so nothing is paused any more.
        self.consumer = consumer
        self.paused = False
        if not self._started:
            self._started = True
            limit = int(getattr(consumer.pool, "limit", 1) or 1)
            self.slots = self.settings.batch_processes or limit
            consume = app.amqp.queues.consume_from or app.amqp.queues
            self.queues = [q for q in consume if q.endswith(".batch")]
            interval = max(1.0, min(60.0, self.settings.file_ttl_s / 4))
            # The lane processes start with the first batch task (not here: a worker that
            # never sees a batch keeps only its predict pool).
            consumer.timer.call_repeatedly(interval, self.sweep)

        def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                    **kw: Any) -> None:
            req = make_request(message, body, ack, reject)
            req.send_event("task-received", name=req.name, args=req.argsrepr,
                           kwargs=req.kwargsrepr, root_id=req.root_id,
                           parent_id=req.parent_id, retries=0, eta=None, expires=None)
            self.held.append(req)
            self.pump()

        return handler

    # -- budget ----------------------------------------------------------------------------
    def pump(self) -> None:
        while self.held and self.running < self.slots:
            self._dispatch(self.held.popleft())
        self._throttle()

    def _throttle(self) -> None:
        full = self.running + len(self.held) >= self.slots
        if full and not self.paused:
            self.paused = True
            for q in self.queues:
                self.consumer.task_consumer.cancel_by_queue(q)
        elif not full and self.paused:
            self.paused = False
            for q in self.queues:
                self.consumer.task_consumer.add_queue(Queue(q, routing_key=q))
            self.consumer.task_consumer.consume()

    def _dispatch(self, req: Any) -> None:
        self.running += 1
        started = [time.monotonic()]

        def on_accepted(pid: int, time_accepted: float) -> None:
            started[0] = time.monotonic()
            try:
                req.send_event("task-started")
            except Exception:
                log.exception("could not send task-started")

        def on_return(result: dict[str, Any]) -> None:
            try:
                if isinstance(result, dict) and "retry" in result:
                    req.send_event("task-failed", exception=result["retry"], traceback="")
                    self.consumer.timer.call_after(RETRY_PAUSE_S, req.reject, (),
                                                   {"requeue": True})
                else:
                    log.info("batch %s on %s: %s", req.args[0], node_name(),
                             result.get("result"))
                    req.send_event("task-succeeded", result=str(result.get("result")),
                                   runtime=time.monotonic() - started[0])
                    req.acknowledge()
            finally:
                self._slot_free()

        def on_error(exc: Any) -> None:
            try:
                log.error("%s %s lost its pool process (%r): requeued", req.name, req.args,
                          exc)
                req.send_event("task-failed", exception=f"worker lost: {exc!r}", traceback="")
                req.reject(requeue=True)
            finally:
                self._slot_free()

        try:
            future = self.executor().submit(run_lane_task, req.name, list(req.args))
        except Exception as e:  # shutting down, or the pool broke: the message goes back
            self._executor = None
            on_error(e)
            return
        on_accepted(0, time.time())
        consumer = self.consumer

        def done(f: Future[dict[str, Any]]) -> None:
            if f.cancelled():
                consumer.call_soon(on_error, RuntimeError("cancelled at shutdown"))
                return
            exc = f.exception()
            if exc is not None:
                if isinstance(exc, BrokenProcessPool):
                    self._executor = None  # a lane process died: a fresh pool next time
                consumer.call_soon(on_error, exc)
            else:
                consumer.call_soon(on_return, f.result())

        future.add_done_callback(done)

    def executor(self) -> ProcessPoolExecutor:
        """The lane's own processes (spawned, niced): chunks never take the predict pool's
        processes, so interactive work never waits for a chunk to finish."""
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"),
                initializer=lane_process_init,
                initargs=(self.settings, [q.removesuffix(".batch") for q in self.queues]))
        return self._executor



    def stop(self) -> None:
        """Shutdown: chunks not started go back to the broker; running ones are left to
        finish or to die with the worker (their messages are then redelivered)."""
        self.return_held()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _slot_free(self) -> None:
        self.running -= 1
        self.pump()

    def return_held(self) -> int:
        """Shutdown: give the lane messages not started back to the broker."""
        n = 0
        while self.held:
            req = self.held.popleft()
            try:
                req.reject(requeue=True)
                n += 1
            except Exception as e:
                log.warning("could not requeue %s: %r", req.id, e)
        return n

    def sweep(self) -> None:
        try:
            client = _runner.get("main")
            if client is None:
                client = _runner["main"] = sync_client(self.settings, socket_timeout=5)
            n = sweep(client, Keys(self.settings.key_prefix),
                      FileStore(self.settings.files_root))
            if n:
                log.info("freed the disk of %d expired files and batches", n)
        except Exception:
            log.warning("file sweep failed", exc_info=True)


def register_batch_tasks(app: Celery, settings: Settings, cache_of: Any) -> Lane:
    """Register the lane's two tasks on ``app``; ``cache_of()`` is the pool process's model
    cache (the one its predict batches use)."""
    lane = Lane(settings, cache_of)
    _runner.update(settings=settings, cache_of=cache_of)  # for direct calls (apply())

    class LaneTask(Task):  # type: ignore[misc]
        abstract = True

        def Strategy(self, task: Any, app: Celery, consumer: Any) -> Any:  # noqa: N802
            return lane.strategy(task, app, consumer)

    @app.task(base=LaneTask, name=SPLIT_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
    def batch_split(self: Any, batch_id: str) -> Any:  # pragma: no cover - via the lane
        return run_lane_task(SPLIT_TASK, [batch_id])

    @app.task(base=LaneTask, name=CHUNK_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
    def batch_chunk(self: Any, batch_id: str, k: int) -> Any:  # pragma: no cover
        return run_lane_task(CHUNK_TASK, [batch_id, k])

    def _on_shutdown(**_: Any) -> None:
        lane.stop()

    signals.worker_shutting_down.connect(_on_shutdown, weak=False)
    app.predq_lane = lane  # type: ignore[attr-defined]
    return lane
