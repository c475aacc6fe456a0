"""The micro-batching Celery task: celery-batches, with its known gaps closed.

celery-batches buffers task messages in the worker's consumer and hands the buffer to one
pool process as a single call. Its stock flush is a timer that starts at the first arrival,
so a lone request always waits the whole interval. This subclass flushes *adaptively*, by
the framework-free :class:`predq.worker.batching.policy.FlushPolicy`:

- when a pool process is free, the buffer is handed over at once (an idle system adds no
  wait);
- while every process is busy, requests accumulate, and the buffer is handed over as soon as
  a process frees up, or at ``max_batch_jobs`` jobs / ``max_batch_rows`` rows, or after
  ``max_wait_ms`` if a process is free by then (whichever is first).

So the batch size follows the load: about (arrival rate x predict time) jobs per call. This
module is the Celery-bound adapter around that policy: it feeds it the events (a message
arrived, the Celery timer fired, a batch went to the pool or came back) and acts on its
answers with Celery's timer and ``pool.apply_async``.

Messages fetched together (:mod:`predq.worker.batching.transport` delivers a fetch of two or
more inside :func:`predq.worker.batching.group.delivering`) are one arrival: the first of a
group puts the policy on hold and registers an end callback; each is buffered, and at the
group's end (also when one of its deliveries raised) the buffer is flushed once, spread over
the free pool processes. A message delivered alone is flushed at once, as before.

It also closes the other gaps: per-job task events so that Flower shows every job (its
name, args, state, received/started/final times and runtime: one final event per job that
carries what task-received and task-started would have said, unless its batch runs longer
than ``INFLIGHT_EVENTS_AFTER_S``, when its jobs are announced while it runs; see
:func:`_announce`); per-job results and failures are written by
:class:`predq.worker.predict.BatchPredictor`; messages are acknowledged only after their batch
returned, and a batch whose pool process died is requeued (the job store counts deliveries
and fails a job that keeps killing workers).

The consumer's own state survives Celery's consumer restart (a lost broker connection): the
batches handed to the pool are tracked one by one, and when the consumer starts again
(:meth:`PredictBatches.Strategy`), the batches that the pool dropped on the restart are
forgotten (Celery's ``AsynPool.flush`` discards every batch not yet accepted by a process
without calling back), so the count of busy slots always matches the pool. Before that was
done a worker could believe every slot busy forever and stall after a Redis restart.

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

from predq.worker.batching import group
from predq.worker.batching.policy import Action, FlushPolicy
from predq.worker.batching.strategy import request_factory

log = logging.getLogger("predq.worker.batching")


def execute_batch(task: PredictBatches, batch_id: str,
                  requests: list[tuple[str, str, str, int]]) -> dict[str, Any]:
    """Runs in a pool process: predict one batch, return each job's outcome (picklable).

    Never raises: an error outside any one job (Redis unreachable, say) is returned as
    ``{"retry": reason}`` and the consumer requeues the batch after a pause.
    """
    try:
        return task.run_batch(batch_id, requests)
    except Exception as e:
        log.error("batch %s failed outside any job: %r", batch_id, e, exc_info=True)
        reason = f"{type(e).__name__}: {e}"
        try:
            task.on_batch_failure(batch_id, [r[0] for r in requests], reason)
        except Exception:
            log.exception("batch %s: could not record the failure", batch_id)
        return {"retry": reason}


#: Seconds a batch may run before its jobs are shown in Flower as received and started while
#: it still runs (a batch that returns sooner sends one event per job: see _job_event).
INFLIGHT_EVENTS_AFTER_S = 1.0


def _received_fields(r: Any) -> dict[str, Any]:
    """What Celery's task-received event says of a job (Flower's name, args, kwargs...)."""
    return {"name": r.name, "args": r.argsrepr, "kwargs": r.kwargsrepr, "root_id": r.root_id,
            "parent_id": r.parent_id, "retries": 0, "eta": None, "expires": None}


def _announce(reqs: list[Any]) -> None:
    """The batch is dispatched: note when each job was received (no event yet).

    Celery sends task-received, task-started and a final event per job; Flower spends its
    CPU per event, and the consumer a Redis round trip per ``task.multi`` message (one per
    loop turn that sent any). A job whose batch returns within
    :data:`INFLIGHT_EVENTS_AFTER_S` sends only its final event, carrying what the other two
    would have said (``name``, ``args``, ... and the ``received`` / ``started`` times):
    celery.events.state merges an event's fields into the task, so Flower shows the job
    exactly as before, with one event instead of three. A longer batch announces its jobs
    while it runs (:func:`_announce_running`).
    """
    now = time.time()
    for r in reqs:
        if getattr(r, "_predq_received_at", None) is None:
            r._predq_received_at = now


def _announce_running(reqs: list[Any], started: float) -> None:
    """task-received and task-started (with their real times) of the jobs not shown yet."""
    for r in reqs:
        if not getattr(r, "_predq_announced", False):
            r._predq_announced = True
            r.send_event("task-received", timestamp=getattr(r, "_predq_received_at", started),
                         **_received_fields(r))
            r.send_event("task-started", timestamp=started)


def _job_event(r: Any, kind: str, started: float | None, **fields: Any) -> None:
    """One event of a job; the first one Flower gets of it also says what task-received
    (and, for a job that ran, task-started) would have."""
    if not getattr(r, "_predq_announced", False):
        r._predq_announced = True
        received = getattr(r, "_predq_received_at", None) or started or time.time()
        if started is None:  # never ran (given back): a real task-received first, so that
            # Flower's prefetched-tasks gauge, counted from task-received, stays balanced
            r.send_event("task-received", timestamp=received, **_received_fields(r))
        else:
            fields = {**_received_fields(r), "received": received, "started": started,
                      **fields}
    r.send_event(kind, **fields)


def _send_outcomes(reqs: list[Any], result: dict[str, Any], batch_id: str,
                   runtime: float) -> None:
    """Each request's final task event, from the batch's outcomes.

    A duplicate delivery (of a job another delivery runs or ran) sends none: the other
    delivery's event is the job's state, and Flower must not show it revoked or failed
    (it is announced as received and started, as every delivery is).
    """
    outcomes = result.get("outcomes", {})
    duplicates = set(result.get("duplicates", ()))
    started = time.time() - runtime
    for pos, r in enumerate(reqs):
        if pos in duplicates:
            _announce_running([r], started)
            continue
        state, _, error = outcomes.get(r.id, ("FAILURE", 0, "no outcome"))
        if state == "SUCCESS":
            _job_event(r, "task-succeeded", started, result=f"batch {batch_id}",
                       runtime=runtime)
        elif state == "REVOKED":
            _job_event(r, "task-revoked", started, terminated=False, signum=None,
                       expired=error == "expired")
        else:
            _job_event(r, "task-failed", started, exception=str(error), traceback="")


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


class _Batch:
    """A batch handed to the pool: its requests and billiard's ApplyResult."""

    __slots__ = ("id", "reqs", "result", "generation")

    def __init__(self, batch_id: str, reqs: list[Any], generation: int) -> None:
        self.id = batch_id
        self.reqs = reqs
        self.result: Any = None
        self.generation = generation

    def dropped_by_pool(self) -> bool:
        """Whether the pool forgot this batch without running it to a callback.

        ``AsynPool.flush`` (run by the consumer when its broker connection is lost) discards
        every job not yet accepted by a process from the pool's cache; its callbacks never run.
        """
        res = self.result
        cache = getattr(res, "_cache", None)
        if res is None or cache is None:
            return False
        return not res.ready() and not getattr(res, "_accepted", True) and res._job not in cache

    def never_sent(self) -> bool:
        """Whether no byte of this batch reached a pool process (so it can never run)."""
        res = self.result
        return (getattr(res, "_scheduled_for", None) is None
                and getattr(res, "_write_to", None) is None)


