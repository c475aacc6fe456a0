"""The micro-batching Celery task: celery-batches, with its known gaps closed.

celery-batches buffers task messages in the worker's consumer and hands the buffer to one
pool process as a single call. Its stock flush is a timer that starts at the first arrival,
so a lone request always waits the whole interval. This subclass flushes *adaptively*:

- when a pool process is free, the buffer is handed over at once (an idle system adds no
  wait);
- while every process is busy, requests accumulate, and the buffer is handed over as soon as
  a process frees up, or at ``max_batch_jobs`` jobs / ``max_batch_rows`` rows, or after
  ``max_wait_ms`` (whichever is first).

So the batch size follows the load: about (arrival rate x predict time) jobs per call.

It also closes the other gaps: per-job task events (received, started, succeeded, failed,
revoked) so that Flower shows every job; per-job results and failures are written by
:class:`worker.predict.BatchPredictor`; messages are acknowledged only after their batch
returned, and a batch whose pool process died is requeued (the job store counts deliveries
and fails a job that keeps killing workers).

Each message held gets a lease token, passed to the claim: while the batch is in flight the
consumer renews its jobs' leases (``lease_renew_s``), so that a duplicate message of one of
them (kombu restoring an old unacknowledged message, the reaper republishing) is skipped by
the claim instead of predicted again; it is acknowledged and sends no final event. Before a
message goes back to the queue its lease is released.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

from celery_batches import Batches

from worker.strategy import request_factory

log = logging.getLogger("predq.worker.batching")


def execute_batch(task: PredictBatches, batch_id: str,
                  requests: list[tuple[str, str, str, int, str]]) -> dict[str, Any]:
    """Runs in a pool process: predict one batch, return each job's outcome (picklable).

    Never raises: an error outside any one job (Redis unreachable, say) is returned as
    ``{"retry": reason}`` and the consumer requeues the batch after a pause.
    """
    try:
        return task.run_batch(batch_id, requests)
    except Exception as e:
        log.error("batch %s failed outside any job: %r", batch_id, e, exc_info=True)
        return {"retry": f"{type(e).__name__}: {e}"}


def _announce(reqs: list[Any]) -> None:
    """Send task-received for each request not announced yet.

    Sent when a batch is dispatched rather than on arrival, so that Celery's event buffer
    publishes a batch's events together (one ``task.multi`` message) instead of one per job.
    """
    for r in reqs:
        if not getattr(r, "_predq_announced", False):
            r._predq_announced = True
            r.send_event("task-received", name=r.name, args=r.argsrepr, kwargs=r.kwargsrepr,
                         root_id=r.root_id, parent_id=r.parent_id, retries=0, eta=None,
                         expires=None)


def _send_outcomes(reqs: list[Any], result: dict[str, Any], batch_id: str,
                   runtime: float) -> None:
    """Each request's final task event, from the batch's outcomes.

    A duplicate delivery (of a job another delivery runs or ran) sends none: the other
    delivery's event is the job's state, and Flower must not show it revoked or failed.
    """
    outcomes = result.get("outcomes", {})
    duplicates = set(result.get("duplicates", ()))
    for pos, r in enumerate(reqs):
        if pos in duplicates:
            continue
        state, _, error = outcomes.get(r.id, ("FAILURE", 0, "no outcome"))
        if state == "SUCCESS":
            r.send_event("task-succeeded", result=f"batch {batch_id}", runtime=runtime)
        elif state == "REVOKED":
            r.send_event("task-revoked", terminated=False, signum=None,
                         expired=error == "expired")
        else:
            r.send_event("task-failed", exception=str(error), traceback="")


def ack_all(reqs: list[Any]) -> None:
    """Acknowledge a batch's messages in one Redis round trip.

    kombu's Redis QoS acks each message with its own pipeline (ZREM + HDEL); for a batch of
    N jobs that is N round trips on the consumer's single thread. This removes all the batch's
    delivery tags in one pipeline, then updates kombu's and Celery's local bookkeeping. Any
    other transport, or anything unexpected, falls back to acking one by one.
    """
    pending = [r for r in reqs if not r.acknowledged]
    if not pending:
        return
    try:
        from kombu.transport import virtual
        from kombu.transport.redis import QoS as RedisQoS

        qos = pending[0].message.channel.qos
        if not isinstance(qos, RedisQoS) or len(pending) == 1:
            raise TypeError("not batchable")
        tags = [r.message.delivery_tag for r in pending]
        with qos.pipe_or_acquire() as pipe:
            pipe.zrem(qos.unacked_index_key, *tags).hdel(qos.unacked_key, *tags).execute()
        for r in pending:
            virtual.QoS.ack(qos, r.message.delivery_tag)  # local state only
            r.message._state = "ACK"
            r.acknowledged = True
    except Exception:
        for r in pending:
            if not r.acknowledged:
                r.acknowledge()


class PredictBatches(Batches):
    """Base class of the ``predq.predict`` task (see the module docstring)."""

    abstract = True
    max_batch_jobs = 256
    max_batch_rows = 20_000
    max_wait_s = 0.010
    #: Hard time limit of one batch in seconds (None: no limit).
    batch_time_limit: float | None = None
    #: Seconds between reaper passes (0: off); see worker.reaper.
    reap_interval_s = 0.0
    #: Pause before a batch that failed outside its jobs is requeued.
    retry_pause_s = 1.0
    #: Seconds between renewals of the claim leases of the jobs in flight (0: off).
    lease_renew_s = 0.0

    def __init__(self) -> None:
        super().__init__()
        self._reqs: list[Any] = []
        self._rows = 0
        self._inflight = 0
        self._slots = 1
        self._timer: Any = None
        self._tref: Any = None
        self._suspects: OrderedDict[str, None] = OrderedDict()
        #: Lease token -> (job id, renew-until) of every request handed to the pool and not
        #: returned yet. Renewals stop at renew-until (twice the batch's hard limit after its
        #: flush), so a batch whose callbacks never come cannot keep a lease alive forever.
        self._leases: dict[str, tuple[str, float]] = {}

    # -- pool side ----------------------------------------------------------------
    def run_batch(self, batch_id: str, requests: list[Any]) -> dict[str, Any]:
        """Predict ``requests`` (``(job_id, model, version, n_rows, lease_token)``)."""
        raise NotImplementedError

    def reap(self) -> None:
        """Consumer side, every ``reap_interval_s``: redeliver stuck jobs (worker.reaper)."""

    def renew_leases(self, leases: list[tuple[str, str]]) -> None:
        """Consumer side: extend the claim leases ``(job_id, token)`` of the jobs in flight."""

    def release_leases(self, leases: list[tuple[str, str]]) -> bool:
        """Consumer side: drop the leases ``(job_id, token)`` of requests about to go back to
        the queue; False when that could not be done (then they must not be requeued)."""
        return True

    # -- consumer side ------------------------------------------------------------
    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 (Celery API)
        self._pool = consumer.pool
        self._slots = max(1, int(getattr(consumer.pool, "limit", 1) or 1))
        self._timer = consumer.timer
        if self.reap_interval_s > 0:
            consumer.timer.call_repeatedly(self.reap_interval_s, self.reap)
        if self.lease_renew_s > 0:
            consumer.timer.call_repeatedly(self.lease_renew_s, self._renew)
        make_request = request_factory(task, app, consumer)

        def task_message_handler(message: Any, body: Any, ack: Any, reject: Any,
                                 callbacks: Any, **kw: Any) -> None:
            self._add(make_request(message, body, ack, reject))

        return task_message_handler

    def _suspect(self, job_id: str) -> None:
        """Remember a job whose batch lost its process: it runs alone from now on."""
        self._suspects[job_id] = None
        while len(self._suspects) > 10_000:
            self._suspects.popitem(last=False)

    def _renew(self) -> None:
        """Keep the leases of the jobs in flight alive (a live worker's never lapse)."""
        now = time.monotonic()
        for token in [t for t, (_, until) in self._leases.items() if until < now]:
            del self._leases[token]
        if self._leases:
            try:
                self.renew_leases([(job_id, t) for t, (job_id, _) in self._leases.items()])
            except Exception as e:
                log.warning("could not renew the leases of %d jobs: %r", len(self._leases), e)

    def _give_back(self, reqs: list[Any]) -> list[Any]:
        """The requests that may go back to the queue: their leases are dropped first, so that
        the redelivered message is not taken for a duplicate of a live delivery. If that
        fails, none may: they stay unacknowledged and kombu restores them after the
        visibility timeout, by when their leases have lapsed."""
        leases = [(str(r.id), r._predq_token) for r in reqs
                  if getattr(r, "_predq_token", None)]
        if not leases:
            return reqs
        try:
            if self.release_leases(leases):
                return reqs
        except Exception as e:
            log.warning("could not release the leases of %d jobs: %r", len(leases), e)
        log.warning("%d jobs stay unacknowledged until the visibility timeout (their leases "
                    "could not be released)", len(reqs))
        return []

    def _give_back_and_requeue(self, reqs: list[Any]) -> None:
        self._requeue(self._give_back(reqs))

    def _add(self, req: Any) -> None:
        if req.id in self._suspects:  # it was in a batch whose process died: run it alone
            self.flush([req])
            return
        try:
            n_rows = int(req.args[3])
        except (IndexError, TypeError, ValueError):
            n_rows = 1
        self._reqs.append(req)
        self._rows += n_rows
        if (self._inflight < self._slots or len(self._reqs) >= self.max_batch_jobs
                or self._rows >= self.max_batch_rows):
            self._flush_now()
        elif self._tref is None:
            self._tref = self._timer.call_after(self.max_wait_s, self._on_timer)

    def _on_timer(self) -> None:
        # max_wait_ms bounds how long a buffered job waits for a *free process*: handing a
        # batch to a pool whose processes are all busy would only queue it there, cut in
        # smaller slices. While the pool is busy, the next free slot flushes the buffer.
        self._tref = None
        if self._reqs and self._inflight < self._slots:
            self._flush_now()

    def _flush_now(self) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        reqs, self._reqs, self._rows = self._reqs, [], 0
        while reqs:  # a flush never exceeds max_batch_jobs
            chunk, reqs = reqs[: self.max_batch_jobs], reqs[self.max_batch_jobs:]
            self.flush(chunk)

    def _on_slot_free(self) -> None:
        self._inflight -= 1
        if self._reqs and self._inflight < self._slots:
            self._flush_now()

    def _requeue(self, reqs: list[Any]) -> None:
        for r in reqs:
            r.reject(requeue=True)
        if self._reqs and self._inflight < self._slots:
            self._flush_now()

    def return_buffered(self) -> int:
        """Shutdown: give the buffered (never started) requests back to the broker.

        Called by the consumer's lifecycle step when consuming stops, before the pool drains:
        each message is requeued at the head of its queue for another worker, and nothing is
        flushed to a pool that no longer accepts work. Returns how many were returned.
        """
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        reqs, self._reqs, self._rows = self._reqs, [], 0
        for r in reqs:
            try:
                r.reject(requeue=True)
            except Exception as e:  # the channel is gone: the broker restores it on its own
                log.warning("could not requeue job %s: %r", r.id, e)
        return len(reqs)

    def _leased(self, reqs: list[Any]) -> list[tuple[str, str, str, int, str]]:
        """The pool's payload of a batch; each request's lease token (one per message held,
        kept when the same request runs again) is renewed while the batch is in flight."""
        until = time.monotonic() + 2 * (self.batch_time_limit or 86_400.0)
        for r in reqs:
            if not getattr(r, "_predq_token", None):
                r._predq_token = uuid.uuid4().hex
            self._leases[r._predq_token] = (str(r.args[0]), until)
        return [(str(r.args[0]), str(r.args[1]), str(r.args[2]), int(r.args[3]),
                 r._predq_token) for r in reqs]

    def flush(self, requests: Any) -> Any:
        reqs = list(requests)
        batch_id = uuid.uuid4().hex[:12]
        payload = self._leased(reqs)
        self._inflight += 1
        t_start = [time.time()]
        _announce(reqs)

        def on_accepted(pid: int, time_accepted: float) -> None:
            t_start[0] = time.time()
            # billiard swallows whatever this raises, so a bug here would only hide events.
            try:
                for r in reqs:
                    # No pid=: the event dispatcher adds its own (a duplicate is a TypeError).
                    r.send_event("task-started")
            except Exception:
                log.exception("batch %s: could not send task-started events", batch_id)

        def landed() -> None:
            for r in reqs:
                self._leases.pop(r._predq_token, None)

        def on_return(result: dict[str, Any]) -> None:
            landed()
            if isinstance(result, dict) and "retry" in result:
                # Not the jobs' fault: put them back after a pause (no hot loop).
                self._inflight -= 1
                self._timer.call_after(self.retry_pause_s, self._give_back_and_requeue,
                                       (reqs,))
                return
            try:
                _send_outcomes(reqs, result if isinstance(result, dict) else {}, batch_id,
                               time.time() - t_start[0])
                ack_all(reqs)
            finally:
                self._on_slot_free()

        def on_error(exc: Any) -> None:
            # The pool process died (killed, OOM, hard time limit). A batch of several jobs is
            # split: each job runs again alone, straight from the messages we still hold, so
            # a job that kills its process cannot take the jobs merged beside it down with it.
            # A job that dies alone is requeued; the job store counts deliveries, so one that
            # keeps killing its worker is failed after ``max_deliveries`` instead of looping.
            landed()
            try:
                log.error("batch %s lost its pool process (%r): %s %d jobs", batch_id, exc,
                          "isolating" if len(reqs) > 1 else "requeueing", len(reqs))
                for r in reqs:
                    self._suspect(r.id)
                    if len(reqs) > 1:
                        self.flush([r])
                    else:
                        r.send_event("task-failed", exception=f"worker lost: {exc!r}",
                                     traceback="")
                        if self._give_back([r]):
                            r.reject(requeue=True)
            finally:
                self._on_slot_free()

        return self._pool.apply_async(
            execute_batch, (self, batch_id, payload),
            accept_callback=on_accepted, callback=on_return, error_callback=on_error,
            timeout=self.batch_time_limit, soft_timeout=None,
        )
