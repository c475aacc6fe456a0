"""The ``predq.webhook`` Celery task, delivered beside the predict pool, never inside it.

A delivery waits on someone else's server for up to the webhook timeout. Run in the prefork
pool, a few dead receivers would hold every pool process and stall the predict batches, so
the task has its own consumer strategy (as ``predq.predict`` does): each message is handed
to a small thread pool in the worker's main process (``PREDQ_WEBHOOK_CONCURRENCY`` threads),
and acknowledged from the consumer's event loop once its attempt is recorded (acks late: a
worker that dies mid-attempt leaves the message to be redelivered). Messages held for the
threads raise the consumer's prefetch limit, as ETA tasks do, and beyond a few per thread a
message is parked in ``webhook_due`` and acknowledged at once, so a backlog of deliveries to
dead receivers waits in Redis and never takes the predict queues' prefetch slots.

Retries are not Celery ETA messages: Redis redelivers ETA messages held past the visibility
timeout, and the schedule spans hours. The delivery writes the due time into the
``webhook_due`` sorted set, and a pump thread in every worker publishes due deliveries as
ordinary ``predq.webhook`` messages (the Lua script makes each publication happen once),
never more than its threads have room for.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import Celery, Task, signals

from predq.shared.jobstore.messages import WEBHOOK_TASK, webhook_message
from predq.shared.redis_conn import sync_client
from predq.shared.settings import Settings
from predq.shared.webhooks.state import due_member, split_member
from predq.worker.batching.strategy import request_factory
from predq.worker.webhook_delivery import LEASE_MARGIN_S, Deliverer

log = logging.getLogger("predq.worker.webhooks")

#: How often the pump looks for due retries (also the latency it adds to one).
PUMP_INTERVAL_S = 0.25
#: Most due deliveries published per pump round trip.
PUMP_BATCH = 200
#: Pause before a message whose delivery raised (Redis unreachable) is requeued.
REQUEUE_PAUSE_S = 2.0
#: Messages held per delivery thread (in flight or waiting); more are parked in Redis.
HELD_PER_THREAD = 4
#: A parked message is published again after this many seconds (by a pump with room).
PARK_DELAY_S = 1.0


class WebhookRunner:
    """Consumer-side delivery: a thread pool, the pump, and the Celery strategy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._deliverer: Deliverer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pump: threading.Thread | None = None
        self._stopping = threading.Event()
        self._held = 0
        self.capacity = settings.webhook_concurrency * HELD_PER_THREAD

    # -- resources (created on first use, in the process that uses them) ----------------
    def deliverer(self) -> Deliverer:
        with self._lock:
            if self._deliverer is None:
                client = sync_client(
                    self.settings, health_check_interval=30, socket_keepalive=True,
                    retry_on_timeout=True, socket_timeout=10)
                self._deliverer = Deliverer(client, self.settings)
            return self._deliverer

    def start(self, pump: bool = True) -> None:
        """Start the delivery threads and, with ``pump``, the pump (idempotent)."""
        # httpx logs every request URL at INFO; receivers' URLs often carry tokens.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.settings.webhook_concurrency,
                                                    thread_name_prefix="predq-webhook")
            if self._pump is None and pump:
                self._pump = threading.Thread(target=self._pump_loop, name="predq-webhook-pump",
                                              daemon=True)
                self._pump.start()

    def stop(self) -> None:
        """Stop the pump; cancel waiting deliveries (their messages stay unacked, so the
        broker restores them); attempts in flight finish within the timeout."""
        self._stopping.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the pump ----------------------------------------------------------------------
    def pump_once(self, now: float | None = None, limit: int | None = None) -> int:
        """Publish deliveries whose time has come (at most ``limit``); returns how many."""
        store = self.deliverer().store
        now = time.time() if now is None else now
        total = 0
        while True:
            want = PUMP_BATCH if limit is None else min(PUMP_BATCH, limit - total)
            members = store.due(now, want) if want > 0 else []
            if not members:
                return total
            entries = []
            for member in members:
                job_id, event = split_member(member)
                entries.append((member, webhook_message(job_id, event,
                                                        self.settings.webhook_queue)))
            lease_until = now + self.settings.webhook_timeout_s + LEASE_MARGIN_S
            total += int(store.pump(now, lease_until, entries))
            if len(members) < want:
                return total

    def _pump_loop(self) -> None:
        while not self._stopping.wait(PUMP_INTERVAL_S):
            room = self.capacity - self._held  # publish no more than this worker can take
            try:
                if room > 0:
                    self.pump_once(limit=room)
            except Exception:
                log.warning("webhook pump: Redis error; retrying", exc_info=True)
                self._stopping.wait(1.0)

    # -- the Celery side ----------------------------------------------------------------
    def strategy(self, task: Any, app: Celery, consumer: Any) -> Any:
        """The message handler of ``predq.webhook`` (see the module docstring)."""
        queues = app.amqp.queues
        self.start(pump=self.settings.webhook_queue in (queues.consume_from or queues))
        make_request = request_factory(task, app, consumer)

        def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                    **kw: Any) -> None:
            req = make_request(message, body, ack, reject)
            req.send_event("task-received", name=req.name, args=req.argsrepr,
                           kwargs=req.kwargsrepr, root_id=req.root_id,
                           parent_id=req.parent_id, retries=0, eta=None, expires=None)
            self._submit(req, consumer)

        return handler

    def _submit(self, req: Any, consumer: Any) -> None:
        """Hand ``req`` to a delivery thread (called on the consumer's event loop)."""
        executor = self._executor
        if executor is None or self._stopping.is_set():
            return  # shutting down: left unacked, restored by the broker
        if self._held >= self.capacity:
            self._park(req, consumer)
            return
        consumer.qos.increment_eventually()
        self._held += 1
        started = time.monotonic()
        try:
            future = executor.submit(self._run, req.args)
        except RuntimeError:  # the executor was shut down meanwhile
            self._held -= 1
            consumer.qos.decrement_eventually()
            return
        future.add_done_callback(
            lambda f: consumer.call_soon(self._done, req, f, consumer, started))

    def _park(self, req: Any, consumer: Any) -> None:
        """Track a message the threads have no room for in ``webhook_due``, then ack it.

        ZADD NX: a member already there (a retry, an attempt in flight) keeps its time, and
        already guarantees a later message.
        """
        job_id, event = str(req.args[0]), str(req.args[1])
        try:
            d = self.deliverer()
            d.client.zadd(d.keys.webhook_due(),
                          {due_member(job_id, event): time.time() + PARK_DELAY_S}, nx=True)
        except Exception:
            log.warning("webhook %s: cannot park it; requeued", req.args, exc_info=True)
            consumer.timer.call_after(REQUEUE_PAUSE_S, req.reject, (), {"requeue": True})
            return
        log.debug("webhook %s parked in Redis: %d deliveries held", req.args, self._held)
        req.acknowledge()

    def _run(self, args: list[Any]) -> str:
        job_id, event = str(args[0]), str(args[1])
        return self.deliverer().deliver(job_id, event)

    def _done(self, req: Any, future: Future[str], consumer: Any, started: float) -> None:
        """Acknowledge (or requeue) on the consumer's event loop, where kombu may be used."""
        self._held -= 1
        consumer.qos.decrement_eventually()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            _send_outcome(req, future.result(), time.monotonic() - started)
            req.acknowledge()
            return
        log.error("webhook %s: delivery raised; requeued in %gs", req.args, REQUEUE_PAUSE_S,
                  exc_info=exc)
        req.send_event("task-failed", exception=repr(exc), traceback="")
        consumer.timer.call_after(REQUEUE_PAUSE_S, req.reject, (), {"requeue": True})


