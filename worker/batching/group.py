"""A fetched group of messages, delivered as one arrival: the bracket around its delivery.

The multi-message fetch (:mod:`predq.worker.batching.transport`) takes several messages in
one Redis round trip and delivers them one after another, synchronously, to the consumer's
callback. Without a bracket the flush policy would see N separate arrivals: the first ones
each find a free pool slot and go out alone (batches of 1, 1 and N - 2 into a pool of 2),
each batch paying its fixed costs (claim and finish round trips, the pipe hop, events).

So the transport delivers a group of two or more inside :func:`delivering`, and the
micro-batching adapter (:class:`predq.worker.batching.consumer.PredictBatches`) asks
:func:`active` on each arrival: inside a group it buffers (the policy's hold) and registers,
with :func:`at_end`, one callback that flushes once when the group is over. The end
callbacks run in a ``finally``: a delivery that raises in the middle of a group still ends
it, so nothing stays buffered without a flush. A lone message (``fetch_max`` <= 1, kombu's
stock channel, a message of a queue not fetched several at a time) is never in a group, and
is flushed at once as before.

No kombu, Celery or Redis here (``tests/test_imports.py``): a per-thread flag and a list of
callbacks. Groups do not nest: a group opened inside another is part of the outer one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("predq.worker.batching")


class _State(threading.local):
    def __init__(self) -> None:
        self.active = False
        self.at_end: list[Callable[[], None]] = []


_state = _State()


def active() -> bool:
    """Whether a fetched group is being delivered on this thread."""
    return _state.active


def at_end(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the group being delivered ends (at once if there is none)."""
    if _state.active:
        _state.at_end.append(callback)
    else:
        callback()


@contextmanager
def delivering() -> Iterator[None]:
    """Deliver a group inside this: its end callbacks run when it exits, even by an error.

    An end callback that raises does not stop the others; the first such error is raised
    after them unless the group's delivery itself raised (then that error propagates and the
    callbacks' errors are logged).
    """
    state = _state
    if state.active:  # nested: part of the outer group
        yield
        return
    state.active = True
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        state.active = False
        callbacks, state.at_end = state.at_end, []
        first: BaseException | None = None
        for cb in callbacks:
            try:
                cb()
            except Exception as e:
                if failed or first is not None:
                    log.exception("a group end callback failed")
                else:
                    first = e
        if first is not None:
            raise first
