"""A per-call time limit for predict, enforced inside the pool process with SIGALRM.

The alarm interrupts Python code between bytecodes (scikit-learn returns to the interpreter
often), so a slow model fails its own jobs with a clear error and the process survives. A
model stuck inside one C call is caught by the pool's hard limit instead (the process is
replaced and the batch redelivered; the delivery counter fails a job that keeps timing out).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class JobTimeLimit(BaseException):  # noqa: N818 - mirrors Celery's TimeLimitExceeded
    """Raised inside predict when the time limit passes.

    A BaseException, so that the generic ``except Exception`` of the batch bisection does not
    swallow it and retry the same slow call on smaller halves.
    """


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise JobTimeLimit in this thread after ``seconds``; a no-op off the main thread."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise JobTimeLimit(f"predict took longer than the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