def _send_outcome(req: Any, result: str, runtime: float) -> None:
    """The task event of one attempt, so Flower's state tells the truth: FAILURE for a
    delivery that failed for good (a 410, an exhausted retry schedule: it is dead-lettered),
    RETRY for a failed attempt that will be retried, SUCCESS when it was delivered or had
    nothing left to do (``skipped: ...``, e.g. already delivered)."""
    job_id, event = req.args[0], req.args[1]
    if result == "failed":
        req.send_event("task-failed", traceback="", exception=(
            f"WebhookFailed: {event} of job {job_id} failed for good and was dead-lettered "
            "(see the job's webhook.detail and GET /v1/webhooks/dead)"))
    elif result == "retry":
        req.send_event("task-retried", traceback="", exception=(
            f"WebhookRetry: {event} of job {job_id}: attempt failed, another is scheduled "
            "(see the job's webhook.next_attempt_at)"))
    else:
        req.send_event("task-succeeded", result=result, runtime=runtime)


def register_webhook_task(app: Celery, settings: Settings) -> WebhookRunner:
    """Register ``predq.webhook`` on ``app``; returns the runner that delivers it."""
    runner = WebhookRunner(settings)

    class WebhookTask(Task):  # type: ignore[misc]
        abstract = True

        def Strategy(self, task: Any, app: Celery, consumer: Any) -> Any:  # noqa: N802
            return runner.strategy(task, app, consumer)

    @app.task(base=WebhookTask, name=WEBHOOK_TASK, bind=True,  # type: ignore[untyped-decorator]
              acks_late=True)
    def webhook(self: Any, job_id: str, event: str) -> str:
        """Deliver in the calling thread (used only when called directly, e.g. apply())."""
        return runner.deliverer().deliver(job_id, event)

    def _on_shutdown(**_: Any) -> None:
        runner.stop()

    signals.worker_shutting_down.connect(_on_shutdown, weak=False)
    app.predq_webhooks = runner
    return runner
