"""A per-call time limit for predict, enforced inside the pool process with SIGALRM.

The alarm interrupts Python code between bytecodes (scikit-learn returns to the interpreter
often), so a slow model fails its own jobs with a clear error and the process survives. A
model stuck inside one C call is caught by the pool's hard limit instead (the process is
replaced and the batch redelivered; the delivery counter fails a job that keeps timing out).

An exception raised at an arbitrary bytecode can leave shared state torn: a logging handler's
lock held forever (every later log call of the process hangs), a joblib lock that its
callback thread then waits for, a ``warnings`` filter or an import half done. So the alarm
only raises where that cannot happen:

- only inside :func:`interruptible` (the predict call proper). An alarm that fires anywhere
  else under :func:`time_limit` (our own logging, rendering, bookkeeping) is remembered, and
  raised when the next interruptible call begins;
- and only when no frame of the predict call's stack is in one of the :data:`NEVER` modules
  (logging, importlib: a model that logs is interrupted once its log call has returned), and
  the interrupted frame itself is not in one of the :data:`UNSAFE` modules (threading,
  joblib, contextlib, warnings, ...), unless it is blocked in a plain wait there (a
  ``time.sleep`` or a ``Condition.wait``, which are interruptible by design: a model waiting
  for its joblib threads is still stopped). Otherwise the alarm is re-armed for
  :data:`RETRY_S` and tried again once the model is back in its own code.
"""

from __future__ import annotations

import linecache
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

#: Modules that hold a process-wide lock while they call other code (a logging handler's
#: lock around emit, an import's module lock): no exception while any of their frames runs.
NEVER = ("logging", "importlib", "predq.worker.timelimit")
#: Modules whose own code manipulates locks or global state (shared with other threads, or
#: restored on exit): not interrupted while they run, except in a plain wait.
UNSAFE = ("threading", "joblib", "threadpoolctl", "contextlib", "warnings", "concurrent",
          "queue", "multiprocessing", "weakref", "_weakrefset", *NEVER)
#: Lines of those modules that only wait (blocked on a lock or sleeping, holding nothing
#: the exception would leak): an alarm there may raise.
_WAIT_LINE = re.compile(r"^\s*(gotit = )?waiter\.acquire\(|^\s*time\.sleep\(|"
                        r"^\s*if lock\.acquire\(block, timeout\):")
#: Seconds until a deferred alarm is tried again.
RETRY_S = 0.001


class JobTimeLimit(BaseException):  # noqa: N818 - mirrors Celery's TimeLimitExceeded
    """Raised inside predict when the time limit passes.

    A BaseException, so that the generic ``except Exception`` of the batch bisection does not
    swallow it and retry the same slow call on smaller halves.
    """


class _Limit:
    def __init__(self, seconds: float) -> None:
        self.message = f"predict took longer than the time limit of {seconds:g} s"
        self.expired = False
        self.entered: list[FrameType | None] = []  # the frame of each interruptible call


_current: _Limit | None = None


def _in(frame: FrameType, modules: tuple[str, ...]) -> bool:
    name = str(frame.f_globals.get("__name__", ""))
    return any(name == m or name.startswith(m + ".") for m in modules)


def safe_to_raise(frame: FrameType | None, stop: FrameType | None = None) -> bool:
    """Whether an exception may be raised in ``frame`` (the one the signal interrupted),
    looking at its callers up to ``stop`` (the frame that began the predict call)."""
    if frame is None:
        return False
    if _in(frame, UNSAFE):
        if _in(frame, NEVER) or not frame.f_lineno:  # (no line number mid-instruction)
            return False
        if not _WAIT_LINE.match(linecache.getline(frame.f_code.co_filename, frame.f_lineno)):
            return False
    if frame is stop:
        return True
    caller = frame.f_back
    while caller is not None and caller is not stop:
        if _in(caller, NEVER):
            return False
        caller = caller.f_back
    return True


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    limit = _current
    if limit is None:
        return
    limit.expired = True
    if not limit.entered:
        return  # outside the predict call proper: raised when the next one begins
    try:
        safe = safe_to_raise(frame, limit.entered[-1])
    except Exception:  # never raise anything else from a signal handler
        safe = False
    if safe:
        raise JobTimeLimit(limit.message)
    signal.setitimer(signal.ITIMER_REAL, RETRY_S)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Arm the limit for this block: its :func:`interruptible` calls raise JobTimeLimit once
    ``seconds`` have passed. A no-op off the main thread, or when ``seconds <= 0``."""
    global _current
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _current is not None:
        raise RuntimeError("time limits do not nest")
    _current = _Limit(seconds)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _current = None
        signal.signal(signal.SIGALRM, previous)


class _Interruptible:
    """The predict call proper: the only code the alarm of :func:`time_limit` interrupts."""

    def __enter__(self) -> None:
        limit = _current
        if limit is None:
            return
        if limit.expired:
            raise JobTimeLimit(limit.message)
        limit.entered.append(sys._getframe(1))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        limit = _current
        if limit is not None and limit.entered:
            limit.entered.pop()


def interruptible() -> _Interruptible:
    """``with interruptible(): estimator.predict(x)``: see the module docstring."""
    return _Interruptible()
