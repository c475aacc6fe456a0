"""The consumer side of the micro-batching task, driven directly (no broker, no pool processes).

What a real worker does across processes is covered by tests/reliability/ (a real Redis
restart: test_broker_reconnect.py; a flapping Redis: test_store_failures.py). Here the
bookkeeping itself, with stand-ins for billiard's pool and kombu's messages, so that each rule
is pinned exactly:

- a batch that fails outside its jobs gives each message back on its own: one the broker
  refuses does not keep the others unacknowledged, and it is tried again later;
- the slot such a batch held is free at once: buffered requests go to the pool;
- after a consumer restart, batches the pool dropped (never called back) no longer count as
  busy slots, and there is one reaper timer, not one more per restart;
- a fetched group (delivered inside ``group.delivering()``) is one arrival: it goes out once
  at its end, spread over the free slots, also when a delivery raised; a lone message goes
  out at once.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from predq.worker.batching import group
from predq.worker.batching.consumer import PredictBatches

_jobs = itertools.count()


class Timer:
    def __init__(self) -> None:
        self.after: list[tuple[float, Any, tuple[Any, ...]]] = []
        self.repeating: list[Entry] = []

    def call_after(self, secs: float, fun: Any, args: tuple[Any, ...] = ()) -> Entry:
        self.after.append((secs, fun, args))
        return Entry()

    def call_repeatedly(self, secs: float, fun: Any) -> Entry:
        e = Entry()
        self.repeating.append(e)
        return e

    def run_pending(self) -> None:
        pending, self.after = self.after, []
        for _, fun, args in pending:
            fun(*args)


class Entry:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Result:
    """billiard's ApplyResult, as far as the task looks at it."""

    def __init__(self, cache: dict[int, Result], cb: Any, err: Any, acc: Any) -> None:
        self._job = next(_jobs)
        self._cache = cache
        self._accepted = False
        self._scheduled_for = None
        self._write_to = None
        self._ready = False
        self.cb, self.err, self.acc = cb, err, acc
        cache[self._job] = self

    def ready(self) -> bool:
        return self._ready

    def finish(self, value: Any) -> None:
        self._ready = True
        self._cache.pop(self._job, None)
        self.cb(value)


class Pool:
    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._cache: dict[int, Result] = {}
        self.applied: list[tuple[list[Any], Result]] = []

    def apply_async(self, fun: Any, args: tuple[Any, ...], *, accept_callback: Any,
                    callback: Any, error_callback: Any, **_: Any) -> Result:
        res = Result(self._cache, callback, error_callback, accept_callback)
        self.applied.append((args[2], res))
        return res

    def flush(self) -> None:
        """AsynPool.flush on a lost connection: jobs not accepted are discarded, silently."""
        for job_id, res in list(self._cache.items()):
            if not res._accepted:
                del self._cache[job_id]


class Message:
    def __init__(self, tag: str, fail: int = 0) -> None:
        self.delivery_tag = tag
        self.acknowledged = False
        self.fail = fail  # how many reject calls raise before one works
        self.rejects = 0
        self.channel = None

    def reject(self, requeue: bool = False) -> None:
        self.rejects += 1
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("Redis went away")
        self.acknowledged = True


class Req:
    name = "predq.predict"
    argsrepr = kwargsrepr = ""
    root_id = parent_id = None

    def __init__(self, job: str, fail: int = 0) -> None:
        self.id = job
        self.args = (job, "iris", "1", 1)
        self.message = Message(job, fail)
        self.acknowledged = False
        self.events: list[str] = []

    def send_event(self, kind: str, **_: Any) -> None:
        self.events.append(kind)

    def acknowledge(self) -> None:
        self.acknowledged = True

    def reject(self, requeue: bool = False) -> None:
        """Celery's Request.reject, when the broker's error is not one it swallows."""
        if not self.acknowledged:
            self.message.reject(requeue)
            self.acknowledged = True


class Consumer:
    hostname = "w@test"
    event_dispatcher = None
    connection_errors = ()

    def __init__(self, pool: Pool, timer: Timer) -> None:
        self.pool, self.timer = pool, timer


def make(limit: int = 1) -> tuple[PredictBatches, Pool, Timer, Any]:
    class Task(PredictBatches):
        name = "predq.predict"
        reap_interval_s = 5.0

    task = Task()
    pool, timer = Pool(limit), Timer()
    handler = None

    def start() -> Any:
        nonlocal handler
        import predq.worker.batching.consumer as b

        real = b.request_factory
        b.request_factory = lambda *a: (lambda message, body, ack, reject: message)
        try:
            handler = task.Strategy(task, None, Consumer(pool, timer))
        finally:
            b.request_factory = real
        return handler

    return task, pool, timer, start


def deliver(handler: Any, req: Req) -> None:
    handler(req, None, None, None, None)