def _still_unacked(req: Any) -> bool:
    """Whether the broker channel of ``req``'s message still counts it as delivered to us.

    kombu restores every unacknowledged message of a channel when it closes; when Redis is
    down at that moment the restore fails and the messages stay in its ``unacked`` hash until
    the visibility timeout. Only those are worth giving back ourselves at the reconnect.
    """
    msg = getattr(req, "message", None)
    if msg is None or msg.acknowledged:
        return False
    qos = getattr(getattr(msg, "channel", None), "_qos", None)
    delivered = getattr(qos, "_delivered", None)
    return delivered is not None and msg.delivery_tag in delivered


class PredictBatches(Batches):
    """Base class of the ``predq.predict`` task (see the module docstring)."""

    abstract = True
    max_batch_jobs = 256
    max_batch_rows = 20_000
    max_wait_s = 0.010
    #: Hard time limit of one batch in seconds (None: no limit).
    batch_time_limit: float | None = None
    #: Seconds between reaper passes (0: off); see predq.worker.reaper.
    reap_interval_s = 0.0
    #: Pause before a batch that failed outside its jobs is requeued.
    retry_pause_s = 1.0
    #: Seconds between renewals of the claim leases of the jobs in flight (0: off).
    lease_renew_s = 0.0

    def __init__(self) -> None:
        super().__init__()
        #: When to flush: the buffered requests, the busy slots, the limits, the cost fit.
        self._policy: FlushPolicy[Any] = FlushPolicy(
            max_jobs=self.max_batch_jobs, max_rows=self.max_batch_rows,
            max_wait_s=self.max_wait_s, slots=1)
        #: Batches handed to the pool and not returned yet (the busy slots), by batch id;
        #: the policy's busy count follows it (see _track and _untrack).
        self._batches: dict[str, _Batch] = {}
        self._timer: Any = None
        self._tref: Any = None
        self._reap_tref: Any = None
        #: Consumer (re)starts so far: a request belongs to the broker channel of its one.
        self._generation = 0
        #: Requests of the previous connection that could not be given back when it was lost.
        self._unreturned: list[Any] = []
        self._suspects: OrderedDict[str, None] = OrderedDict()
        #: Lease token -> (job id, renew-until) of every request handed to the pool and not
        #: returned yet. Renewals stop at renew-until (twice the batch's hard limit after its
        #: flush), so a batch whose callbacks never come cannot keep a lease alive forever.
        self._leases: dict[str, tuple[str, float]] = {}
        self._renew_tref: Any = None

    @property
    def _inflight(self) -> int:
        """Batches handed to the pool and not returned yet."""
        return self._policy.busy

    @property
    def _reqs(self) -> list[Any]:
        """The buffered requests (read only; the policy holds them)."""
        return self._policy.pending

    @property
    def _slots(self) -> int:
        return self._policy.slots

    def _track(self, batch: _Batch) -> None:
        """The batch goes to the pool: it holds a slot."""
        self._batches[batch.id] = batch
        self._policy.dispatched()

    def _untrack(self, batch_id: str) -> bool:
        """The batch returned or was dropped: its slot is free. False if already forgotten."""
        if self._batches.pop(batch_id, None) is None:
            return False
        self._policy.released()
        return True

    # -- pool side ----------------------------------------------------------------
    def run_batch(self, batch_id: str, requests: list[Any]) -> dict[str, Any]:
        """Predict ``requests`` (``(job_id, model, version, n_rows, lease_token)``)."""
        raise NotImplementedError

    def on_batch_failure(self, batch_id: str, job_ids: list[str], reason: str) -> None:
        """Pool side, after a batch failed outside its jobs (see predq.worker.store_failures)."""

    def reap(self) -> None:
        """Consumer side, every ``reap_interval_s``: redeliver stuck jobs (predq.worker.reaper)."""

    def renew_leases(self, leases: list[tuple[str, str]]) -> None:
        """Consumer side: extend the claim leases ``(job_id, token)`` of the jobs in flight."""

    def release_leases(self, leases: list[tuple[str, str]]) -> bool:
        """Consumer side: drop the leases ``(job_id, token)`` of requests about to go back to
        the queue; False when that could not be done (then they must not be requeued)."""
        return True

    # -- consumer side ------------------------------------------------------------
    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 (Celery API)
        # Called when the consumer starts, and again each time it restarts after losing its
        # broker connection (Celery's Tasks bootstep), before it consumes anything new.
        self._generation += 1
        self._pool = consumer.pool
        policy = self._policy
        policy.slots = max(1, int(getattr(consumer.pool, "limit", 1) or 1))
        policy.max_jobs, policy.max_rows = self.max_batch_jobs, self.max_batch_rows
        policy.max_wait_s = self.max_wait_s
        self._timer = consumer.timer
        self._after_restart()
        if self._reap_tref is not None:  # one reaper timer, not one more per restart
            self._reap_tref.cancel()
            self._reap_tref = None
        if self.reap_interval_s > 0:
            self._reap_tref = consumer.timer.call_repeatedly(self.reap_interval_s, self.reap)
        if self._renew_tref is not None:
            self._renew_tref.cancel()
            self._renew_tref = None
        if self.lease_renew_s > 0:
            self._renew_tref = consumer.timer.call_repeatedly(self.lease_renew_s, self._renew)
        make_request = request_factory(task, app, consumer)
        generation = self._generation

        def task_message_handler(message: Any, body: Any, ack: Any, reject: Any,
                                 callbacks: Any, **kw: Any) -> None:
            req = make_request(message, body, ack, reject)
            req._predq_generation = generation
            self._add(req)

        return task_message_handler

    def _after_restart(self) -> None:
        """Consumer restart: make the busy-slot count match the pool again.

        The batches the pool dropped will never call back: forget them. Their messages
        belonged to the lost connection: kombu restores them when it closes that channel;
        those it could not restore (Redis was down), and buffered requests that could not be
        returned, are given back now if they never reached a process (else kombu's visibility
        timeout brings them back: a batch already written to a process may still run).
        """
        dropped = [b for b in self._batches.values() if b.dropped_by_pool()]
        give_back = list(self._unreturned)
        self._unreturned = []
        for b in dropped:
            self._untrack(b.id)
            if b.never_sent():
                give_back += b.reqs
        if dropped:
            log.warning("the pool dropped %d batch(es) (%d jobs) when the broker connection "
                        "was lost; %d slot(s) busy now", len(dropped),
                        sum(len(b.reqs) for b in dropped), self._inflight)
        returned = [r for r in give_back if _still_unacked(r) and self._give_back(r)]
        if returned:
            log.info("gave back %d message(s) of the lost broker connection", len(returned))

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

    def _releasable(self, reqs: list[Any]) -> list[Any]:
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
        self._requeue(self._releasable(reqs))

    def _add(self, req: Any) -> None:
        if req.id in self._suspects:  # it was in a batch whose process died: run it alone
            self.flush([req])
            return
        try:
            n_rows = int(req.args[3])
        except (IndexError, TypeError, ValueError):
            n_rows = 1
        policy = self._policy
        if not policy.holding and group.active():
            # A fetched group: one arrival. Buffer all of it, flush once at its end.
            policy.hold()
            group.at_end(self._end_group)
        decision = policy.add(req, n_rows)
        if decision.action is Action.FLUSH:
            self._flush_now()
        elif decision.action is Action.ARM:
            self._tref = self._timer.call_after(decision.delay, self._on_timer)

    def _end_group(self) -> None:
        """The fetched group was delivered (or its delivery raised): flush it if due, once
        (the policy's take spreads it over the free slots)."""
        if self._policy.release():
            self._flush_now()

    def _on_timer(self) -> None:
        # max_wait_ms bounds how long a buffered job waits for a *free process* (see
        # predq.worker.batching.policy): while the pool is busy, the next free slot flushes.
        self._tref = None
        if self._policy.on_timer():
            self._flush_now()

    def _flush_now(self) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        for chunk in self._policy.take():  # a flush never exceeds max_batch_jobs
            self.flush(chunk)

    def _settle(self, batch: _Batch) -> bool:
        """The batch returned: free its slot. False if it was already forgotten."""
        return self._untrack(batch.id)

    def _flush_if_free(self) -> None:
        if self._policy.on_slot_free():
            self._flush_now()

    def _give_back(self, req: Any) -> bool:
        """Requeue one message at the head of its queue; False (logged) when that failed.

        Unlike ``Request.reject``, a failure leaves the request unsettled, so it can be
        given back later (Celery's reject marks it acknowledged even when the broker refused).
        """
        msg = req.message
        if req.acknowledged or msg.acknowledged:
            return True
        try:
            msg.reject(requeue=True)
        except Exception as e:
            log.warning("could not requeue job %s: %r", req.id, e)
            return False
        req.acknowledged = True
        try:
            _job_event(req, "task-rejected", None, requeue=True)
        except Exception:
            log.debug("task-rejected event of %s not sent", req.id, exc_info=True)
        return True

    def _requeue(self, reqs: list[Any], attempt: int = 0) -> None:
        """After the retry pause: give a failed batch's messages back, each on its own.

        One message the broker refuses (Redis is likely down again) does not keep the others
        unacknowledged: the refused ones are tried again after longer pauses (a few times;
        then kombu's visibility timeout brings them back).
        """
        # A request of a connection lost since then is kombu's, unless kombu could not restore
        # it (Redis was down when that channel closed).
        mine = [r for r in reqs if getattr(r, "_predq_generation", 0) == self._generation
                or _still_unacked(r)]
        left = [r for r in mine if not self._give_back(r)]
        if left:
            if attempt < 5:
                self._timer.call_after(min(30.0, self.retry_pause_s * 2 ** (attempt + 1)),
                                       self._requeue, (left, attempt + 1))
            else:
                log.error("could not requeue %d job(s) after %d tries; the broker redelivers "
                          "them after the visibility timeout", len(left), attempt + 1)
        self._flush_if_free()

    def _on_slot_free(self) -> None:
        self._flush_if_free()

    def return_buffered(self) -> int:
        """Shutdown: give the buffered (never started) requests back to the broker.

        Called by the consumer's lifecycle step when consuming stops, before the pool drains:
        each message is requeued at the head of its queue for another worker, and nothing is
        flushed to a pool that no longer accepts work. Returns how many were returned.
        """
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        reqs = self._policy.drain()
        returned = 0
        for r in reqs:
            if self._give_back(r):
                returned += 1
            else:  # the broker is unreachable: kombu restores it, or we do at the reconnect
                self._unreturned.append(r)
        return returned

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
        batch = _Batch(batch_id, reqs, self._generation)
        self._track(batch)
        t_start = [time.time()]
        _announce(reqs)

        def on_accepted(pid: int, time_accepted: float) -> None:
            t_start[0] = time.time()
            # billiard swallows whatever this raises, so a bug here would only hide events.
            try:  # still running by then: show its jobs in Flower as received and started
                self._timer.call_after(INFLIGHT_EVENTS_AFTER_S, _announce_running,
                                       (reqs, t_start[0]))
            except Exception:
                log.exception("batch %s: could not schedule its task events", batch_id)

        def landed() -> None:
            for r in reqs:
                self._leases.pop(r._predq_token, None)

        def on_return(result: dict[str, Any]) -> None:
            landed()
            if isinstance(result, dict) and "retry" in result:
                # Not the jobs' fault: put them back after a pause (no hot loop); the slot is
                # free meanwhile, so the buffer goes to the pool (the retry may well work).
                self._timer.call_after(self.retry_pause_s, self._give_back_and_requeue,
                                       (reqs,))
                self._flush_if_free()
                return
            try:
                runtime = time.time() - t_start[0]
                _send_outcomes(reqs, result if isinstance(result, dict) else {}, batch_id,
                               runtime)
                ack_all(reqs)
                self._policy.observe(sum(p[3] for p in payload), runtime)
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
                        _job_event(r, "task-failed", t_start[0],
                                   exception=f"worker lost: {exc!r}", traceback="")
                        if self._releasable([r]):
                            r.reject(requeue=True)
            finally:
                self._on_slot_free()

        return self._apply(batch, payload, on_accepted, on_return, on_error)

    def _apply(self, batch: _Batch, payload: list[tuple[str, str, str, int, str]],
               on_accepted: Any, on_return: Any, on_error: Any) -> Any:
        def settled(fn: Any) -> Any:  # a batch's callbacks first free its slot
            def call(arg: Any) -> None:
                if self._settle(batch):
                    fn(arg)
            return call

        try:
            batch.result = self._pool.apply_async(
                execute_batch, (self, batch.id, payload), accept_callback=on_accepted,
                callback=settled(on_return), error_callback=settled(on_error),
                timeout=self.batch_time_limit, soft_timeout=None,
            )
        except BaseException:
            self._settle(batch)
            raise
        return batch.result
