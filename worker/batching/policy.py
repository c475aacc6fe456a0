"""The flush policy of micro-batching: when to hand the buffered requests to the pool.

A plain class, with no Celery, kombu or Redis in it and an injected clock, so that every rule
is a deterministic unit test (``tests/worker/batching/test_policy.py``). It is modelled on
Ray Serve's ``_BatchQueue`` (a buffer, a size cap and a wait cap, asked "is there a batch
yet?"), driven by events instead of an event loop: the Celery-bound adapter,
:class:`predq.worker.batching.consumer.PredictBatches`, tells it what happened (a request
arrived, the timer fired, a pool slot freed, a batch went out or came back) and acts on the
answer with Celery's timer and ``pool.apply_async``.

The rule is *adaptive*:

- a request that arrives while a pool slot is free is flushed at once (an idle system adds
  no wait);
- while every slot is busy, requests accumulate, and the buffer is flushed as soon as a slot
  frees up, or at ``max_jobs`` jobs / ``max_rows`` rows, whichever is first;
- the first request buffered while every slot is busy arms a timer of ``max_wait_s``. When it
  fires, the buffer is flushed only if a slot is free: handing a batch to a pool whose
  processes are all busy would only queue it there, cut in smaller slices, and the next free
  slot flushes the buffer anyway.

So the batch size follows the load: about (arrival rate x predict time) jobs per call. A
flush is cut into chunks of at most ``max_jobs`` jobs; when that makes fewer chunks than
there are free slots, it is spread evenly over the free slots instead (every idle process
gets a share). Rows are not cut by the cap: a flush that reached ``max_rows`` goes out
whole or spread (the pool side predicts it in slices of ``max_rows``), so the rows cap only
decides *when* to flush.

A *hold* (:meth:`FlushPolicy.hold` ... :meth:`FlushPolicy.release`) makes several arrivals
one: the adapter holds while the transport delivers a fetched group of messages
(:mod:`predq.worker.batching.group`). What would flush meanwhile only notes that a flush is
due; the release says so, and the adapter flushes the group once, spread over the free
slots, instead of sending its first messages out one by one into the idle slots.

The policy also keeps a cost model for the dispatch rule of issue 10 (BentoML's
``CorkDispatcher`` fits a batch's cost as ``a * n + b`` and waits while waiting pays): each
returned batch's ``(rows, seconds)`` is observed, and :class:`CostModel` keeps an online,
exponentially weighted least-squares fit in constant memory. The dispatch rule above does not
use it yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class Action(StrEnum):
    """What the adapter does after a request arrived."""

    #: Hand the buffer to the pool now (:meth:`FlushPolicy.take`).
    FLUSH = "flush"
    #: Keep buffering, and arm a timer of ``Decision.delay`` seconds that calls
    #: :meth:`FlushPolicy.on_timer`.
    ARM = "arm"
    #: Keep buffering (a timer is armed already).
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: Seconds until the timer fires (``ARM`` only).
    delay: float = 0.0


_FLUSH = Decision(Action.FLUSH)
_WAIT = Decision(Action.WAIT)


class CostModel:
    """An online least-squares fit of a batch's cost: ``seconds = a * rows + b``.

    Like BentoML's adaptive batching optimizer (which refits ``o_a``, ``o_b`` from its last 50
    outbound batches), but in constant memory: the five sums of the normal equations are
    exponentially weighted, each observation's weight decaying by ``1 - 1/memory`` per newer
    one, so the fit follows a model or machine that changes and about ``memory`` recent
    batches count. ``a`` and ``b`` are None until two batches of different sizes were seen;
    as in BentoML they are kept non-negative (a batch never costs less than nothing).
    """

    def __init__(self, memory: int = 50) -> None:
        if memory < 1:
            raise ValueError("memory must be at least 1")
        self.decay = 1.0 - 1.0 / memory
        self.observations = 0
        self.a: float | None = None
        self.b: float | None = None
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        """Record one returned batch and refit."""
        if rows < 0 or not math.isfinite(seconds) or seconds < 0:
            return  # a clock step or a bogus report: not a cost
        d = self.decay
        x = float(rows)
        self._w = self._w * d + 1.0
        self._x = self._x * d + x
        self._y = self._y * d + seconds
        self._xx = self._xx * d + x * x
        self._xy = self._xy * d + x * seconds
        self.observations += 1
        det = self._w * self._xx - self._x * self._x
        if det <= 1e-9 * self._w * self._xx:  # every size (nearly) the same: a is unknown
            return
        a = max(0.0, (self._w * self._xy - self._x * self._y) / det)
        self.a = a
        self.b = max(0.0, (self._y - a * self._x) / self._w)

    def predict(self, rows: int) -> float | None:
        """Seconds a batch of ``rows`` rows is expected to take (None before a fit)."""
        if self.a is None or self.b is None:
            return None
        return self.a * rows + self.b


class FlushPolicy(Generic[T]):
    """The buffer of pending requests, the busy pool slots, and when to flush (see module).

    Items are opaque (the adapter's Celery requests); each comes with its row count.
    """

    def __init__(self, *, max_jobs: int, max_rows: int, max_wait_s: float, slots: int = 1,
                 clock: Callable[[], float] = time.monotonic, cost_memory: int = 50) -> None:
        self.max_jobs = max_jobs
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        #: Pool processes: at most this many batches run at once.
        self.slots = slots
        self.clock = clock
        #: Batches handed to the pool and not returned yet.
        self.busy = 0
        #: Rows of the buffered requests.
        self.rows = 0
        #: When the armed timer fires (clock time), or None when no timer is armed.
        self.deadline: float | None = None
        #: Clock time the oldest buffered request arrived (None when the buffer is empty).
        self.oldest: float | None = None
        self.cost = CostModel(cost_memory)
        #: Whether arrivals are held (a fetched group being delivered: see :meth:`hold`).
        self.holding = False
        #: Whether a flush came due while holding (:meth:`release` reports it).
        self.due = False
        self._items: list[T] = []

    # -- what the adapter asks ------------------------------------------------------
    @property
    def pending(self) -> list[T]:
        """The buffered requests, oldest first (read only: use take or drain)."""
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def free(self) -> bool:
        """Whether a pool slot is free."""
        return self.busy < self.slots

    @property
    def armed(self) -> bool:
        return self.deadline is not None

    # -- events -----------------------------------------------------------------------
    def add(self, item: T, n_rows: int) -> Decision:
        """A request arrived: buffer it, and say whether to flush now or arm a timer."""
        items = self._items
        if not items:
            self.oldest = self.clock()
        items.append(item)
        self.rows += n_rows
        if self.busy < self.slots or len(items) >= self.max_jobs or self.rows >= self.max_rows:
            if self.holding:
                self.due = True
                return _WAIT
            return _FLUSH
        if self.deadline is None:
            self.deadline = self.clock() + self.max_wait_s
            return Decision(Action.ARM, self.max_wait_s)
        return _WAIT

    def on_timer(self) -> bool:
        """The armed timer fired: whether to flush (only into a free slot; see module)."""
        self.deadline = None
        return self._due_unless_held(bool(self._items) and self.free)

    def on_slot_free(self) -> bool:
        """A slot may have freed up (a batch returned or was given back): whether to flush."""
        return self._due_unless_held(bool(self._items) and self.free)

    def hold(self) -> None:
        """Arrivals are one group from now on (a fetch being delivered): buffer them all.

        While holding, an event that would flush (:meth:`add` says ``WAIT`` instead of
        ``FLUSH``; :meth:`on_timer` and :meth:`on_slot_free` say False) only notes that a
        flush is due; :meth:`release` says so, and the group goes out in one :meth:`take`.
        Timers are armed as usual (a busy pool keeps its ``max_wait_s`` bound).
        """
        self.holding = True

    def release(self) -> bool:
        """The group is over: whether to flush now (a flush came due while holding)."""
        due = self.due and bool(self._items)
        self.holding = self.due = False
        return due

    def _due_unless_held(self, flush: bool) -> bool:
        if flush and self.holding:
            self.due = True
            return False
        return flush

    def dispatched(self) -> None:
        """A batch went to the pool: it holds a slot until :meth:`released`."""
        self.busy += 1

    def released(self) -> None:
        """A batch returned, or the pool forgot it: its slot is free."""
        self.busy = max(0, self.busy - 1)

    def observe(self, n_rows: int, seconds: float) -> None:
        """A batch of ``n_rows`` rows took ``seconds`` in the pool (feeds :attr:`cost`)."""
        self.cost.observe(n_rows, seconds)

    # -- handing the buffer over --------------------------------------------------------
    def take(self) -> list[list[T]]:
        """Empty the buffer (and disarm the timer): the batches to flush, oldest first.

        Each has at most ``max_jobs`` requests. When that makes fewer batches than there are
        free slots, the buffer is spread evenly over the free slots instead (a group of N
        into 2 idle processes: two batches of about N / 2), so that every free process works
        on it: the predict time of the group is about halved, for one more batch's fixed
        costs (see ``docs/design.md``, "Batching").
        """
        items = self.drain()
        n = len(items)
        size = self.max_jobs
        free = self.slots - self.busy
        if n and 1 < free and -(-n // size) < free:
            parts = min(free, n)
            size = -(-n // parts)
        return [items[i:i + size] for i in range(0, n, size)]

    def drain(self) -> list[T]:
        """Empty the buffer (and disarm the timer), returning every request (shutdown)."""
        items, self._items = self._items, []
        self.rows = 0
        self.deadline = None
        self.oldest = None
        return items

    def waited(self) -> float:
        """Seconds the oldest buffered request has waited (0 when the buffer is empty)."""
        return 0.0 if self.oldest is None else max(0.0, self.clock() - self.oldest)