def test_a_failed_batch_gives_each_message_back_on_its_own_and_retries_the_refused_one(
) -> None:
    task, pool, timer, start = make()
    handler = start()
    reqs = [Req("a"), Req("b", fail=1), Req("c")]
    for r in reqs:
        deliver(handler, r)
    # "a" went alone to the free slot; "b" and "c" wait, then go when it returns
    pool.applied[0][1].finish({"retry": "ConnectionError: Redis went away"})
    timer.run_pending()  # the retry pause is over: the failed batch's messages go back
    assert reqs[0].message.acknowledged
    # the buffered ones were flushed when the slot freed; fail that batch too
    assert [p[0] for p in pool.applied[1][0]] == ["b", "c"]
    pool.applied[1][1].finish({"retry": "ConnectionError: Redis went away"})
    timer.run_pending()
    assert reqs[2].message.acknowledged, "one refused reject kept another message unacked"
    assert not reqs[1].message.acknowledged and reqs[1].message.rejects == 1
    assert len(timer.after) == 1 and timer.after[0][0] > task.retry_pause_s  # a longer pause
    timer.run_pending()
    assert reqs[1].message.acknowledged and reqs[1].message.rejects == 2
    assert "task-rejected" in reqs[1].events


def test_the_slot_of_a_failed_batch_is_free_at_once_for_buffered_requests() -> None:
    task, pool, timer, start = make(limit=1)
    handler = start()
    deliver(handler, Req("first"))
    deliver(handler, Req("waiting"))  # the only slot is busy: buffered
    assert len(pool.applied) == 1 and task._reqs
    pool.applied[0][1].finish({"retry": "TimeoutError"})
    # not after the retry pause: now
    assert len(pool.applied) == 2 and [p[0] for p in pool.applied[1][0]] == ["waiting"]


def test_batches_dropped_by_the_pool_on_a_reconnect_do_not_keep_slots_busy() -> None:
    task, pool, timer, start = make(limit=1)
    handler = start()
    deliver(handler, Req("running"))
    pool.applied[0][1]._accepted = True  # a process runs it
    for i in range(task.max_batch_jobs):  # a full batch goes to the busy pool: queued there
        deliver(handler, Req(f"q{i}"))
    assert task._inflight == 2
    pool.flush()  # the broker connection is lost: Celery's consumer flushes the pool
    handler = start()  # ... and starts again (Strategy runs again)
    assert task._inflight == 1, "a dropped batch still counts as a busy slot"
    pool.applied[0][1].finish({"outcomes": {}})
    assert task._inflight == 0
    deliver(handler, Req("lone"))  # a lone request goes to the free slot at once
    assert [p[0] for p in pool.applied[-1][0]] == ["lone"]
    assert sum(not e.cancelled for e in timer.repeating) == 1  # one reaper timer


def test_without_the_reconnect_fix_the_count_would_stay_wrong() -> None:
    """The premise of the test above: the pool really never calls back a dropped batch."""
    task, pool, timer, start = make(limit=1)
    handler = start()
    deliver(handler, Req("running"))
    pool.applied[0][1]._accepted = True
    for i in range(task.max_batch_jobs):
        deliver(handler, Req(f"q{i}"))
    dropped = pool.applied[1][1]
    pool.flush()
    assert dropped._job not in pool._cache and not dropped.ready()


def _batches(pool: Pool) -> list[list[str]]:
    return [[p[0] for p in payload] for payload, _ in pool.applied]


def test_a_fetched_group_into_two_free_slots_goes_out_once_spread_over_both() -> None:
    task, pool, timer, start = make(limit=2)
    handler = start()
    with group.delivering():
        for i in range(10):
            deliver(handler, Req(f"g{i}"))
        assert pool.applied == [], "a delivery flushed in the middle of its group"
    assert _batches(pool) == [[f"g{i}" for i in range(5)], [f"g{i}" for i in range(5, 10)]]
    assert task._inflight == 2 and not task._reqs and not task._policy.holding
    assert timer.after == []  # no timer armed: the group went out at its end
    # while both run, the next group is buffered; a freed slot takes it whole
    with group.delivering():
        for i in range(3):
            deliver(handler, Req(f"h{i}"))
    assert len(pool.applied) == 2 and len(task._reqs) == 3
    pool.applied[0][1].finish({"outcomes": {}})
    assert _batches(pool)[2] == ["h0", "h1", "h2"]


def test_a_lone_message_goes_out_at_once() -> None:
    task, pool, timer, start = make(limit=2)
    handler = start()
    deliver(handler, Req("lone"))
    assert _batches(pool) == [["lone"]]
    deliver(handler, Req("second"))  # the other slot is free: at once too
    assert _batches(pool) == [["lone"], ["second"]]


def test_a_group_larger_than_max_batch_jobs_is_cut_at_it() -> None:
    task, pool, timer, start = make(limit=2)
    task.max_batch_jobs = 4
    handler = start()
    with group.delivering():
        for i in range(10):
            deliver(handler, Req(f"g{i}"))
    assert [len(b) for b in _batches(pool)] == [4, 4, 2]


def test_a_delivery_that_raises_still_ends_the_group() -> None:
    task, pool, timer, start = make(limit=2)
    handler = start()
    with pytest.raises(RuntimeError), group.delivering():
        deliver(handler, Req("a"))
        deliver(handler, Req("b"))
        raise RuntimeError("the third delivery failed")
    assert _batches(pool) == [["a"], ["b"]]
    assert not task._reqs and not task._policy.holding and not group.active()
    deliver(handler, Req("after"))  # no group now: the usual rules (both slots busy)
    assert len(pool.applied) == 2 and task._reqs
