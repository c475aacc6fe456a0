"""Celery task events as Flower sees them: a receiver thread feeding ``celery.events.State``.

Flower keeps its task list in a :class:`celery.events.state.State` fed by an event receiver;
:class:`EventLog` does exactly that in the test process, and also keeps every raw event, so a
test can assert both the state Flower would show for a task and which events were sent.

    with EventLog(redis_url) as events:   # returns once the receiver consumes
        ...
        events.wait_for(lambda ev: ..., timeout)
        events.state_of(task_id)           # "SUCCESS", "REVOKED", ...
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery


class EventLog:
    def __init__(self, redis_url: str) -> None:
        self.app = Celery("predq-events", broker=redis_url, set_as_current=False)
        self.state = self.app.events.State()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="event-log", daemon=True)

    def __enter__(self) -> EventLog:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"the event receiver did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)
        self.app.close()

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                recv = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                self._receiver = recv
                original = recv.on_consume_ready

                def ready(*args: Any, **kwargs: Any) -> None:
                    original(*args, **kwargs)
                    self._ready.set()

                recv.on_consume_ready = ready
                recv.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as e:  # reported by __enter__ or the waits
            self._error = e
            raise

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
            self.state.event(event)

    def of(self, task_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The events received for ``task_id`` (of one ``kind``, e.g. ``task-revoked``)."""
        with self._lock:
            return [e for e in self.events if e.get("uuid") == task_id
                    and (kind is None or e.get("type") == kind)]

    def state_of(self, task_id: str) -> str | None:
        """The state Flower shows for the task."""
        with self._lock:
            task = self.state.tasks.get(task_id)
            return task.state if task is not None else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            if predicate():
                return
            if self._error is not None:
                raise AssertionError(f"the event receiver failed: {self._error!r}")
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
